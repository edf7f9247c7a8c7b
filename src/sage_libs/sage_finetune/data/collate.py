"""Batches: pad a list of tokenized examples into tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .conversation import IGNORE_INDEX

__all__ = ["PaddingCollator", "PackedCollator"]


@dataclass
class PaddingCollator:
    """Right-pads ``input_ids`` with ``pad_token_id`` and ``labels`` with -100 to the longest
    example of the batch (rounded up to ``pad_to_multiple_of``), and builds ``attention_mask``."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(ex["input_ids"]) for ex in examples)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(examples)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, longest), dtype=torch.long)
        for row, ex in enumerate(examples):
            length = len(ex["input_ids"])
            input_ids[row, :length] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
            labels[row, :length] = torch.as_tensor(ex["labels"], dtype=torch.long)
            attention_mask[row, :length] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


@dataclass
class PackedCollator:
    """Batches of packed rows: ``input_ids``, ``labels`` and per-document ``position_ids``, and
    deliberately no ``attention_mask`` (its absence is what makes transformers derive the
    block-diagonal mask from the position restarts).

    Rows are right-padded to the longest; the padding tail gets positions 0, 1, ... of its own, so
    it forms a separate "document" that no real token can see (attention is causal and the tail
    comes last). With ``flatten=True`` the whole batch becomes one row (padding-free).
    """

    pad_token_id: int
    flatten: bool = False
    pad_to_multiple_of: int | None = None

    emits_position_ids = True  # (not a field) tells the trainer to use per-document attention

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [(list(ex["input_ids"]), list(ex["labels"]), _positions(ex)) for ex in examples]
        if self.flatten:
            rows = [tuple([x for r in rows for x in r[k]] for k in range(3))]
        longest = max(len(r[0]) for r in rows)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids, labels, position_ids = [], [], []
        for ids, labs, pos in rows:
            pad = longest - len(ids)
            input_ids.append(ids + [self.pad_token_id] * pad)
            labels.append(labs + [IGNORE_INDEX] * pad)
            position_ids.append(pos + list(range(pad)))
        return {"input_ids": torch.tensor(input_ids, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long),
                "position_ids": torch.tensor(position_ids, dtype=torch.long)}


def _positions(example: dict[str, Any]) -> list[int]:
    if "position_ids" in example:
        return list(example["position_ids"])
    return list(range(len(example["input_ids"])))
