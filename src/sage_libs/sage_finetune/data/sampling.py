"""Which samples make up each global batch, independent of how the batch is split.

A run with N processes and gradient accumulation G trains on global batches of
``per_device_train_batch_size x N x G`` samples; accelerate hands process ``r`` every N-th micro-batch
of one index stream. So an N-process run equals a 1-process run with N x G accumulation exactly when
the index stream is the same, which needs:

* the order to be drawn from ``(seed, epoch)`` alone, never from the global RNG state (which model
  initialisation and dropout have moved by different amounts in different set-ups), and
* length grouping to work on whole *global* batches: the HF Trainer groups by
  ``per_device x accumulation`` (it leaves out the process count), so 2 processes x 1 and
  1 process x 2 grouped differently and trained on different samples per step.
"""

from __future__ import annotations

from typing import Any, Iterator

from torch.utils.data import Sampler

__all__ = ["GlobalLengthGroupedSampler", "global_batch_size"]


class GlobalLengthGroupedSampler(Sampler[int]):
    """Indices in length-grouped global batches (transformers' ``get_length_grouped_indices`` with the
    global batch size), shuffled by a generator seeded with ``seed + epoch``. Every process draws the
    same stream; accelerate shards it into micro-batches."""

    def __init__(self, lengths: list[int], global_batch_size: int, seed: int) -> None:
        self.lengths = [int(n) for n in lengths]
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's data loader at the start of every epoch (also when a resumed run
        fast-forwards to its epoch), so epoch e has the same order in every run."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.global_batch_size, generator=generator))


def global_batch_size(args: Any) -> int:
    """Samples per optimizer step over all processes (HF TrainingArguments)."""
    return int(args.per_device_train_batch_size) * max(1, int(args.world_size)) * int(args.gradient_accumulation_steps)
