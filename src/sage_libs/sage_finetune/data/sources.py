"""Any data source -> record collections, decided in one place.

A source is a file path, a list of paths, loaded records, a ``datasets.Dataset`` or a
:class:`MultiSource`. Which loader reads a path (``data.loader``, or ``auto``: by file suffix) is
decided by :func:`loader_for` for training, evaluation, the agent evaluation and ``data inspect``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["MultiSource", "loader_name", "loader_for", "record_sets", "split_records"]

_BY_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class MultiSource(list):
    """Several record collections (one per file) that are tokenized separately, then joined."""


def loader_name(path: str | os.PathLike, data_config: Any) -> str:
    """``data.loader``, or for ``auto`` the loader for the path's suffix (anything else is a hub
    id or a ``save_to_disk`` folder: ``huggingface``)."""
    if data_config.loader != "auto":
        return data_config.loader
    return _BY_SUFFIX.get(Path(path).suffix, "huggingface")


def loader_for(path: str | os.PathLike, data_config: Any) -> Any:
    from ..registry import create_loader

    return create_loader(loader_name(path, data_config), format=data_config.format, on_error=data_config.on_error)


def record_sets(data: Any, data_config: Any, split: str) -> list[Any]:
    """A path, a list of paths, or in-memory data -> one or more record collections. Training data
    is capped at ``data.max_samples`` records per file."""
    max_samples = data_config.max_samples if split == "train" else None
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, os.PathLike)) for d in data):
        return [loader_for(d, data_config).load(str(d), max_samples=max_samples) for d in data]
    if isinstance(data, MultiSource):
        return list(data)
    return [data]


def split_records(records: Any, ratio: float, seed: int) -> tuple[Any, Any]:
    """A seeded ``ratio`` of ``records`` held out for evaluation: ``(train, eval)``, each keeping
    the source file and line numbers for error messages."""
    import random

    from ..loaders.base import RecordList

    n = len(records)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(n * ratio)))
    ev, tr = sorted(order[:n_eval]), sorted(order[n_eval:])
    source = getattr(records, "source", None)
    lines = getattr(records, "line_numbers", None)

    def take(idx: list[int]) -> RecordList:
        return RecordList([records[i] for i in idx], source=source,
                          line_numbers=[lines[i] for i in idx] if lines else None)

    return take(tr), take(ev)
