"""``lora_plus``: LoRA+ (Hayou et al. 2024): the B matrices get a learning rate ``lora_lr_ratio``
times that of the A matrices. Only the optimizer changes (``peft.optimizers.create_loraplus_optimizer``);
the HF Trainer still builds the learning-rate schedule, which scales every group alike."""

from __future__ import annotations

from typing import Any

from ..config import LoRAPlusConfig
from .lora import LoRATrainer

__all__ = ["LoRAPlusTrainer"]


class LoRAPlusTrainer(LoRATrainer):
    """LoRA with per-matrix learning rates.

    Args:
        lora_plus_config: :class:`LoRAPlusConfig` or a dict such as ``{"lora_lr_ratio": 16.0}``.
    """

    method = "lora_plus"
    extra_section = "lora_plus"
    lora_plus_config: LoRAPlusConfig

    def create_optimizer(self, model: Any) -> Any:
        """The optimizer named by ``training.optim`` (with its betas/eps), in LoRA+ parameter groups
        (:mod:`..methods.lora_plus`: lora_A at ``learning_rate``; lora_B and 1-d adapter weights at
        ``learning_rate * lora_lr_ratio``)."""
        from ..methods.lora_plus import create_lora_plus_optimizer
        from .hf_args import optimizer_class_and_kwargs

        tc, lp = self.training_config, self.lora_plus_config
        optimizer_cls, kwargs = optimizer_class_and_kwargs(tc, model)
        return create_lora_plus_optimizer(model, optimizer_cls, kwargs, lr=tc.learning_rate, lr_ratio=lp.lora_lr_ratio,
                                          weight_decay=tc.weight_decay, lr_embedding=lp.lora_lr_embedding)
