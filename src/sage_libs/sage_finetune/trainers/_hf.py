"""Our subclass of the HF Trainer: the training loop stays theirs; we only observe it."""

from __future__ import annotations

from typing import Any

from transformers import Trainer

__all__ = ["SFTTrainerCore"]


class SFTTrainerCore(Trainer):
    """``transformers.Trainer`` that reports each micro-batch loss to its owner (so user callbacks
    receive ``on_step_end(trainer, step, loss)``)."""

    def __init__(self, *args: Any, owner: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.owner.callbacks:  # a .item() per micro-batch syncs the device: only when someone listens
            scale = self.args.gradient_accumulation_steps if num_items_in_batch is None else 1
            self.owner._step_losses.append(float(loss.detach()) * scale)
        return loss
