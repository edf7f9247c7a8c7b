"""``full``: full fine-tuning: every parameter trains, no PEFT. The base's hooks already do this
(``apply_adapter`` unfreezes everything; ``merge_and_save`` is ``save_model``); this class only
refuses a LoRA config, which would otherwise be silently ignored. DeepSpeed and FSDP come through
``training.deepspeed`` / ``training.fsdp``."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import BaseTrainer

__all__ = ["FullTrainer"]


class FullTrainer(BaseTrainer):
    """All parameters train; ``save_model`` and ``merge_and_save`` write the whole model."""

    method = "full"
    uses_lora = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.lora_config is not None:
            raise ConfigError(f"create_trainer({self.method!r}): lora_config is not used by {self.method} "
                              "fine-tuning; drop it, or use method lora, qlora, dora or lora_plus")
