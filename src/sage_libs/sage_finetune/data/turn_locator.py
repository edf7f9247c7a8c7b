"""Where each trained reply sits in a rendered conversation, for any chat template: steps 2-4 of
:mod:`.render`'s description (prefix renders, templates that render earlier turns differently,
generation prompts that end inside the reply, replies left open by the template). A part of
:class:`.render.ChatRenderer`, kept in its own module for size; it reads the renderer's tokenizer,
options and control-token tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import MaskError, TemplateError
from .text_spans import _MUTANTS, _diff, _lcp, _lcs, _mutated, _rstrip_end, _tail

if TYPE_CHECKING:
    from .render_job import RenderJob
    from .rendering import RenderOptions
    from .special_tokens import SpecialTokens

__all__ = ["TurnLocator"]

_PROBE_USER = {"role": "user", "content": "?"}


class TurnLocator:
    """The span-locating methods of :class:`.render.ChatRenderer`."""

    # what they read, set by ChatRenderer.__init__
    options: "RenderOptions"
    specials: "SpecialTokens"
    tokenizer: Any

    def _prepare(self, job: "RenderJob") -> tuple[str, list[tuple[int, int]], list[tuple[int, int]] | None]:
        """(text, trained spans, control-token text to tokenize as text) of one conversation."""
        hits = self._control_text(job)
        full = job.full
        spans: list[tuple[int, int]] = []
        insert: tuple[int, str] | None = None
        cache, chat = job.cache, job.chat
        trained = self._trained_turns(chat)
        for i, message in enumerate(chat):  # earlier calls too: the context of a trained reply must hold them
            if i not in trained and message.get("tool_calls"):
                _check_tool_calls_rendered(message, [full], job.where, i)
        if job.tools and not any(name in full for name in _tool_names(job.tools)):
            job.conv.meta.setdefault("warnings", []).append(
                f"{job.where}: the chat template does not render the tools given to it (record 'tools' or "
                "data.tools_file): the model is trained without seeing them")
        for i in trained:
            # the common case inline (see _turn): prefixes agree and the reply ends with a control token
            prefix = cache.get((i, True)) if i else ""
            upto = cache.get((i + 1, False))
            if prefix is not None and upto is not None and upto.startswith(prefix) and full.startswith(upto):
                start = len(prefix)
                end = _rstrip_end(upto, start, len(upto))
                if end > start and self.specials.ends_with(upto, end) and "reasoning_content" not in chat[i] \
                        and not self.specials.blank(upto, start, end):
                    _check_tool_calls_rendered(chat[i], [full[start:end]], job.where, i)
                    spans.append((start, end))
                    continue
            try:
                turn_spans, turn_insert = self._turn(job, i)
            except MaskError:
                if self.options.train_on_prompt:  # every token is trained anyway
                    continue
                raise
            _check_tool_calls_rendered(chat[i], [full[s:e] for s, e in turn_spans], job.where, i)
            spans.extend(turn_spans)
            insert = turn_insert or insert
        text = full if insert is None else full[:insert[0]] + insert[1] + full[insert[0]:]
        literal = None
        if hits and self.options.control_tokens_in_content == "text":
            literal = self._literal_spans(job, full)
        return text, spans, literal

    def _turn(self, job: "RenderJob", i: int) -> tuple[list[tuple[int, int]], tuple[int, str] | None]:
        """The spans (in ``full``) of assistant turn ``i``, and text to insert into ``full`` to close
        it (a last reply that the template leaves open, see the module docstring)."""
        cache = job.cache
        prefix = (cache.get((i, True)) or job.render(i, True)) if i else ""
        upto = cache.get((i + 1, False)) or job.render(i + 1, False)
        full = cache.get((len(job.chat), False)) or job.full
        if upto.startswith(prefix) and full.startswith(upto):
            start, end, shift = len(prefix), _rstrip_end(upto, len(prefix), len(upto)), 0
        else:
            start, end, shift = self._locate(job, i, prefix, upto)
        if end <= start or self.specials.blank(upto, start, end):
            return [], None
        insert = None
        if not self.specials.ends_with(upto, end):
            marker = self._closing_marker(job, i, upto, end, shift)
            if marker:
                if i == len(job.chat) - 1:  # full is upto here, and upto[end:] is the whitespace the marker starts with
                    insert = (len(upto), marker[len(upto) - end:])
                end += len(marker)
        if "reasoning_content" in job.chat[i]:
            return self._reasoning_spans(job, i, (start + shift, end + shift), full), insert
        return [(start + shift, end + shift)], insert

    def _reasoning_spans(self, job: "RenderJob", i: int, span: tuple[int, int], text: str) -> list[tuple[int, int]]:
        reasoning = job.chat[i].get("reasoning_content")
        if not isinstance(reasoning, str) or not reasoning.strip():
            return [span]
        found = text.find(reasoning.strip(), span[0], span[1])
        if found < 0:
            raise TemplateError(
                f"{job.where}: message {i} (assistant) has reasoning_content, but the chat template does not render "
                "it in this reply, so it would be silently dropped. Set data.reasoning: drop to train the reply "
                "without its reasoning, or use a chat template that renders reasoning_content (e.g. Qwen3's)")
        if self.options.reasoning != "mask":
            return [span]
        stop = found + len(reasoning.strip())
        return [s for s in ((span[0], found), (stop, span[1])) if s[1] > s[0]]

    def _locate(self, job: "RenderJob", i: int, prefix: str, upto: str) -> tuple[int, int, int]:
        """Where turn ``i``'s reply is when the fast path's prefix checks fail: ``(start, end)`` in
        ``upto`` and the shift to ``full``'s coordinates, or a :class:`MaskError` naming the cause."""
        full, where = job.full, job.where
        # 1. where the reply starts in its own render
        if upto.startswith(prefix):
            start = len(prefix)
        else:
            bare = job.render(i, False)
            if upto.startswith(bare) and prefix.startswith(bare):
                start = self._start_after_prefill(job, i, bare, prefix[len(bare):], upto)
            else:
                start = self._start_after_prompt(job, i, prefix, upto)
        end = _rstrip_end(upto, start, len(upto))
        if full.startswith(upto[:end]):
            return start, end, 0
        # 2. text written after the last message only (Phi-3: the eos when no generation prompt follows)
        continued = job.render(i + 1, True)
        cut = self.specials.safe_cut(upto, continued, _lcp(upto, continued))
        closing = upto[cut:]
        if start < cut < len(upto) and closing.strip() and full.endswith(closing) \
                and self.specials.at(upto, cut + len(closing) - len(closing.lstrip())):
            end = _rstrip_end(upto, start, cut)
            if full.startswith(upto[:end]):
                return start, end, 0
        # 3. earlier messages render differently depending on what comes last (Mistral v0.3)
        found, inside = self._find_in_full(job, i, upto, start, end)
        if found is not None:
            return start, end, found - start
        shown = f"inside the conversation ...{inside!r}" if inside else "inside the conversation it is not there"
        raise MaskError(
            f"{where}: assistant turn {i}: the chat template renders this reply differently inside the conversation "
            f"than as the last message (as the last message {upto[start:end]!r}; {shown}): it changes earlier "
            "replies once more messages follow (Qwen3's template, for one, drops the thinking block of replies "
            "before the last user message), so the trained tokens cannot be located exactly. Train only the last "
            "reply (data.mask_history: true), or set data.chat_template to a template that renders earlier and last "
            "replies alike")

    def _start_after_prefill(self, job: "RenderJob", i: int, bare: str, prompt: str, upto: str) -> int:
        """Where reply ``i`` starts when the generation prompt ``prompt`` ends with text the rendered
        turn does not start with (DeepSeek's ``<｜Assistant｜><think>\\n``): where the two part. The
        rest of the prompt is a prefill the template adds at generation time only."""
        turn = upto[len(bare):]
        cut = _lcp(prompt, turn)
        if cut:  # a reply that starts like the prompt's tail must not move the start: compare a plain reply's
            try:
                other = job.render_messages(job.chat[:i] + [{"role": "assistant", "content": _MUTANTS[0] * 3}])
            except TemplateError:
                other = ""
            cut = min(cut, _lcp(prompt, other[len(bare):])) if other.startswith(bare) else 0
            cut = self.specials.safe_cut(prompt, turn, cut)
        if cut == 0:
            raise MaskError(
                f"{job.where}: assistant turn {i}: the chat template's generation prompt {prompt!r} is not how it "
                f"starts the rendered reply ({turn[:len(prompt) + 12]!r}...), so the reply's first token cannot be "
                "located exactly")
        return len(bare) + cut

    def _start_after_prompt(self, job: "RenderJob", i: int, prefix: str, upto: str) -> int:
        """Where reply ``i`` starts in ``upto`` when the template renders the earlier messages
        differently once the reply follows them (Mistral v0.3 puts the system prompt into the user
        message only while it is the last message): right after the longest tail of ``prefix`` that
        ends before the reply's text, which is found by changing that text."""
        mutant = _mutated(job.chat[i])
        best, where_best, tie = 0, -1, False
        if mutant is not None and prefix:
            try:
                other = job.render_messages(job.chat[:i] + [mutant])
            except TemplateError:
                other = upto
            text_at = _lcp(upto, other)
            for x in range(max(0, text_at - 256), text_at + 1):
                if upto[x - 1:x] != prefix[-1:]:
                    continue
                n = _lcs(prefix, upto[:x])
                if n > best:
                    best, where_best, tie = n, x, False
                elif n == best:
                    tie = True
        if best == 0 or tie:
            raise MaskError(
                f"{job.where}: assistant turn {i}: the chat template renders the messages before this reply "
                f"differently once the reply follows them ({_tail(prefix, upto)}), so the reply's first token "
                "cannot be located exactly")
        return where_best

    def _find_in_full(self, job: "RenderJob", i: int, upto: str, start: int, end: int) -> tuple[int | None, str]:
        """Locate reply ``i`` in ``full`` by changing its text and comparing renders: the reply
        must read ``upto[start:end]`` there, character for character. Returns (position or None,
        what the reply's place in ``full`` reads, for the error message)."""
        mutant = _mutated(job.chat[i])
        if mutant is None:
            return None, ""
        try:
            upto_m = job.render_messages(job.chat[:i] + [mutant])
            full_m = job.render_messages(job.chat[:i] + [mutant] + job.chat[i + 1:])
        except TemplateError:
            return None, ""
        full = job.full
        a_u, b_u = _diff(upto, upto_m)
        a_f, b_f = _diff(full, full_m)
        if not (start <= a_u <= b_u <= end) or a_f == b_f == len(full):
            return None, ""
        lo, hi = max(0, a_f - (a_u - start)), b_f + (end - b_u)
        if full[lo:hi] == upto[start:end]:
            return lo, full[lo:hi]
        return None, full[max(0, a_f - 12):hi]

    def _closing_marker(self, job: "RenderJob", i: int, upto: str, end: int, shift: int) -> str:
        """The end-of-turn token (with any whitespace before it) that closes reply ``i`` inside the
        conversation although its own render ends without one, or ''."""
        if i == len(job.chat) - 1:
            try:
                follow = job.render_messages(job.chat + [_PROBE_USER])
            except TemplateError:
                return ""
            if not follow.startswith(upto[:end]):
                return ""
            marker = self.specials.marker_at(follow, end)
        else:
            marker = self.specials.marker_at(job.full, end + shift)
        if marker is None:
            return ""
        if marker.lstrip() == self.specials.eos:
            return marker
        continued = job.render(i + 1, True)
        if continued.startswith(upto[:end]) and self.specials.marker_at(continued, end) == marker:
            return marker
        return ""  # the next message's header, not an end-of-turn token


def _check_tool_calls_rendered(message: dict, texts: list[str], where: str, i: int) -> None:
    """A trained reply's tool calls must be in what is trained: many templates (Llama-3.0, Phi-3,
    Gemma, Mistral v0.1, Qwen1.5's ChatML...) write only a message's text, so an agent dataset would
    lose every call without a word (an empty turn not trained, or only the text beside the call)."""
    calls = message.get("tool_calls")
    if not calls:
        return
    rendered = "".join(texts)
    for call in calls:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name and name not in rendered:
            raise TemplateError(
                f"{where}: assistant turn {i}: the chat template does not render its tool call {name!r} (it "
                "writes only the message text), so the call would not be trained; use a chat template that "
                "renders tool_calls (data.chat_template), or agent trajectories with data.agent_format: react")


def _tool_names(tools: list) -> list[str]:
    names = []
    for tool in tools:
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]:
            names.append(fn["name"])
    return names
