"""``instruction``: Alpaca-style instruction data (``instruction``, ``input``, ``output``)."""

from __future__ import annotations

from typing import Any

from ..errors import DataFormatError
from .base import FileLoader

__all__ = ["InstructionLoader"]

_FIELDS = ("instruction", "input", "output", "system", "history")


class InstructionLoader(FileLoader):
    """Alpaca records from a .jsonl file or a .json array. Each record is checked when read, so a
    misspelled field is reported with its line before any model is loaded."""

    default_format = "alpaca"

    def _check_record(self, record: Any, where: str) -> None:
        for required in ("instruction", "output"):
            if required not in record:
                import difflib

                close = difflib.get_close_matches(required, [str(k) for k in record], n=1)
                hint = f" (found {close[0]!r}: misspelled?)" if close else ""
                raise DataFormatError(f"{where}: missing field {required!r}{hint}; an instruction record has "
                                      f"fields {', '.join(_FIELDS)} (input, system, history optional)")
