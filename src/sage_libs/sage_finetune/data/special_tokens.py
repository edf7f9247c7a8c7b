"""The tokenizer's control tokens (special and added-special tokens) as text: where one starts or
ends inside a rendered conversation. Used by :class:`.render.ChatRenderer` to find where replies end
and to keep control-token text written inside messages apart from the template's own tokens."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["SpecialTokens"]


class SpecialTokens:
    """The text of every control token of one tokenizer, with the lookups the renderer needs."""

    def __init__(self, tokenizer: Any) -> None:
        tokens = set(getattr(tokenizer, "all_special_tokens", None) or ())
        for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
            if getattr(added, "special", False):
                tokens.add(str(added))
        tokens.discard("")
        self.tokens = frozenset(tokens)
        self.lengths = sorted({len(t) for t in tokens}, reverse=True)
        self.firsts = frozenset(t[0] for t in tokens)
        self.regex = re.compile("|".join(map(re.escape, sorted(tokens, key=len, reverse=True))) or "(?!)")
        self.eos = getattr(tokenizer, "eos_token", None)
        self._last_length = self.lengths[0] if self.lengths else 1

    def ends_with(self, text: str, end: int) -> bool:
        """``text[:end]`` ends with a control token."""
        specials = self.tokens
        n = self._last_length  # replies usually end with the same token: try its length first
        if n <= end and text[end - n:end] in specials:
            return True
        for n in self.lengths:
            if n <= end and text[end - n:end] in specials:
                self._last_length = n
                return True
        return False

    def at(self, text: str, pos: int) -> str | None:
        """The control token starting at ``text[pos]`` (the longest), or None."""
        specials = self.tokens
        for n in self.lengths:
            if text[pos:pos + n] in specials:
                return text[pos:pos + n]
        return None

    def marker_at(self, text: str, pos: int) -> str | None:
        """Whitespace then a control token at ``text[pos:]``: that text, or None."""
        j = pos
        while j < len(text) and text[j].isspace():
            j += 1
        token = self.at(text, j)
        return text[pos:j + len(token)] if token else None

    def blank(self, text: str, start: int, end: int) -> bool:
        """``text[start:end]`` is only whitespace and control tokens."""
        while start < end and text[start].isspace():
            start += 1
        if start == end:
            return True
        if text[start] not in self.firsts or end - start > 256:
            return False
        return not self.regex.sub("", text[start:end]).strip()

    def safe_cut(self, a: str, b: str, cut: int) -> int:
        """``cut`` moved back so that it splits no control token in ``a`` or ``b``."""
        moved = True
        while moved:
            moved = False
            for text in (a, b):
                for n in self.lengths:
                    for p in range(max(0, cut - n + 1), min(cut, len(text) - n + 1)):
                        if text[p:p + n] in self.tokens:
                            cut, moved = p, True
                            break
        return cut
