"""``jsonl``: JSON Lines files in any supported record format."""

from __future__ import annotations

from .base import FileLoader

__all__ = ["JSONLLoader"]


class JSONLLoader(FileLoader):
    """One JSON object per line; the format is detected (or set with ``format=``)."""
