"""String helpers for locating a reply's characters in a rendered conversation (:mod:`.turn_locator`)
and turning character spans into token labels (:mod:`.render`). Pure functions on strings and lists."""

from __future__ import annotations

import bisect
import copy
import operator
from typing import Any

from .conversation import IGNORE_INDEX

_MUTANTS = ("\ue000", "\ue001", "\ue002")  # private-use characters that stand in for a message's text


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


def _strings(value: Any):
    """Every string inside a message (content, reasoning, tool calls), dict keys excepted."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _map_strings(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_strings(v, fn) for v in value]
    return value


def _mutated(message: dict) -> dict | None:
    """A copy of an assistant message whose text differs from the original in its first and last
    character (its content, else its first tool call's name), or None if it has no text to change."""
    content = message.get("content")
    if isinstance(content, str) and content.strip():
        out = dict(message)
        out["content"] = _mutant_for(content)
        return out
    calls = message.get("tool_calls")
    if calls and isinstance(calls[0], dict):
        out = dict(message)
        out["tool_calls"] = copy.deepcopy(calls)
        target = out["tool_calls"][0].get("function", out["tool_calls"][0])
        if isinstance(target, dict) and isinstance(target.get("name"), str):
            target["name"] = _mutant_for(target["name"] or "x")
            return out
    return None


def _mutant_for(text: str) -> str:
    return next(c for c in _MUTANTS if c not in (text[:1], text[-1:])) * 3


def _lcp(a: str, b: str) -> int:
    """Length of the common prefix (binary search over C-level slice comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _lcs(a: str, b: str) -> int:
    """Length of the common suffix."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _diff(a: str, b: str) -> tuple[int, int]:
    """The region ``[start, end)`` of ``a`` that differs from ``b`` (common prefix and suffix removed)."""
    start = _lcp(a, b)
    return start, len(a) - _lcs(a[start:], b[start:])


def _rstrip_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _tail(shorter: str, longer: str) -> str:
    n = _lcp(shorter, longer)
    return f"{shorter[n:n + 30]!r} becomes {longer[n:n + 30]!r}"


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
