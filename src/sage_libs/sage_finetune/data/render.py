"""Conversation + tokenizer -> ``input_ids`` and ``labels``.

How the trained tokens are found, for any chat template:

1. Render the whole conversation once with the template -> ``full``.
2. For every assistant message ``i``, render ``messages[:i]`` with the generation prompt
   (``prefix``) and ``messages[:i+1]`` (``upto``). The reply is ``upto[len(prefix):]``: the
   assistant's text plus whatever the template closes the turn with (``<|im_end|>``,
   ``<|eot_id|>``, ``</s>``...). Trailing whitespace after that end-of-turn token is template
   layout, not something the model generates, so it is left untrained.
3. Check that ``prefix`` is a prefix of ``upto`` and ``upto`` a prefix of ``full``; a template that
   renders earlier turns differently from the last one fails loudly instead of training the
   wrong tokens.
4. Tokenize ``full`` once with character offsets; a token is trained when it starts inside a
   reply span. Everything else gets ``-100``.

Templates with ``{% generation %}`` blocks need nothing special: the same rule gives the same
mask (tests check both kinds).

The first token's label is always -100 (nothing predicts it). Truncation keeps the first
``max_seq_length`` tokens; a sample with no trained token left is
dropped (``render`` returns ``None``) and the caller counts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .conversation import Conversation, DataFormatError

__all__ = ["IGNORE_INDEX", "FALLBACK_CHAT_TEMPLATE", "ChatRenderer", "RenderResult", "TemplateError"]

IGNORE_INDEX = -100

# Used when the tokenizer has no chat template. Plain-text role headers, each ending in a newline
# (not a space: a trailing space would merge with the reply's first word and blur the boundary);
# the end of each assistant turn is the tokenizer's eos token, so the model learns to stop.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ 'System:\n' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'User:\n' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'tool' -%}{{ 'Tool:\n' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'Assistant:\n' + message['content'] }}"
    "{%- if message.get('tool_calls') -%}{%- for call in message['tool_calls'] -%}"
    "{{ '\n<tool_call>' + (call['function'] | tojson) + '</tool_call>' }}"
    "{%- endfor -%}{%- endif -%}"
    "{{ eos_token + '\n\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:\n' }}{%- endif -%}"
)


class TemplateError(DataFormatError):
    """The chat template renders a conversation inconsistently, so spans cannot be trusted."""


@dataclass
class RenderResult:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


class ChatRenderer:
    """Turns conversations into token ids and labels with one tokenizer and template."""

    def __init__(self, tokenizer: Any, *, chat_template: str | None = None, max_seq_length: int | None = None,
                 train_on_prompt: bool = False, mask_history: bool = False) -> None:
        self.tokenizer = tokenizer
        self.template = chat_template or getattr(tokenizer, "chat_template", None) or FALLBACK_CHAT_TEMPLATE
        self.max_seq_length = max_seq_length
        self.train_on_prompt = train_on_prompt
        self.mask_history = mask_history

    # -- text level ---------------------------------------------------------------------------
    def _render(self, messages: list[dict], tools: Any, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, chat_template=self.template, tokenize=False,
            add_generation_prompt=add_generation_prompt)

    def render_text(self, conv: Conversation, where: str = "record") -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of the trained assistant replies."""
        messages = conv.to_chat()
        full = self._render(messages, conv.tools, False)
        spans: list[tuple[int, int]] = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = self._render(messages[:i], conv.tools, True) if i else ""
            upto = self._render(messages[: i + 1], conv.tools, False)
            if not upto.startswith(prefix) or not full.startswith(upto):
                raise TemplateError(
                    f"{where}: the chat template renders assistant turn {i} differently inside the whole "
                    "conversation than on its own, so its trained tokens cannot be located exactly. "
                    "Set data.chat_template to a template that renders history and the last turn alike.")
            start, end = len(prefix), len(upto)
            while end > start and upto[end - 1].isspace():
                end -= 1
            if end > start:
                spans.append((start, end))
        if self.mask_history:
            spans = spans[-1:]
        return full, spans

    # -- token level --------------------------------------------------------------------------
    def __call__(self, conv: Conversation, where: str = "record") -> RenderResult | None:
        text, spans = self.render_text(conv, where)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        if self.train_on_prompt:
            labels = list(ids)
        else:
            labels = _labels_from_spans(ids, enc["offset_mapping"], spans)
        return self._finish(ids, labels)

    def render_plain(self, text: str) -> RenderResult | None:
        """A ``text`` record: every token trained, eos appended so the model learns to stop."""
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        eos = self.tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        return self._finish(ids, list(ids))

    def _finish(self, ids: list[int], labels: list[int]) -> RenderResult | None:
        truncated = False
        if labels:
            # Nothing precedes the first token, so it is never a prediction target; marking it
            # keeps the trained-token count (the loss normaliser) exact, packed or not.
            labels[0] = IGNORE_INDEX
        if self.max_seq_length is not None and len(ids) > self.max_seq_length:
            ids, labels, truncated = ids[: self.max_seq_length], labels[: self.max_seq_length], True
        if all(lab == IGNORE_INDEX for lab in labels):
            return None
        return RenderResult(ids, labels, truncated)


def _labels_from_spans(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    if not spans:
        return labels
    k = 0  # spans and offsets are both sorted: one merge pass
    for t, (start, _end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        if spans[k][0] <= start < spans[k][1]:
            labels[t] = ids[t]
    return labels
