"""``freeze``: freeze tuning: only the last N decoder layers train (in full), optionally with the
input embeddings and the output head. Cheaper than full fine-tuning, no adapter to merge."""

from __future__ import annotations

from typing import Any

from ..config import FreezeConfig
from .full import FullTrainer

__all__ = ["FreezeTrainer"]


class FreezeTrainer(FullTrainer):
    """Trains the last ``freeze_config.trainable_layers`` decoder layers.

    Args:
        freeze_config: :class:`FreezeConfig` or a dict such as ``{"trainable_layers": 2,
            "train_embeddings": False, "train_lm_head": False}``.
    """

    method = "freeze"
    extra_section = "freeze"
    freeze_config: FreezeConfig

    def apply_adapter(self, model: Any) -> Any:
        from ..methods.freeze import apply_freeze

        return apply_freeze(model, self.freeze_config)
