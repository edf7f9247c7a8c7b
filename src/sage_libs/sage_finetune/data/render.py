"""Conversation + tokenizer -> ``input_ids`` and ``labels``.

What is trained (``train_on_prompt`` off): each assistant reply, from the first character after the
template's generation prompt through the end-of-turn token the template closes it with
(``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ``</s>``...). Layout whitespace the template
writes after that token (a newline before the next turn) is not trained: generation stops at the
end-of-turn token, so the model never produces it. After the *last* reply, everything the template
writes up to the end of the conversation is trained (Phi-3's closing eos, for example), whitespace
at the very end excepted. A reply that renders as nothing but whitespace and control tokens (tool
calls the template does not render) is not trained.

How the spans are found, for any chat template:

1. Render the whole conversation once -> ``full``.
2. For every trained assistant message ``i``, render ``messages[:i]`` with the generation prompt
   (``prefix``) and ``messages[:i+1]`` (``upto``). The reply is ``upto[len(prefix):]`` minus its
   trailing whitespace.
3. Fast path: ``prefix`` is a prefix of ``upto`` and ``upto`` a prefix of ``full``; the reply sits at
   the same place in ``full``. Otherwise the template does one of these (each handled exactly):

   * its generation prompt ends with text the rendered turn does not start with (DeepSeek's
     ``<｜Assistant｜><think>\\n``): the reply starts where the prompt and the turn part;
   * it writes text after the last message only (Phi-3 writes the eos when no generation prompt
     follows): a non-final reply ends before that text;
   * it renders earlier messages differently depending on what comes last (Mistral v0.3 puts the
     system prompt and the tools into the last user message): the reply is located in ``full`` by
     changing that one message and comparing the two renders, and is used only if it renders
     character for character as it does as the last message.

   A reply that renders differently inside the conversation than as the last message (Qwen3 drops
   the thinking block of earlier turns) is refused with a message that shows both renders, never
   trained on a guess.
4. A reply whose render ends without a control token, where the template writes the end-of-turn
   token only when another message follows (Qwen1.5-Chat's ChatML, vLLM's ``template_chatml``):
   the control token that follows the reply inside the conversation is trained with it when it is
   the eos or the same token the template writes after the reply before a generation prompt; the
   last reply, which such a template leaves open, is closed with that token so the model learns to
   stop.
5. Tokenize the text once with character offsets; a token is trained when it starts inside a span.

``{% generation %}`` blocks in a template are not used. TRL's training templates for Qwen2.5,
Qwen3, Gemma and Gemma-3 put the newline after the end-of-turn token (and Qwen2.5/Qwen3 the newline
after the role header) inside the block, so their ``assistant_masks`` train those layout tokens too;
ours do not (the tokens in between are identical).

Options: ``mask_history`` trains only the last assistant reply (a sample whose last reply renders
empty is dropped); ``train_on_prompt`` trains every token. ``reasoning`` decides what happens to a
message's ``reasoning_content``: ``train`` (rendered by the template and trained with the reply),
``mask`` (rendered, not trained) or ``drop`` (removed before rendering); with train or mask a reply
whose reasoning the template does not render is an error, not a silent loss.
``control_tokens_in_content`` decides what becomes of the text of a control token (``<|im_end|>``,
``</s>``...) written inside a message: ``text`` (default) tokenizes it as ordinary text, so only
the template's own control tokens are control tokens; ``control`` keeps the plain tokenization
(it becomes the control token, and may be trained); ``refuse`` makes such a record an error.

The first token's label is always -100 (nothing predicts it). Truncation keeps the first
``max_seq_length`` tokens; a sample with no trained token left is dropped (``render`` returns
``None``) and the caller counts it.

Speed: :meth:`ChatRenderer.render_many` does the same for many conversations at once. When the
last message is the assistant's, ``full`` is the last ``upto`` and is not rendered again; all
prefixes (and all ``upto`` renders) of a batch go through transformers' template renderer in one
call each, skipping ``apply_chat_template``'s per-call set-up; and all texts are tokenized in one
batched call. The result is the same, token for token (checked against ``apply_chat_template``
on the first conversation, and in ``tests/test_perf_paths.py``). Only conversations that leave the
fast path (step 3) or need step 4 render more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import DataFormatError, MaskError, TemplateError  # noqa: F401 (re-exported)
from .control_text import ControlTextEncoding
from .conversation import IGNORE_INDEX, Conversation  # noqa: F401 (re-exported)
from .text_spans import _backend_clean, _encode_batch, _labels_from_spans, _plain_chat, _plain_json
from .render_job import RenderJob
from .rendering import RenderOptions
from .special_tokens import SpecialTokens
from .turn_locator import TurnLocator

__all__ = ["IGNORE_INDEX", "ChatRenderer", "RenderResult", "TemplateError"]


@dataclass
class RenderResult:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


class ChatRenderer(TurnLocator, ControlTextEncoding):
    """Turns conversations into token ids and labels with one tokenizer and template."""

    def __init__(self, tokenizer: Any, options: RenderOptions | None = None, **settings: Any) -> None:
        """``options`` (:class:`.rendering.RenderOptions`), or its fields as ``settings``
        (``chat_template=``, ``max_seq_length=``, ``train_on_prompt=``, ``mask_history=``,
        ``reasoning=``, ``control_tokens_in_content=``...)."""
        self.tokenizer = tokenizer
        self.options = RenderOptions.build(tokenizer, options, **settings)
        self.template = self.options.chat_template.text
        self.specials = SpecialTokens(tokenizer)
        self._text_tokenizer: Any = None

    # -- text level ---------------------------------------------------------------------------
    def _render(self, messages: list[dict], tools: Any, add_generation_prompt: bool,
                template: str | None = None) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, chat_template=template or self.template, tokenize=False,
            add_generation_prompt=add_generation_prompt)

    def _render_batch(self, chats: list[list[dict]], tools: Any, add_generation_prompt: bool,
                      plain: bool = False, template: str | None = None) -> list[str]:
        """``[_render(c, tools, add_generation_prompt) for c in chats]``, in one renderer call.
        ``plain``: every message is a plain-JSON dict (see :func:`_plain_chat`)."""
        if not chats:
            return []
        template = template or self.template
        fast = self._batch_renderer()
        if fast is None:
            return [self._render(c, tools, add_generation_prompt, template) for c in chats]
        return fast(chats, tools, add_generation_prompt, plain, template)

    def _batch_renderer(self) -> Any:
        """transformers' own template renderer without apply_chat_template's per-call set-up; None
        (use apply_chat_template) if this transformers lacks it or renders differently."""
        if getattr(self, "_fast", None) is not None:
            return self._fast or None
        self._fast = False
        try:
            from transformers.utils.chat_template_utils import (
                _compile_jinja_template,
                _normalize_chat_messages,
                _plain_template_data,
                render_jinja_template,
            )
        except ImportError:
            return None
        tok = self.tokenizer
        special = dict(getattr(tok, "special_tokens_map", {}) or {})

        def fast(chats: list[list[dict]], tools: Any, add_generation_prompt: bool, plain: bool,
                 template: str) -> list[str]:
            template = tok.get_chat_template(template, tools)
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
            same = all(fast([probe[:n]], None, g, p, self.template) == [self._render(probe[:n], None, g)]
                       for n, g in ((1, True), (2, False)) for p in (True, False))
        except Exception:  # a template that cannot render the probe: keep the reference path
            same = False
        if same:
            self._fast = fast
        return self._fast or None

    def _chat(self, conv: Conversation) -> list[dict]:
        chat = conv.to_chat()
        if self.options.reasoning == "drop":
            chat = [{k: v for k, v in m.items() if k != "reasoning_content"} if "reasoning_content" in m else m
                    for m in chat]
        return chat

    def _job(self, conv: Conversation, where: str, chat: list[dict] | None = None) -> RenderJob:
        chat = self._chat(conv) if chat is None else chat
        return RenderJob(self, conv, chat, conv.tools, self.template, where, _plain_chat(chat))

    def render_text(self, conv: Conversation, where: str = "record") -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of the trained assistant replies."""
        text, spans, _literal = self._prepare(self._job(conv, where))
        return text, spans

    def render_texts(self, convs: list[Conversation], wheres: list[str]) -> list[Any]:
        """For many conversations: each entry is ``(text, spans, literal)`` (``literal``: the
        character spans of control-token text inside messages that is to be tokenized as text, or
        None) or the exception that rendering that conversation raised (so the caller handles
        errors in record order)."""
        out: list[Any] = [None] * len(convs)
        jobs = [self._job(conv, where) for conv, where in zip(convs, wheres)]
        groups: dict[tuple[int, bool], list[int]] = {}
        for k, job in enumerate(jobs):  # one renderer call per tool set
            groups.setdefault((id(job.tools), job.plain), []).append(k)
        for members in groups.values():
            try:
                self._prerender([jobs[k] for k in members])
            except Exception:  # noqa: BLE001 - e.g. a template's raise_exception: each conversation on its own
                for k in members:
                    jobs[k].cache.clear()
            for k in members:
                try:
                    out[k] = self._prepare(jobs[k])
                except Exception as exc:  # noqa: BLE001 - handed back in record order (the caller names it)
                    out[k] = exc
        return out

    def _trained_turns(self, chat: list[dict]) -> list[int]:
        turns = [i for i, m in enumerate(chat) if m["role"] == "assistant"]
        # train_on_prompt: only the last turn matters (it may need closing, see the module docstring)
        return turns[-1:] if (self.options.mask_history or self.options.train_on_prompt) else turns

    def _prerender(self, jobs: list[RenderJob]) -> None:
        """Fill the render caches of one group of conversations with three batched renderer calls."""
        first = jobs[0]
        turns = {id(job): self._trained_turns(job.chat) for job in jobs}
        prefix_jobs = [(job, i) for job in jobs for i in turns[id(job)] if i]
        upto_jobs = [(job, i) for job in jobs for i in turns[id(job)]]
        full_jobs = [job for job in jobs if not turns[id(job)] or turns[id(job)][-1] != len(job.chat) - 1]
        render = self._render_batch
        tools, plain, template = first.tools, first.plain, first.template
        prefixes = render([job.chat[:i] for job, i in prefix_jobs], tools, True, plain, template)
        uptos = render([job.chat[:i + 1] for job, i in upto_jobs], tools, False, plain, template)
        fulls = render([job.chat for job in full_jobs], tools, False, plain, template)
        for (job, i), text in zip(prefix_jobs, prefixes):
            job.cache[(i, True)] = text
        for (job, i), text in zip(upto_jobs, uptos):
            job.cache[(i + 1, False)] = text
        for job, text in zip(full_jobs, fulls):
            job.cache[(len(job.chat), False)] = text

    def __call__(self, conv: Conversation, where: str = "record") -> RenderResult | None:
        text, spans, literal = self._prepare(self._job(conv, where))
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return self._result(list(enc["input_ids"]), list(enc["offset_mapping"]), text, spans, literal)

    def _result(self, ids: list[int], offsets: list, text: str, spans: list[tuple[int, int]],
                literal: list[tuple[int, int]] | None) -> RenderResult | None:
        if literal:
            ids, offsets = self._encode_literal(ids, [tuple(o) for o in offsets], text, literal)
        labels = list(ids) if self.options.train_on_prompt else _labels_from_spans(ids, offsets, spans)
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
        for (k, (text, spans, literal)), (ids, offsets) in zip(ready, encoded):
            try:
                out[k] = self._result(list(ids), offsets, text, spans, literal)
            except DataFormatError as exc:
                out[k] = exc
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
        limit = self.options.max_seq_length
        if limit is not None and len(ids) > limit:
            ids, labels, truncated = ids[:limit], labels[:limit], True
        if all(lab == IGNORE_INDEX for lab in labels):
            return None
        return RenderResult(ids, labels, truncated)
