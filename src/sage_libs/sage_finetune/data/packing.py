"""Packing: several tokenized samples per row, kept apart by per-document ``position_ids``.

Rows are filled best-fit-decreasing (fewest rows, least padding). Each document's positions
restart at 0; with no ``attention_mask`` and the KV cache off, transformers turns those restarts
into a block-diagonal causal mask for the sdpa and eager kernels, so no token attends across a
document boundary (``tests/test_packing.py`` checks packed logits equal per-sample logits).

The first token of every document is never trained (its label is -100): nothing before it in the
same document predicts it. :mod:`.render` applies the same rule to unpacked samples, so the loss
sums the same tokens, normalised by the same count, packed or not.
"""

from __future__ import annotations

import bisect

from .conversation import IGNORE_INDEX

__all__ = ["best_fit_decreasing", "pack_columns", "packing_efficiency"]


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group indices of ``lengths`` into bins whose total length is at most ``capacity``.

    Longest first; each item goes into the fullest bin it still fits in (a new bin if none).
    Deterministic: ties keep the original order. O(n log n) lookups.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin index), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item {i} has length {n} > capacity {capacity}; truncate first")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            remaining, b = free.pop(k)
        else:
            remaining, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        remaining -= n
        if remaining > 0:
            bisect.insort(free, (remaining, b))
    return bins


def pack_columns(columns: dict[str, list], capacity: int) -> dict[str, list]:
    """Tokenized columns (``input_ids``, ``labels``) -> packed rows with ``position_ids``,
    and ``length`` (tokens in the row); a row's documents start where its position is 0."""
    ids, labels = columns["input_ids"], columns["labels"]
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for members in best_fit_decreasing([len(x) for x in ids], capacity):
        row_ids: list[int] = []
        row_labels: list[int] = []
        row_pos: list[int] = []
        for i in members:
            row_ids.extend(ids[i])
            doc_labels = list(labels[i])
            doc_labels[0] = IGNORE_INDEX
            row_labels.extend(doc_labels)
            row_pos.extend(range(len(ids[i])))
        out["input_ids"].append(row_ids)
        out["labels"].append(row_labels)
        out["position_ids"].append(row_pos)
        out["length"].append(len(row_ids))
    return out


def packing_efficiency(row_lengths: list[int], capacity: int) -> float:
    """Share of the rows' capacity filled with real tokens (1.0 = no padding)."""
    return sum(row_lengths) / (len(row_lengths) * capacity) if row_lengths else 0.0

