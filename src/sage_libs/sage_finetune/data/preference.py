"""Preference records -> (prompt, chosen reply, rejected reply) -> token ids with exact masks.

Record shapes (the preference formats TRL documents, plus raw HH-RLHF text):

- explicit prompt: ``{"prompt": str | [messages], "chosen": str | [messages], "rejected": ...}``;
  a string prompt is one user message, a string reply one assistant message. ``chosen`` and
  ``rejected`` may also repeat the prompt messages in front (full conversations): the prompt must
  then be a prefix of both.
- implicit prompt: ``{"chosen": [messages], "rejected": [messages]}``: the longest common prefix of
  the two conversations is the prompt (HH-RLHF style).
- HH-RLHF text: ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``: parsed into
  messages, then as above.

After the prompt, each side must be exactly one assistant message (text and/or ``tool_calls``).
``tools`` (a list of tool schemas) is passed to the chat template as in SFT records.

Unpaired records (KTO): :mod:`.unpaired`.

Tokens: each side is rendered as ``prompt + [reply]`` with :class:`.render.ChatRenderer` (the same
template and rules as SFT), and only the last assistant turn is labelled: the reply's tokens and
the end-of-turn token(s) the template closes it with. Tokens after the last labelled one (template
layout such as the newline after ``<|im_end|>``) are cut, so a sequence ends where its score ends.
A reply the template renders as nothing to train, or a pair whose two replies render to the same
tokens (tool calls the template does not write), is refused with a message, never dropped or kept
silently; only pairs that truncation left without a scored token are dropped (and counted).

Pure Python apart from the tokenizer; no torch. Batches of these columns:
:mod:`.preference_collate`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataFormatError, TemplateError
from .conversation import Conversation, Message
from .render import IGNORE_INDEX, ChatRenderer
from .rendering import RenderOptions, refuse_for_preference

__all__ = ["PreferencePair", "PreferenceStats", "is_preference_record", "is_unpaired_record", "to_preference_pair",
           "tokenize_preference_records", "PREFERENCE_COLUMNS"]

logger = logging.getLogger(__name__)

PREFERENCE_COLUMNS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")

_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


@dataclass
class PreferencePair:
    """A shared prompt and two single-message replies to it."""

    prompt: list[Message]
    chosen: Message
    rejected: Message
    tools: list[dict[str, Any]] | None = None

    def conversations(self) -> tuple[Conversation, Conversation]:
        return (Conversation([*self.prompt, self.chosen], tools=self.tools),
                Conversation([*self.prompt, self.rejected], tools=self.tools))


class _StatsDict:
    """``to_dict`` of the counters below: every counter, and the first five error messages."""

    errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "errors"}
        out["first_errors"] = self.errors[:5]
        return out


@dataclass
class PreferenceStats(_StatsDict):
    records: int = 0
    pairs: int = 0
    skipped_invalid: int = 0
    truncated: int = 0
    dropped_no_scored_tokens: int = 0
    dropped_same_after_truncation: int = 0  # max_seq_length cut both replies to the same tokens
    tokens: int = 0
    scored_tokens: int = 0
    errors: list[str] = field(default_factory=list)


def is_preference_record(record: Any) -> bool:
    return isinstance(record, dict) and "chosen" in record and "rejected" in record


def is_unpaired_record(record: Any) -> bool:
    return isinstance(record, dict) and "completion" in record and "label" in record


# -- records -> pairs -------------------------------------------------------------------------------
def _messages(value: Any, where: str, name: str, default_role: str) -> list[Message]:
    from .formats import _message

    if isinstance(value, str):
        if not value.strip():
            raise DataFormatError(f"{where}: field {name!r} is empty")
        return [Message(default_role, value)]
    if isinstance(value, dict) and "role" in value:  # one message on its own
        value = [value]
    if not isinstance(value, list) or not value:
        raise DataFormatError(f"{where}: field {name!r} must be a string or a non-empty list of messages, "
                              f"got {type(value).__name__ if not isinstance(value, list) else 'an empty list'}")
    out = []
    for i, raw in enumerate(value):
        try:
            out.append(_message(raw, where, i, "role", "content", None))
        except DataFormatError as exc:
            raise DataFormatError(str(exc).replace(f"{where}: message", f"{where}: {name} message", 1)) from None
    return out


def _parse_hh(text: str, where: str, name: str) -> list[Message] | None:
    """HH-RLHF text (``\\n\\nHuman: ...\\n\\nAssistant: ...``) -> messages; None if it is not such text."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [Message(roles[parts[k]], parts[k + 1].strip()) for k in range(1, len(parts), 2)]


def _same(a: Message, b: Message) -> bool:
    return a.to_dict() == b.to_dict()


def _describe(messages: list[Message]) -> str:
    return ", ".join(m.role for m in messages) or "nothing"


def to_preference_pair(record: Any, *, where: str = "record", system_prompt: str | None = None,
                       tools: list[dict[str, Any]] | None = None) -> PreferencePair:
    """One preference record -> a validated :class:`PreferencePair` (see the module docstring);
    ``tools``: the dataset-wide schemas (``data.tools_file``) for a record without its own."""
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if missing:
        keys = ", ".join(sorted(map(str, record))) or "none"
        hint = "; this is an unpaired record (completion, label): set preference.loss_type: kto" \
            if is_unpaired_record(record) else ""
        raise DataFormatError(f"{where}: missing field {missing[0]!r}; a preference record needs 'chosen' and "
                              f"'rejected' (and 'prompt' unless both are full conversations); record fields: {keys}"
                              f"{hint}")
    own_tools = record.get("tools")
    if own_tools is not None and not isinstance(own_tools, list):
        raise DataFormatError(f"{where}: field 'tools' must be a list of tool schemas")
    raw_c, raw_r = record["chosen"], record["rejected"]
    prompt_raw = record.get("prompt")
    if prompt_raw is None:
        # implicit prompt: full conversations, as messages or HH-RLHF text
        if isinstance(raw_c, str) and isinstance(raw_r, str):
            chosen, rejected = _parse_hh(raw_c, where, "chosen"), _parse_hh(raw_r, where, "rejected")
            if chosen is None or rejected is None:
                raise DataFormatError(
                    f"{where}: no 'prompt' field, and 'chosen'/'rejected' are plain text; give a 'prompt', or full "
                    "conversations (lists of messages, or HH-RLHF text with '\\n\\nHuman:' and '\\n\\nAssistant:' turns)")
        else:
            chosen = _messages(raw_c, where, "chosen", "assistant")
            rejected = _messages(raw_r, where, "rejected", "assistant")
        n = 0
        while n < min(len(chosen), len(rejected)) and _same(chosen[n], rejected[n]):
            n += 1
        if n == len(chosen) == len(rejected):
            raise DataFormatError(f"{where}: 'chosen' and 'rejected' are identical; a preference pair needs two "
                                  "different replies")
        if n == 0:
            raise DataFormatError(f"{where}: 'chosen' and 'rejected' share no prompt (their first messages differ) "
                                  "and there is no 'prompt' field; give the prompt explicitly")
        prompt = chosen[:n]
        chosen_rest, rejected_rest = chosen[n:], rejected[n:]
    else:
        prompt = _messages(prompt_raw, where, "prompt", "user")
        chosen_rest = _messages(raw_c, where, "chosen", "assistant")
        rejected_rest = _messages(raw_r, where, "rejected", "assistant")
        for name, side in (("chosen", chosen_rest), ("rejected", rejected_rest)):
            if side[0].role != "assistant":  # a full conversation: it must start with the prompt
                k = len(prompt)
                if len(side) <= k or not all(_same(a, b) for a, b in zip(side[:k], prompt)):
                    raise DataFormatError(
                        f"{where}: 'prompt' is not a common prefix of 'chosen' and 'rejected': {name!r} starts with "
                        f"a {side[0].role} message that is not the prompt's; give '{name}' as the reply only, or "
                        "as the whole conversation beginning with the prompt messages")
        chosen_rest = chosen_rest[len(prompt):] if chosen_rest[0].role != "assistant" else chosen_rest
        rejected_rest = rejected_rest[len(prompt):] if rejected_rest[0].role != "assistant" else rejected_rest
    for name, side in (("chosen", chosen_rest), ("rejected", rejected_rest)):
        if len(side) != 1 or side[0].role != "assistant":
            raise DataFormatError(f"{where}: after the prompt, {name!r} must be one assistant message; got "
                                  f"{len(side)} message(s) ({_describe(side)})")
    if _same(chosen_rest[0], rejected_rest[0]):
        raise DataFormatError(f"{where}: 'chosen' and 'rejected' are identical; a preference pair needs two "
                              "different replies")
    if system_prompt and prompt and prompt[0].role != "system":
        prompt = [Message("system", system_prompt), *prompt]
    pair = PreferencePair(prompt, chosen_rest[0], rejected_rest[0], tools=own_tools or tools or None)
    for name, conv in zip(("chosen", "rejected"), pair.conversations()):
        try:
            conv.validate(where)
        except DataFormatError as exc:
            raise DataFormatError(f"{exc} (in the prompt + {name} conversation)") from None
    return pair


# -- pairs -> tokens --------------------------------------------------------------------------------
def _scored_side(renderer: ChatRenderer, conv: Conversation, where: str,
                 side: str) -> tuple[list[int], list[int], bool] | None:
    """ids and labels of one side (``side`` names it in errors): only the last assistant turn
    labelled, cut after its last labelled token. None when truncation left nothing to score; a
    reply the template renders as nothing to train is an error, not a drop: the pair would be lost
    without a word (tool calls that the template does not write, for example)."""
    result = renderer(conv, where)
    if result is None:
        _text, spans = renderer.render_text(conv, where)  # rare: truncation, or nothing rendered
        if not spans:
            raise TemplateError(
                f"{where}: the chat template renders nothing to train for the {side} reply (it writes no "
                "text for it: tool calls that the template does not render, for example); use a chat "
                "template that renders it (data.chat_template)")
        return None
    ids, labels = result.input_ids, result.labels
    last = max(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    return ids[: last + 1], labels[: last + 1], result.truncated


def _check_distinct(chosen: tuple[list[int], list[int], bool], rejected: tuple[list[int], list[int], bool],
                    where: str) -> None:
    """Two different replies that render to the same tokens (a template that writes the text of a
    reply but not its tool calls) would be a pair that teaches nothing: refuse it by name. Truncated
    sides are not compared: cutting two replies with a common start can make them equal."""
    if chosen[0] == rejected[0] and not (chosen[2] or rejected[2]):
        raise TemplateError(
            f"{where}: chosen and rejected render to the same tokens with this chat template (it does not "
            "write what differs between them: tool calls, for example); use a chat template that renders "
            "them (data.chat_template)")


def _cut_to_the_same(sides: list, where: str, max_seq_length: int | None, errors: list[str]) -> bool:
    """Whether truncation to ``max_seq_length`` made a pair's two replies the same tokens (untruncated
    ones were refused by :func:`_check_distinct`): a pair that teaches nothing, which the caller
    drops and counts; named in ``errors`` (the first 20)."""
    if len(sides) != 2 or not all(sides) or sides[0][0] != sides[1][0]:
        return False
    if len(errors) < 20:
        errors.append(f"{where}: chosen and rejected are the same {len(sides[0][0])} tokens after truncation to "
                      f"max_seq_length {max_seq_length}: dropped")
    return True


def _scoring_renderer(tokenizer: Any, options: RenderOptions | None, settings: dict[str, Any]
                      ) -> tuple[RenderOptions, ChatRenderer]:
    """The options (refusing those preference scoring cannot honour) and a renderer that scores
    only the last reply (``mask_history`` by construction; reasoning and control-token text as in SFT)."""
    options = RenderOptions.build(tokenizer, options, **settings)
    refuse_for_preference(train_on_prompt=options.train_on_prompt, formatting_func=options.formatting_func)
    return options, ChatRenderer(tokenizer, dataclasses.replace(options, mask_history=True))


def tokenize_preference_records(records: Any, tokenizer: Any, options: RenderOptions | None = None, *,
                                locate: Any = None, **settings: Any) -> tuple[dict[str, list], PreferenceStats]:
    """Preference records -> columns :data:`PREFERENCE_COLUMNS` (+ ``length``) and statistics.

    ``options`` (or ``settings``, :class:`.rendering.RenderOptions` fields) as in SFT: the chat
    template, system prompt, dataset-wide tools, max_seq_length, on_error, reasoning and
    control-token text (the format and agent format are for agent trajectories, which preference
    records are not). ``locate(records, index)`` names a record in error
    messages (default: ``record N``). Pairs whose chosen or rejected reply lost every scored token to
    ``max_seq_length`` (keep-start truncation), or whose two replies it cut to the same tokens (a pair
    that teaches nothing), are dropped, counted and logged."""
    options, renderer = _scoring_renderer(tokenizer, options, settings)
    columns: dict[str, list] = {name: [] for name in (*PREFERENCE_COLUMNS, "length")}
    stats = PreferenceStats()
    for index, record in enumerate(records):
        stats.records += 1
        where = locate(records, index) if locate is not None else f"record {index}"
        try:
            pair = to_preference_pair(record, where=where, system_prompt=options.system_prompt, tools=options.tools)
            sides = [_scored_side(renderer, conv, where, side)
                     for conv, side in zip(pair.conversations(), ("chosen", "rejected"))]
            if all(sides):
                _check_distinct(*sides, where)
        except DataFormatError as exc:
            if options.on_error != "skip":
                raise
            stats.skipped_invalid += 1
            stats.errors.append(str(exc))
            continue
        if any(s is None for s in sides):
            stats.dropped_no_scored_tokens += 1
            continue
        if _cut_to_the_same(sides, where, options.max_seq_length, stats.errors):
            stats.dropped_same_after_truncation += 1
            continue
        (c_ids, c_labels, c_cut), (r_ids, r_labels, r_cut) = sides
        stats.truncated += bool(c_cut or r_cut)
        stats.pairs += 1
        stats.tokens += len(c_ids) + len(r_ids)
        stats.scored_tokens += sum(lab != IGNORE_INDEX for lab in c_labels + r_labels)
        columns["chosen_input_ids"].append(c_ids)
        columns["chosen_labels"].append(c_labels)
        columns["rejected_input_ids"].append(r_ids)
        columns["rejected_labels"].append(r_labels)
        columns["length"].append(len(c_ids) + len(r_ids))
    if stats.dropped_same_after_truncation:
        logger.warning("dropped %d preference pairs whose chosen and rejected replies max_seq_length=%s cut to the "
                       "same tokens (first: %s); raise max_seq_length to keep them",
                       stats.dropped_same_after_truncation, options.max_seq_length,
                       next(e for e in stats.errors if "same" in e and "after truncation" in e))
    return columns, stats
