"""Records -> tokenized examples for a whole dataset, with counts of what was dropped.

The stages (format detection, conversation, rendering) are the pure functions of
``formats`` and ``render``; this module runs them over many records, applies ``on_error`` and
keeps the statistics a user needs to trust the data (truncated, dropped, trained-token ratio).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .conversation import Conversation, DataFormatError
from .formats import detect_format, record_text, to_conversation
from .render import IGNORE_INDEX, ChatRenderer

__all__ = ["PrepareStats", "MixedFormatError", "tokenize_records", "is_tokenized", "record_location"]

logger = logging.getLogger(__name__)


class MixedFormatError(DataFormatError):
    """Records of one dataset come in different formats (never skipped by on_error=skip)."""


@dataclass
class PrepareStats:
    """What happened to the records of one dataset."""

    records: int = 0
    examples: int = 0
    skipped_invalid: int = 0
    truncated: int = 0
    dropped_no_trained_tokens: int = 0
    warnings: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    formats: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def merge(cls, parts: list["PrepareStats"]) -> "PrepareStats":
        total = cls()
        for part in parts:
            for name in ("records", "examples", "skipped_invalid", "truncated", "dropped_no_trained_tokens",
                         "warnings", "tokens", "trained_tokens"):
                setattr(total, name, getattr(total, name) + getattr(part, name))
            total.formats.update(part.formats)
            total.errors.extend(part.errors)
        return total

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("formats", "errors")}
        out["formats"] = dict(self.formats)
        out["first_errors"] = self.errors[:5]
        out["trained_token_ratio"] = round(self.trained_tokens / self.tokens, 4) if self.tokens else 0.0
        return out


def is_tokenized(dataset: Any) -> bool:
    """True when ``dataset`` already holds ``input_ids`` (and so skips rendering)."""
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return "input_ids" in names
    try:
        first = dataset[0]
    except (TypeError, IndexError, KeyError):
        return False
    return isinstance(first, dict) and "input_ids" in first


def record_location(dataset: Any, index: int) -> str:
    """``file:line`` for records read by our loaders, else ``record N``."""
    source = getattr(dataset, "source", None)
    lines = getattr(dataset, "line_numbers", None)
    if source and lines is not None and index < len(lines):
        return f"{source}:{lines[index]}"
    return f"record {index}"


def _from_formatted(value: Any, where: str, fmt: str, system_prompt: str | None) -> Conversation | str:
    """What a user's formatting_func returned: text, a Conversation, a list of messages or a record."""
    if isinstance(value, str):
        return value
    if isinstance(value, Conversation):
        return value.validate(where)
    if isinstance(value, list):
        return to_conversation({"messages": value}, "messages", where=where, system_prompt=system_prompt)
    if isinstance(value, dict):
        return to_conversation(value, fmt, where=where, system_prompt=system_prompt)
    raise DataFormatError(f"{where}: formatting_func returned {type(value).__name__}; "
                          "expected a string, a Conversation, a list of messages or a record dict")


def tokenize_records(records: Iterable[dict[str, Any]], tokenizer: Any, *, fmt: str = "auto",
                     max_seq_length: int | None = None, train_on_prompt: bool = False,
                     mask_history: bool = False, chat_template: str | None = None,
                     system_prompt: str | None = None, formatting_func: Callable | None = None,
                     on_error: str = "raise", agent_format: str = "auto",
                     tools: list[dict[str, Any]] | None = None) -> tuple[dict[str, list], PrepareStats]:
    """Render every record; returns columns ``input_ids``, ``labels``, ``length`` and stats.

    A file whose records mix formats is an error (it is almost always two datasets concatenated
    by mistake, and the masks would differ between them); pass ``fmt`` explicitly to force one.
    """
    renderer = ChatRenderer(tokenizer, chat_template=chat_template, max_seq_length=max_seq_length,
                            train_on_prompt=train_on_prompt, mask_history=mask_history)
    from .trajectory import resolve_agent_format

    style = resolve_agent_format(agent_format, renderer.template)
    stats = PrepareStats()
    columns: dict[str, list] = {"input_ids": [], "labels": [], "length": []}
    first_format: tuple[str, str] | None = None
    for index, record in enumerate(records):
        stats.records += 1
        where = record_location(records, index)
        try:
            if formatting_func is not None:
                item = _from_formatted(formatting_func(record), where, fmt, system_prompt)
                record_fmt = "formatting_func"
            else:
                record_fmt = detect_format(record, where) if fmt == "auto" else fmt
                if first_format is None:
                    first_format = (record_fmt, where)
                elif fmt == "auto" and record_fmt != first_format[0]:
                    raise MixedFormatError(
                        f"{where}: this record is in the {record_fmt} format but {first_format[1]} is "
                        f"{first_format[0]}; one dataset must use one format (split the file, or set "
                        "data.format to force one)")
                item = record_text(record, where) if record_fmt == "text" else to_conversation(
                    record, record_fmt, where=where, system_prompt=system_prompt, agent_format=style, tools=tools)
            result = renderer.render_plain(item) if isinstance(item, str) else renderer(item, where)
        except DataFormatError as exc:
            if on_error == "raise" or isinstance(exc, MixedFormatError):
                raise
            stats.skipped_invalid += 1
            if len(stats.errors) < 20:
                stats.errors.append(str(exc))
            continue
        stats.formats[record_fmt] += 1
        for warning in getattr(item, "meta", {}).get("warnings", ()):
            stats.warnings += 1
            if len(stats.errors) < 20:
                stats.errors.append(f"warning: {warning}")
        if result is None:
            stats.dropped_no_trained_tokens += 1
            continue
        stats.truncated += result.truncated
        stats.examples += 1
        stats.tokens += len(result.input_ids)
        stats.trained_tokens += sum(1 for lab in result.labels if lab != IGNORE_INDEX)
        columns["input_ids"].append(result.input_ids)
        columns["labels"].append(result.labels)
        columns["length"].append(len(result.input_ids))
    if stats.skipped_invalid:
        logger.warning("skipped %d invalid records (on_error=skip); first: %s", stats.skipped_invalid,
                       stats.errors[0] if stats.errors else "")
    if stats.dropped_no_trained_tokens:
        logger.warning("dropped %d samples whose trained tokens were all cut by max_seq_length=%s",
                       stats.dropped_no_trained_tokens, max_seq_length)
    return columns, stats

