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

Speed: :meth:`ChatRenderer.render_many` does the same for many conversations at once. When the
last message is the assistant's, ``full`` is the last ``upto`` and is not rendered again; all
prefixes (and all ``upto`` renders) of a batch go through transformers' template renderer in one
call each, skipping ``apply_chat_template``'s per-call set-up; and all texts are tokenized in one
batched call. The result is the same, token for token (checked against ``apply_chat_template``
on the first conversation, and in ``tests/test_perf_paths.py``).
"""

from __future__ import annotations

import bisect
import operator
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

    def _render_batch(self, chats: list[list[dict]], tools: Any, add_generation_prompt: bool,
                      plain: bool = False) -> list[str]:
        """``[_render(c, tools, add_generation_prompt) for c in chats]``, in one renderer call.
        ``plain``: every message is a plain-JSON dict (see :func:`_plain_chat`)."""
        if not chats:
            return []
        fast = self._batch_renderer()
        if fast is None:
            return [self._render(c, tools, add_generation_prompt) for c in chats]
        return fast(chats, tools, add_generation_prompt, plain)

    def _batch_renderer(self) -> Any:
        """transformers' own template renderer without apply_chat_template's per-call set-up; None
        (use apply_chat_template) if this transformers lacks it or renders differently."""
        if getattr(self, "_fast", None) is not None:
            return self._fast or None
        self._fast = False
        try:
            from transformers.utils.chat_template_utils import (_compile_jinja_template, _normalize_chat_messages,
                                                                _plain_template_data, render_jinja_template)
        except ImportError:
            return None
        tok = self.tokenizer
        special = dict(getattr(tok, "special_tokens_map", {}) or {})

        def fast(chats: list[list[dict]], tools: Any, add_generation_prompt: bool, plain: bool) -> list[str]:
            template = tok.get_chat_template(self.template, tools)
            # Plain chats (see _plain_chat) are exactly what render_jinja_template's own conversion
            # (_normalize_chat_messages, _plain_template_data, reasoning aliases) makes of its input,
            # so those copies are skipped and the compiled template renders them directly.
            if not (plain and (tools is None or _plain_json(tools))):
                rendered, _ = render_jinja_template(
                    conversations=[_normalize_chat_messages(c) for c in chats], tools=tools,
                    chat_template=template, add_generation_prompt=add_generation_prompt, **special)
                return rendered
            compiled = _compile_jinja_template(template)
            kwargs = _plain_template_data(special)
            return [compiled.render(messages=c, tools=tools, documents=None,
                                    add_generation_prompt=add_generation_prompt, **kwargs) for c in chats]

        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
        try:
            same = all(fast([probe[:n]], None, g, p) == [self._render(probe[:n], None, g)]
                       for n, g in ((1, True), (2, False)) for p in (True, False))
        except Exception:  # a template that cannot render the probe: keep the reference path
            same = False
        if same:
            self._fast = fast
        return self._fast or None

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
            spans.extend(self._span(prefix, upto, full, i, where))
        if self.mask_history:
            spans = spans[-1:]
        return full, spans

    def render_texts(self, convs: list[Conversation], wheres: list[str]) -> list[Any]:
        """``render_text`` for many conversations: each entry is ``(text, spans)`` or the exception
        that rendering that conversation raised (so the caller handles errors in record order)."""
        out: list[Any] = [None] * len(convs)
        groups: dict[tuple[int, bool], list[int]] = {}
        chats = [conv.to_chat() for conv in convs]
        for k, conv in enumerate(convs):  # one renderer call per tool set
            groups.setdefault((id(conv.tools), _plain_chat(chats[k])), []).append(k)
        for (_tools, plain), members in groups.items():
            try:
                self._render_group(convs, chats, wheres, members, plain, out)
            except Exception:  # e.g. a template's raise_exception: find out which conversation, in order
                for k in members:
                    try:
                        out[k] = self.render_text(convs[k], wheres[k])
                    except Exception as exc:  # noqa: BLE001 - handed back to the caller in record order
                        out[k] = exc
        return out

    def _render_group(self, convs: list[Conversation], chats: list[list[dict]], wheres: list[str], members: list[int],
                      plain: bool, out: list[Any]) -> None:
        tools = convs[members[0]].tools
        turns = {k: [i for i, m in enumerate(chats[k]) if m["role"] == "assistant"] for k in members}
        prefix_jobs = [(k, i) for k in members for i in turns[k] if i]
        upto_jobs = [(k, i) for k in members for i in turns[k]]
        full_jobs = [k for k in members if not turns[k] or turns[k][-1] != len(chats[k]) - 1]
        render = self._render_batch
        prefixes = dict(zip(prefix_jobs, render([chats[k][:i] for k, i in prefix_jobs], tools, True, plain)))
        uptos = dict(zip(upto_jobs, render([chats[k][:i + 1] for k, i in upto_jobs], tools, False, plain)))
        fulls = dict(zip(full_jobs, render([chats[k] for k in full_jobs], tools, False, plain)))
        for k in members:
            full = fulls[k] if k in fulls else uptos[(k, turns[k][-1])]
            try:
                spans: list[tuple[int, int]] = []
                for i in turns[k]:
                    spans.extend(self._span(prefixes.get((k, i), ""), uptos[(k, i)], full, i, wheres[k]))
                if self.mask_history:
                    spans = spans[-1:]
                out[k] = (full, spans)
            except DataFormatError as exc:
                out[k] = exc

    @staticmethod
    def _span(prefix: str, upto: str, full: str, i: int, where: str) -> list[tuple[int, int]]:
        """The character span of assistant turn ``i`` (empty if it renders to whitespace only)."""
        if not upto.startswith(prefix) or not full.startswith(upto):
            raise TemplateError(
                f"{where}: the chat template renders assistant turn {i} differently inside the whole "
                "conversation than on its own, so its trained tokens cannot be located exactly. "
                "Set data.chat_template to a template that renders history and the last turn alike.")
        start, end = len(prefix), len(upto)
        while end > start and upto[end - 1].isspace():
            end -= 1
        return [(start, end)] if end > start else []

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

    def render_many(self, items: list[Any], wheres: list[str]) -> list[Any]:
        """``self(conv)`` for each Conversation and ``render_plain(text)`` for each string, batched
        (see the module docstring). Each entry is a RenderResult, None (dropped) or the exception
        that item raised."""
        job = self.start_many(items, wheres)
        return self.finish_many(job, self.encode(job[2]))

    def start_many(self, items: list[Any], wheres: list[str]) -> tuple[list[Any], list[Any], list[str]]:
        """First half of :meth:`render_many`: render the texts (and handle text items). Returns
        ``(out, ready, texts)``; tokenize ``texts`` with :meth:`encode` (it may run in another
        thread: the Rust tokenizer releases the GIL) and pass the result to :meth:`finish_many`."""
        out: list[Any] = [None] * len(items)
        conv_idx = [k for k, item in enumerate(items) if not isinstance(item, str)]
        texts = self.render_texts([items[k] for k in conv_idx], [wheres[k] for k in conv_idx])
        ready = [(k, t) for k, t in zip(conv_idx, texts) if not isinstance(t, BaseException)]
        for k, t in zip(conv_idx, texts):
            if isinstance(t, BaseException):
                out[k] = t
        for k, item in enumerate(items):
            if isinstance(item, str):
                try:
                    out[k] = self.render_plain(item)
                except Exception as exc:  # noqa: BLE001 - handed back in record order
                    out[k] = exc
        return out, ready, [t[0] for _, t in ready]

    def encode(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """``(input_ids, offsets)`` per text (see :func:`_encode_batch`)."""
        return _encode_batch(self.tokenizer, texts) if texts else []

    def finish_many(self, job: tuple[list[Any], list[Any], list[str]], encoded: list[Any]) -> list[Any]:
        out, ready, _texts = job
        for (k, (_text, spans)), (ids, offsets) in zip(ready, encoded):
            ids = list(ids)
            labels = list(ids) if self.train_on_prompt else _labels_from_spans(ids, offsets, spans)
            out[k] = self._finish(ids, labels)
        return out

    def encode_in_thread_ok(self) -> bool:
        """Whether :meth:`encode` may run in a worker thread while this thread renders: only with a
        Rust (fast) tokenizer whose truncation/padding settings are already clear, so no call on
        either thread has to change them (which would contend for the Rust object)."""
        tok = self.tokenizer
        backend = getattr(tok, "_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_batch"):
            return False
        try:
            tok("", add_special_tokens=False)  # applies the wrapper's settings once, on this thread
        except Exception:  # noqa: BLE001 - no threading then
            return False
        return _backend_clean(tok)

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


_REASONING_KEYS = frozenset(("reasoning_content", "thinking", "reasoning"))


def _plain_json(value: Any) -> bool:
    if value is None or type(value) in (str, int, float, bool):
        return True
    if type(value) is dict:
        return all(type(k) is str and _plain_json(v) for k, v in value.items())
    if type(value) is list:
        return all(_plain_json(v) for v in value)
    return False


def _plain_chat(chat: list[Any]) -> bool:
    """Messages that are dicts of plain JSON values, with no None value and no reasoning field."""
    return all(type(m) is dict and None not in m.values() and not _REASONING_KEYS & m.keys() and _plain_json(m)
               for m in chat)


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """``(input_ids, offsets)`` of each text, as ``tokenizer(text, add_special_tokens=False,
    return_offsets_mapping=True)`` gives them, in one batched call to the Rust tokenizer (which
    spreads a batch over threads) without converting every encoding to a Python dict first."""
    if not _backend_clean(tokenizer):  # the wrapper applies its truncation/padding/special-token settings first
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return list(zip(enc["input_ids"], enc["offset_mapping"]))
    return [(e.ids, e.offsets) for e in tokenizer._tokenizer.encode_batch(texts, add_special_tokens=False)]


def _backend_clean(tokenizer: Any) -> bool:
    """A Rust tokenizer with no truncation or padding set and the wrapper's special-token mode."""
    backend = getattr(tokenizer, "_tokenizer", None)
    return (backend is not None and hasattr(backend, "encode_batch")
            and getattr(backend, "truncation", None) is None and getattr(backend, "padding", None) is None
            and getattr(backend, "encode_special_tokens", False)
            == bool(getattr(tokenizer, "split_special_tokens", False)))


def _labels_from_spans(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """A token is trained when its start offset lies inside a span."""
    labels = [IGNORE_INDEX] * len(ids)
    if not spans:
        return labels
    starts = [o[0] for o in offsets]
    if all(map(operator.le, starts, starts[1:])):  # sorted (the usual case): slice each span
        for s, e in spans:
            lo, hi = bisect.bisect_left(starts, s), bisect.bisect_left(starts, e)
            labels[lo:hi] = ids[lo:hi]
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
