"""Batches of tokenized preference data (:mod:`.preference`): pairs for DPO-style losses
(:class:`PreferenceCollator`: chosen and rejected sequences in one forward) and unpaired examples for
KTO (:class:`UnpairedPreferenceCollator`: completions plus the mismatched prompt/completion
sequences of its KL estimate), padded or padding-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .render import IGNORE_INDEX

__all__ = ["PreferenceCollator", "UnpairedPreferenceCollator", "kl_partners", "prompt_and_completion"]


@dataclass
class PreferenceCollator:
    """A batch of pairs -> one forward's worth of sequences: the chosen sides of every pair, then
    the rejected sides (sequence ``k`` is pair ``k``'s chosen, ``B + k`` its rejected).

    Padded (default): rows right-padded, ``attention_mask``. ``flatten=True`` (padding-free): all
    sequences in one row with per-sequence ``position_ids`` and no ``attention_mask`` (the trainer's
    per-document attention keeps them apart). Both carry ``labels`` (-100 where not scored) and
    ``sequence_ids`` (which sequence each token belongs to, -1 on padding), and, when the examples
    have them, the precomputed ``ref_chosen_logps`` / ``ref_rejected_logps``."""

    pad_token_id: int
    flatten: bool = False
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        self.emits_position_ids = self.flatten  # tells the trainer core to use per-document attention

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        seqs = [(list(ex["chosen_input_ids"]), list(ex["chosen_labels"])) for ex in examples] + \
               [(list(ex["rejected_input_ids"]), list(ex["rejected_labels"])) for ex in examples]
        out = self._collate(seqs)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                out[key] = torch.tensor([float(ex[key]) for ex in examples], dtype=torch.float32)
        return out

    def _collate(self, seqs: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
        """``(ids, labels)`` sequences -> one batch (sequence ``k`` is ``seqs[k]``)."""
        import torch

        if self.flatten:
            ids = [t for s, _ in seqs for t in s]
            labels = [t for _, lab in seqs for t in lab]
            positions = [p for s, _ in seqs for p in range(len(s))]
            owner = [k for k, (s, _) in enumerate(seqs) for _ in s]
            pad = self._pad(len(ids)) - len(ids)
            out = {"input_ids": torch.tensor([ids + [self.pad_token_id] * pad]),
                   "labels": torch.tensor([labels + [IGNORE_INDEX] * pad]),
                   "position_ids": torch.tensor([positions + list(range(pad))]),
                   "sequence_ids": torch.tensor([owner + [-1] * pad])}
        else:
            longest = self._pad(max(len(s) for s, _ in seqs))
            n = len(seqs)
            out = {"input_ids": torch.full((n, longest), self.pad_token_id, dtype=torch.long),
                   "labels": torch.full((n, longest), IGNORE_INDEX, dtype=torch.long),
                   "attention_mask": torch.zeros((n, longest), dtype=torch.long),
                   "sequence_ids": torch.full((n, longest), -1, dtype=torch.long)}
            for row, (s, lab) in enumerate(seqs):
                out["input_ids"][row, :len(s)] = torch.tensor(s)
                out["labels"][row, :len(s)] = torch.tensor(lab)
                out["attention_mask"][row, :len(s)] = 1
                out["sequence_ids"][row, :len(s)] = row
        return out

    def _pad(self, length: int) -> int:
        m = self.pad_to_multiple_of
        return -(-length // m) * m if m else length


def kl_partners(n: int) -> list[int]:
    """KTO's KL estimate scores example ``i``'s prompt with the completion of example
    ``kl_partners(n)[i]`` of the same batch: the completions rotated by one, ``(x_1, y_n), (x_2, y_1),
    ..., (x_n, y_{n-1})``, as TRL's KTOTrainer pairs them (so the mismatched completions are the
    batch's own)."""
    return [(i - 1) % n for i in range(n)]


def prompt_and_completion(ids: list[int], labels: list[int]) -> tuple[list[int], list[int], list[int]]:
    """A tokenized unpaired example -> prompt ids, completion ids, completion labels (the completion
    starts at the first scored token)."""
    start = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    return ids[:start], ids[start:], labels[start:]


@dataclass
class UnpairedPreferenceCollator(PreferenceCollator):
    """A batch of unpaired examples (KTO) -> the examples' sequences in the layout of
    :class:`PreferenceCollator` (sequence ``k`` is example ``k``), ``kto_label`` (True: desirable),
    and the same keys prefixed ``kl_`` for the mismatched sequences of the KL estimate (sequence
    ``k``: example ``k``'s prompt + the completion of example :func:`kl_partners` ``[k]``; scored on
    that completion, cut to ``max_length``)."""

    max_length: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        seqs = [(list(ex["completion_input_ids"]), list(ex["completion_labels"])) for ex in examples]
        parts = [prompt_and_completion(ids, labels) for ids, labels in seqs]
        cut = self.max_length
        mismatched = [((parts[i][0] + parts[j][1])[:cut], ([IGNORE_INDEX] * len(parts[i][0]) + parts[j][2])[:cut])
                      for i, j in enumerate(kl_partners(len(examples)))]
        out = self._collate(seqs)
        out.update({f"kl_{key}": value for key, value in self._collate(mismatched).items()})
        out["kto_label"] = torch.tensor([bool(ex["label"]) for ex in examples])
        return out
