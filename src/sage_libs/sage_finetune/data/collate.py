"""Batches: pad a list of tokenized examples into tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .render import IGNORE_INDEX

__all__ = ["PaddingCollator"]


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
