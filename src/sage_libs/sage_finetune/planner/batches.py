"""Token lengths of the prepared data, and the batches the collator will build from them.

The lengths come from the run's own data preparation (``trainer.prepare_dataset``: the same
rendering, truncation, packing and tokenized-data cache as training); only the tokenizer is
loaded. Per sample: its length and the positions whose next-token label is trained (where the
LM head runs with selective logits).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Iterable

from .shapes import Batch

__all__ = ["Lengths", "lengths_of", "largest_batch", "epoch_batches", "epoch_total", "truncated_at"]

IGNORE_INDEX = -100


@dataclass
class Lengths:
    """Per-sample (or, packed, per-row) token counts and trained positions."""

    lengths: list[int]
    trained: list[int]
    max_seq_length: int
    packed: bool = False
    truncated: int = 0            # samples cut to max_seq_length by the preparation
    distinct_tokens: int | None = None  # token ids the data uses (rows of the input embedding it reads)
    doc_lengths: list[list[int]] | None = None  # packed rows: the documents in each row; pairs: chosen, rejected
    pairs: bool = False           # preference pairs: each sample is two sequences, each cut on its own

    def cut_sample(self, i: int, cut: int) -> tuple[list[int], int]:
        """Sample ``i``'s documents and trained positions when sequences are cut to ``cut`` tokens:
        a preference pair's chosen and rejected are cut one by one (a pair holds up to ``2 x cut``
        tokens), a packed row or a plain sample as a whole."""
        if self.pairs and self.doc_lengths is not None:
            docs = [min(d, cut) for d in self.doc_lengths[i]]
            return docs, min(self.trained[i], len(docs) * max(cut - 1, 0))
        if self.packed and self.doc_lengths is not None:
            return list(self.doc_lengths[i]), min(self.trained[i], max(cut - 1, 0))
        return [min(self.lengths[i], cut)], min(self.trained[i], max(cut - 1, 0))

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def total_tokens(self) -> int:
        return sum(self.lengths)

    def percentile(self, q: float) -> int:
        if not self.lengths:
            return 0
        s = sorted(self.lengths)
        return s[min(len(s) - 1, int(math.ceil(q / 100 * len(s))) - 1)]


def _trained_counts(labels_column: Any) -> list[int]:
    """Positions whose *next* label is trained, per sample (``labels[1:] != -100``)."""
    try:
        import numpy as np
        import pyarrow as pa

        arr = labels_column
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        offsets = np.asarray(arr.offsets)
        values = np.asarray(arr.flatten()) != IGNORE_INDEX
        cs = np.concatenate([[0], np.cumsum(values)])
        starts, ends = offsets[:-1], offsets[1:]
        counts = cs[ends] - cs[np.minimum(starts + 1, ends)]
        return [int(c) for c in counts]
    except Exception:  # noqa: BLE001 - a plain list of lists
        return [sum(1 for x in labels[1:] if x != IGNORE_INDEX) for labels in labels_column]


def _distinct(*columns: Any) -> int | None:
    try:
        import numpy as np
        import pyarrow as pa

        seen = None
        for col in columns:
            arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            values = np.unique(np.asarray(arr.flatten()))
            seen = values if seen is None else np.union1d(seen, values)
        return int(len(seen)) if seen is not None else None
    except Exception:  # noqa: BLE001 - unknown: every row counts
        return None


def lengths_of(dataset: Any, max_seq_length: int, *, packed: bool = False, stats: dict | None = None) -> Lengths:
    """:class:`Lengths` of a prepared ``datasets.Dataset`` (``input_ids``, ``labels``, ``length``)."""
    table = getattr(dataset, "data", None)
    table = getattr(table, "table", table)
    if table is not None and hasattr(table, "column") and "labels" in getattr(table, "column_names", []):
        labels = table.column("labels")
        if "length" in table.column_names:
            lengths = [int(x) for x in table.column("length").to_pylist()]
        else:
            import pyarrow.compute as pc

            lengths = [int(x) for x in pc.list_value_length(table.column("input_ids")).to_pylist()]
        trained = _trained_counts(labels)
        distinct = _distinct(table.column("input_ids"))
    elif table is not None and hasattr(table, "column") and "chosen_labels" in getattr(table, "column_names", []):
        # preference pairs: chosen and rejected go through one forward, as two documents
        import pyarrow.compute as pc

        chosen = [int(x) for x in pc.list_value_length(table.column("chosen_input_ids")).to_pylist()]
        rejected = [int(x) for x in pc.list_value_length(table.column("rejected_input_ids")).to_pylist()]
        lengths = [c + r for c, r in zip(chosen, rejected)]
        trained = [c + r for c, r in zip(_trained_counts(table.column("chosen_labels")),
                                         _trained_counts(table.column("rejected_labels")))]
        return Lengths(lengths, trained, max_seq_length, truncated=int((stats or {}).get("truncated", 0)),
                       doc_lengths=[[c, r] for c, r in zip(chosen, rejected)], pairs=True,
                       distinct_tokens=_distinct(table.column("chosen_input_ids"), table.column("rejected_input_ids")))
    else:
        rows = list(dataset)
        lengths = [len(r["input_ids"]) for r in rows]
        trained = [sum(1 for x in r["labels"][1:] if x != IGNORE_INDEX) for r in rows]
        distinct = len({t for r in rows for t in r["input_ids"]})
    docs = None
    if packed and table is not None and "position_ids" in table.column_names:
        docs = []
        for pos in table.column("position_ids").to_pylist():
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            docs.append([b - a for a, b in zip(starts, starts[1:])])
    return Lengths(lengths, trained, max_seq_length, packed=packed,
                   truncated=int((stats or {}).get("truncated", 0)), doc_lengths=docs, distinct_tokens=distinct)


def largest_batch(lengths: Lengths, batch_size: int, *, padding_free: bool, max_seq_length: int | None = None) -> Batch:
    """The largest micro-batch the data can produce: the ``batch_size`` longest samples together
    (with a random order this is the worst case; ``group_by_length`` puts it first). With
    ``max_seq_length`` below the prepared one, samples are cut to it."""
    cut = max_seq_length or lengths.max_seq_length
    cache = lengths.__dict__.setdefault("_sorted", {})
    if cut not in cache:  # the suggestions evaluate many batch sizes: sort once per cut-off
        samples = [lengths.cut_sample(i, cut) for i in range(len(lengths.lengths))]
        order = sorted(range(len(samples)), key=lambda i: -sum(samples[i][0]))
        cache[cut] = (samples, order, sorted((t for _, t in samples), reverse=True))
    samples, order, trained_desc = cache[cut]
    if not samples:
        return Batch(rows=1, row_len=1, doc_lengths=[1], trained=0)
    top = order[:batch_size]
    trained = sum(trained_desc[:batch_size])
    docs = [d for i in top for d in samples[i][0]]
    if padding_free:
        return Batch(rows=1, row_len=sum(docs), doc_lengths=docs, trained=trained)
    if lengths.packed:  # a packed row is one row of its documents
        return Batch(rows=len(top), row_len=max(sum(samples[i][0]) for i in top), doc_lengths=docs, trained=trained)
    return Batch(rows=len(docs), row_len=max(docs), doc_lengths=docs, trained=trained)


def epoch_batches(lengths: Lengths, batch_size: int, *, padding_free: bool, group_by_length: bool = False,
                  seed: int = 42, max_seq_length: int | None = None, processes: int = 1) -> list[Batch]:
    """The micro-batches of one epoch of one process, in a random order like the HF sampler's (not
    the same order: the totals, which set the epoch's time, do not depend on it except for padded
    batches, where this is a representative draw)."""
    cut = max_seq_length or lengths.max_seq_length
    idx = list(range(len(lengths.lengths)))
    if group_by_length:
        idx.sort(key=lambda i: -lengths.lengths[i])
    else:
        random.Random(seed).shuffle(idx)
    per_process = idx[::max(processes, 1)] if processes > 1 else idx
    out = []
    for s in range(0, len(per_process), batch_size):
        samples = [lengths.cut_sample(i, cut) for i in per_process[s:s + batch_size]]
        docs = [d for sample_docs, _ in samples for d in sample_docs]
        ns = [sum(sample_docs) for sample_docs, _ in samples] if lengths.packed else docs
        trained = sum(t for _, t in samples)
        if padding_free:
            out.append(Batch(rows=1, row_len=sum(ns), doc_lengths=docs, trained=trained))
        else:
            out.append(Batch(rows=len(ns), row_len=max(ns), doc_lengths=docs, trained=trained))
    return out


def epoch_total(lengths: Lengths, batch_size: int, run: Any, *, group_by_length: bool = False, seed: int = 42,
                max_seq_length: int | None = None) -> tuple[Batch, int]:
    """One process's epoch as one aggregate :class:`Batch` (its tokens, attended pairs, documents
    and trained positions summed over the micro-batches) and the number of micro-batches. The
    step cost is affine in these sums, so the epoch costs ``cost(aggregate) + (n - 1) x cost(empty)``."""
    from .timing import attention_pairs

    tokens = trained = docs = 0
    pairs = 0.0
    n = 0
    for b in epoch_batches(lengths, batch_size, padding_free=run.padding_free, group_by_length=group_by_length,
                           seed=seed, max_seq_length=max_seq_length, processes=run.processes):
        n += 1
        tokens += b.tokens
        trained += b.trained
        docs += len(b.doc_lengths)
        pairs += attention_pairs(run, b.rows, b.row_len, b.doc_lengths)
    return Batch(rows=1, row_len=tokens, doc_lengths=[], trained=trained, pairs=pairs, docs=docs), n


def truncated_at(lengths: Iterable[int], cut: int) -> int:
    """Samples longer than ``cut`` tokens (cut off by ``max_seq_length=cut``)."""
    return sum(1 for n in lengths if n > cut)
