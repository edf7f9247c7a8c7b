"""Control-token text written inside messages (``data.control_tokens_in_content``): found, kept as
text or refused, and tokenized so that only the template's own control tokens become control
tokens. A part of :class:`.render.ChatRenderer`, kept in its own module for size."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import DataFormatError, TemplateError
from .text_spans import _map_strings, _strings

if TYPE_CHECKING:
    from .render_job import RenderJob
    from .rendering import RenderOptions
    from .special_tokens import SpecialTokens

__all__ = ["ControlTextEncoding"]

_PLACEHOLDER = "\ue00f"  # stands in for each character of control-token text inside messages


class ControlTextEncoding:
    """The control-token-text methods of :class:`.render.ChatRenderer`."""

    # what they read, set by ChatRenderer.__init__
    options: "RenderOptions"
    specials: "SpecialTokens"
    tokenizer: Any

    def _control_text(self, job: "RenderJob") -> list[tuple[int, str]]:
        """(message index, token) for control-token text inside the messages; records it in the
        conversation's meta (for the data report) and refuses the record when so configured."""
        search = self.specials.regex.search
        hits = []
        for i, message in enumerate(job.chat):
            content = message.get("content")
            found = search(content) if type(content) is str else None
            if found is None and len(message) > 2:  # tool calls, reasoning, names
                found = next(filter(None, map(search, _strings({k: v for k, v in message.items()
                                                                 if k not in ("role", "content")}))), None)
            if found:
                hits.append((i, found.group()))
        if not hits:
            return hits
        i, token = hits[0]
        what = f"message {i} ({job.chat[i].get('role')}) contains the text of the control token {token!r}"
        if self.options.control_tokens_in_content == "refuse":
            raise DataFormatError(f"{job.where}: {what}; refused (data.control_tokens_in_content: refuse). Use 'text' "
                                  "to tokenize it as ordinary text or 'control' to keep it a control token")
        meta = job.conv.meta
        meta["control_text"] = hits
        how = "tokenized as text" if self.options.control_tokens_in_content == "text" else "kept as a control token"
        meta.setdefault("warnings", []).append(f"{job.where}: {what}; {how} (data.control_tokens_in_content)")
        return hits

    def _literal_spans(self, job: "RenderJob", full: str) -> list[tuple[int, int]]:
        """The character spans of control-token text in ``full`` that comes from the messages (not
        from the template): found by rendering again with that text replaced by placeholders."""
        blanked = [_map_strings(m, lambda s: self.specials.regex.sub(lambda t: _PLACEHOLDER * len(t.group()), s))
                   for m in job.chat]
        other = job.render_messages(blanked)
        literal = [m.span() for m in self.specials.regex.finditer(full)
                   if other[m.start():m.end()] == _PLACEHOLDER * (m.end() - m.start())]
        pos, same = 0, len(other) == len(full)
        for s, e in literal:
            same = same and other[pos:s] == full[pos:s]
            pos = e
        if not (same and other[pos:] == full[pos:]):
            raise TemplateError(
                f"{job.where}: the messages contain control-token text and the chat template transforms it, so it "
                "cannot be told apart from the template's own control tokens; set data.control_tokens_in_content to "
                "'control' or 'refuse' for this data")
        return literal

    def _encode_literal(self, ids: list[int], offsets: list[tuple[int, int]], text: str,
                        literal: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        """Re-encode the control tokens at ``literal`` spans as ordinary text."""
        if not literal:
            return ids, offsets
        plain = self._plain_encoder()
        out_ids: list[int] = []
        out_offsets: list[tuple[int, int]] = []
        k = 0
        for tid, (s, e) in zip(ids, offsets):
            while k < len(literal) and literal[k][1] <= s:
                k += 1
            if k < len(literal) and s <= literal[k][0] and literal[k][1] <= e:  # the control token it became
                piece_ids, piece_offsets = plain(text[s:e])
                out_ids.extend(piece_ids)
                out_offsets.extend((a + s, b + s) for a, b in piece_offsets)
                k += 1
            else:
                out_ids.append(tid)
                out_offsets.append((s, e))
        return out_ids, out_offsets

    def _plain_encoder(self) -> Any:
        """A function encoding text with no control token recognised (the tokenizer's
        ``split_special_tokens``), as ``(ids, offsets)`` continuing mid-text."""
        if self._text_tokenizer is None:
            backend = getattr(self.tokenizer, "_tokenizer", None)
            if backend is None or not hasattr(backend, "to_str"):
                raise DataFormatError(
                    "control-token text inside messages can be tokenized as text only with a fast (Rust) tokenizer; "
                    "set data.control_tokens_in_content to 'control' or 'refuse'")
            from tokenizers import Tokenizer

            clone = Tokenizer.from_str(backend.to_str())
            clone.no_truncation()
            clone.no_padding()
            clone.encode_special_tokens = True
            anchor = clone.encode("\n", add_special_tokens=False)
            self._text_tokenizer = (clone, len(anchor.ids))
        clone, n_anchor = self._text_tokenizer

        def encode(piece: str) -> tuple[list[int], list[tuple[int, int]]]:
            # encoded after a newline, so that a tokenizer that marks the start of a text (SentencePiece's
            # prefix space) treats the piece as text in the middle of the conversation, which it is
            enc = clone.encode("\n" + piece, add_special_tokens=False)
            if len(enc.ids) > n_anchor and enc.offsets[n_anchor - 1][1] <= 1 and enc.offsets[n_anchor][0] >= 1:
                return list(enc.ids[n_anchor:]), [(a - 1, b - 1) for a, b in enc.offsets[n_anchor:]]
            enc = clone.encode(piece, add_special_tokens=False)
            return list(enc.ids), list(enc.offsets)

        return encode

    # -- token level --------------------------------------------------------------------------
