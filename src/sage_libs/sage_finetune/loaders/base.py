"""Shared loader machinery: line-numbered records and the preprocess step."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import (
    DataFileError,  # noqa: F401 (re-exported)
    )
from ..data.records import RecordList
from ..interface import DatasetLoader

__all__ = ["RecordList", "FileLoader", "iter_jsonl", "DataFileError"]

logger = logging.getLogger(__name__)


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: no such file")
    if p.is_dir():
        raise DataFileError(f"{p}: is a directory; expected a data file")
    if not p.is_file():  # a FIFO (or a device, a socket): read once it would be gone for the second pass
        kind = "named pipe (FIFO)" if p.is_fifo() else "socket" if p.is_socket() else "device" \
            if p.is_char_device() or p.is_block_device() else "special file"
        raise DataFileError(f"{p}: is a {kind}, not a regular file; the data is read more than once (format "
                            "detection, counting, tokenizing), so write it to a file first")
    if p.stat().st_size == 0:
        raise DataFileError(f"{p}: the file is empty")
    return p


def iter_jsonl(path: str | os.PathLike, *, on_error: str = "raise",
               skipped: list[int] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, record)`` for each non-blank line, in constant memory.

    Errors name the file and line: malformed JSON, bytes that are not UTF-8, a line that is not
    a JSON object. With ``on_error='skip'`` bad lines are dropped and their line numbers appended
    to ``skipped``.
    """
    p = _check_file(path)
    seen = False
    number = 0
    with p.open("rb") as fh:
        # (no enumerate(): it keeps the previous line alive; a huge line is freed as soon as it is parsed)
        for raw in fh:
            number += 1
            if raw.isspace():
                continue
            try:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataFileError(f"{p}:{number}: bytes that are not UTF-8 at column {exc.start + 1}; "
                                        "save the file as UTF-8") from None
                del raw
                text = text.rstrip("\r\n")  # (error columns count within the line)
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise DataFileError(f"{p}:{number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
                except RecursionError:  # json gives up past ~1000 nested arrays/objects
                    raise DataFileError(f"{p}:{number}: JSON nested too deeply to read") from None
                finally:
                    del text
                if not isinstance(record, dict):
                    raise DataFileError(f"{p}:{number}: expected a JSON object per line, got {type(record).__name__}")
            except DataFileError:
                if on_error == "raise":
                    raise
                if skipped is not None:
                    skipped.append(number)
                continue
            seen = True
            yield number, record
    if not seen and on_error == "raise":
        raise DataFileError(f"{p}: the file has no records (only blank lines)")


def _read_json_array(p: Path) -> list[tuple[int, Any]]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{p}: bytes that are not UTF-8 at offset {exc.start}; save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{p}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:  # json gives up past ~1000 nested arrays/objects
        raise DataFileError(f"{p}: JSON nested too deeply to read") from None
    if isinstance(data, dict):
        data = [data]
    if isinstance(data, list) and not data:
        raise DataFileError(f"{p}: the file has no records (an empty JSON array)")
    if not isinstance(data, list):
        kind = "null" if data is None else "true/false" if isinstance(data, bool) else \
            "string" if isinstance(data, str) else "number"
        raise DataFileError(f"{p}: expected a JSON array of records (or one record object), not a JSON {kind}")
    # a JSON array has no per-record line numbers; use 1-based record indices instead
    return [(i + 1, rec) for i, rec in enumerate(data)]


class FileLoader(DatasetLoader):
    """Reads local JSON Lines (or JSON array) files and tokenizes them.

    Args:
        format: the record format (see :mod:`..data.formats`); ``auto`` detects it.
        on_error: ``raise`` stops at the first bad record with its file:line; ``skip`` drops and
            counts bad records.
    """

    default_format = "auto"

    def __init__(self, format: str | None = None, on_error: str = "raise", **options: Any) -> None:
        self.format = format or self.default_format
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.options = options
        self.last_stats: Any = None

    # -- reading --------------------------------------------------------------------------------
    def _iter(self, data_path: str | os.PathLike, skipped: list[int] | None = None) -> Iterator[tuple[int, Any]]:
        p = Path(data_path)
        if p.suffix == ".json":
            yield from _read_json_array(_check_file(p))
        else:
            yield from iter_jsonl(p, on_error=self.on_error, skipped=skipped)

    def load(self, data_path: str | os.PathLike, max_samples: int | None = None, **kwargs: Any) -> RecordList:
        """All records of the file, as a :class:`RecordList` that remembers their line numbers."""
        skipped: list[int] = []
        records, lines = [], []
        for number, record in self._iter(data_path, skipped):
            self._check_record(record, f"{data_path}:{number}")
            records.append(record)
            lines.append(number)
            if max_samples is not None and len(records) >= max_samples:
                break
        if skipped:
            logger.warning("%s: skipped %d malformed lines (first: line %d)", data_path, len(skipped), skipped[0])
        return RecordList(records, source=str(data_path), line_numbers=lines, skipped=len(skipped))

    def stream(self, data_path: str | os.PathLike, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Yield records one by one without holding the file in memory."""
        for number, record in self._iter(data_path):
            self._check_record(record, f"{data_path}:{number}")
            yield record

    def _check_record(self, record: Any, where: str) -> None:
        """Loader-specific early checks (subclasses)."""

    # -- tokenizing -----------------------------------------------------------------------------
    def preprocess(self, dataset: Any, tokenizer: Any, formatting_func: Callable | None = None, *,
                   max_seq_length: int | None = None, train_on_prompt: bool = False, mask_history: bool = False,
                   chat_template: str | None = None, system_prompt: str | None = None, agent_format: str = "auto",
                   tools: list[dict[str, Any]] | None = None, reasoning: str = "train",
                   control_tokens_in_content: str = "text", **kwargs: Any) -> Any:
        """Records -> a ``datasets.Dataset`` with ``input_ids``, ``labels`` (-100 where not
        trained) and ``length``, exactly as a trainer prepares them (:func:`..data.pipeline.prepare_records`,
        without the cache). Statistics are kept in ``self.last_stats``."""
        from ..data.datasets import require_examples
        from ..data.pipeline import prepare_records
        from ..data.rendering import RenderOptions

        # chat_template: a template file, Jinja text, a named template of the tokenizer, or unset
        options = RenderOptions.build(
            tokenizer, fmt=self.format, max_seq_length=max_seq_length, train_on_prompt=train_on_prompt,
            mask_history=mask_history, chat_template=chat_template, system_prompt=system_prompt,
            formatting_func=formatting_func, on_error=self.on_error, agent_format=agent_format,
            tools=tools if tools is not None else self.options.get("tools"), reasoning=reasoning,
            control_tokens_in_content=control_tokens_in_content)
        prepared, stats = prepare_records(dataset, tokenizer, options, cache=False)
        self.last_stats = stats
        require_examples(len(prepared), stats, getattr(dataset, "source", None) or "dataset")
        return prepared
