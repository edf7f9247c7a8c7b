"""``dora``: weight-decomposed LoRA (Liu et al. 2024): a trained magnitude per output feature plus a
LoRA update of the direction. It is LoRA with ``use_dora=True``; everything else is inherited."""

from __future__ import annotations

from typing import Any

from .lora import LoRATrainer

__all__ = ["DoRATrainer"]


class DoRATrainer(LoRATrainer):
    """LoRA with ``lora_config.use_dora`` forced on (so run_config.yaml records it too)."""

    method = "dora"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lora_config = self.lora_config.replace(use_dora=True)
