"""Unpaired preference records (KTO, TRL's unpaired preference format) -> token ids with exact masks.

``{"prompt": ..., "completion": ..., "label": true | false}``: prompt and completion as in
:mod:`.preference` (the completion: one assistant message, or the whole conversation beginning with
the prompt); ``label`` says whether the completion is desirable. For KTO a paired record counts as
two unpaired ones (chosen: true, rejected: false), as TRL's KTOTrainer unpairs paired data. Masks
and truncation as for pairs: only the completion and its end-of-turn are scored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataFormatError
from .conversation import Conversation, Message
from .preference import (
    _check_distinct,
    _cut_to_the_same,
    _describe,
    _messages,
    _same,
    _scored_side,
    _scoring_renderer,
    _StatsDict,
    is_preference_record,
    is_unpaired_record,
    to_preference_pair,
)
from .render import IGNORE_INDEX
from .rendering import RenderOptions

__all__ = ["UnpairedExample", "UnpairedStats", "to_unpaired_examples", "tokenize_unpaired_records",
           "UNPAIRED_COLUMNS"]

logger = logging.getLogger(__name__)

UNPAIRED_COLUMNS = ("completion_input_ids", "completion_labels", "label")


@dataclass
class UnpairedExample:
    """A prompt, one assistant reply to it, and whether that reply is desirable."""

    prompt: list[Message]
    completion: Message
    label: bool
    tools: list[dict[str, Any]] | None = None

    def conversation(self) -> Conversation:
        return Conversation([*self.prompt, self.completion], tools=self.tools)


@dataclass
class UnpairedStats(_StatsDict):
    records: int = 0
    examples: int = 0
    desirable: int = 0
    undesirable: int = 0
    skipped_invalid: int = 0
    truncated: int = 0
    dropped_no_scored_tokens: int = 0
    dropped_same_after_truncation: int = 0  # a pair's two completions cut to the same tokens (both dropped)
    tokens: int = 0
    scored_tokens: int = 0
    errors: list[str] = field(default_factory=list)


def _completion(prompt: list[Message], raw: Any, where: str) -> Message:
    """The one assistant message of an unpaired record's ``completion`` (given alone, or as the whole
    conversation beginning with the prompt messages)."""
    side = _messages(raw, where, "completion", "assistant")
    if side[0].role != "assistant":
        k = len(prompt)
        if len(side) <= k or not all(_same(a, b) for a, b in zip(side[:k], prompt)):
            raise DataFormatError(f"{where}: 'completion' starts with a {side[0].role} message that is not the "
                                  "prompt's; give the reply only, or the whole conversation beginning with the "
                                  "prompt messages")
        side = side[k:]
    if len(side) != 1 or side[0].role != "assistant":
        raise DataFormatError(f"{where}: after the prompt, 'completion' must be one assistant message; got "
                              f"{len(side)} message(s) ({_describe(side)})")
    return side[0]


def to_unpaired_examples(record: Any, *, where: str = "record", system_prompt: str | None = None,
                         tools: list[dict[str, Any]] | None = None) -> list[UnpairedExample]:
    """One record -> validated :class:`UnpairedExample` s: one for an unpaired record
    (``prompt``, ``completion``, ``label``), two for a preference pair (chosen: desirable, rejected:
    undesirable)."""
    if is_preference_record(record) and not is_unpaired_record(record):
        pair = to_preference_pair(record, where=where, system_prompt=system_prompt, tools=tools)
        return [UnpairedExample(pair.prompt, pair.chosen, True, pair.tools),
                UnpairedExample(pair.prompt, pair.rejected, False, pair.tools)]
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("prompt", "completion", "label") if k not in record]
    if missing:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise DataFormatError(f"{where}: missing field {missing[0]!r}; an unpaired preference record (KTO) needs "
                              "'prompt', 'completion' and 'label' (true: a desirable completion, false: an "
                              f"undesirable one), or give pairs with 'chosen' and 'rejected'; record fields: {keys}")
    label = record["label"]
    if not isinstance(label, bool):  # 0/1 or "true" are more often a mistake (a score column) than a label
        raise DataFormatError(f"{where}: field 'label' must be true or false, got {label!r} "
                              f"({type(label).__name__})")
    own_tools = record.get("tools")
    if own_tools is not None and not isinstance(own_tools, list):
        raise DataFormatError(f"{where}: field 'tools' must be a list of tool schemas")
    prompt = _messages(record["prompt"], where, "prompt", "user")
    completion = _completion(prompt, record["completion"], where)
    if system_prompt and prompt[0].role != "system":
        prompt = [Message("system", system_prompt), *prompt]
    example = UnpairedExample(prompt, completion, label, tools=own_tools or tools or None)
    example.conversation().validate(where)
    return [example]


def tokenize_unpaired_records(records: Any, tokenizer: Any, options: RenderOptions | None = None, *,
                              locate: Any = None, **settings: Any) -> tuple[dict[str, list], UnpairedStats]:
    """Unpaired (or paired, see :func:`to_unpaired_examples`) records -> columns
    :data:`UNPAIRED_COLUMNS` (+ ``length``) and statistics; options, masks and truncation as
    :func:`tokenize_preference_records` (only the completion and its end-of-turn scored)."""
    options, renderer = _scoring_renderer(tokenizer, options, settings)
    columns: dict[str, list] = {name: [] for name in (*UNPAIRED_COLUMNS, "length")}
    stats = UnpairedStats()
    for index, record in enumerate(records):
        stats.records += 1
        where = locate(records, index) if locate is not None else f"record {index}"
        try:
            examples = to_unpaired_examples(record, where=where, system_prompt=options.system_prompt, tools=options.tools)
            names = ("chosen", "rejected") if len(examples) == 2 else ("completion",)  # a pair, or one example
            sides = [_scored_side(renderer, ex.conversation(), where, name) for ex, name in zip(examples, names)]
            if len(sides) == 2 and all(sides):
                _check_distinct(*sides, where)
        except DataFormatError as exc:
            if options.on_error != "skip":
                raise
            stats.skipped_invalid += 1
            stats.errors.append(str(exc))
            continue
        if _cut_to_the_same(sides, where, options.max_seq_length, stats.errors):  # both completions dropped
            stats.dropped_same_after_truncation += 2
            continue
        for example, side in zip(examples, sides):
            if side is None:
                stats.dropped_no_scored_tokens += 1
                continue
            ids, labels, cut = side
            stats.truncated += bool(cut)
            stats.examples += 1
            stats.desirable += example.label
            stats.undesirable += not example.label
            stats.tokens += len(ids)
            stats.scored_tokens += sum(lab != IGNORE_INDEX for lab in labels)
            columns["completion_input_ids"].append(ids)
            columns["completion_labels"].append(labels)
            columns["label"].append(example.label)
            columns["length"].append(len(ids))
    if stats.dropped_same_after_truncation:
        logger.warning("dropped %d examples (pairs whose two completions max_seq_length=%s cut to the same tokens); "
                       "raise max_seq_length to keep them", stats.dropped_same_after_truncation, options.max_seq_length)
    return columns, stats
