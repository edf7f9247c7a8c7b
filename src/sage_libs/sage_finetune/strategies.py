"""Training strategies: how a model becomes trainable, usable on a model you already hold.

SAGE components (and anyone not using our trainers) call::

    strategy = create_strategy("dora", r=16, target_modules="all-linear")
    model = strategy.prepare_model(model)
    optimizer = torch.optim.AdamW(strategy.get_optimizer_grouped_parameters(model, weight_decay=0.01))
    ...
    merged = strategy.merge_and_unload(model)

The trainers use the same PEFT configuration code (:func:`trainers.lora.peft_lora_config`).
"""

from __future__ import annotations

from typing import Any, Iterator

from .config import LoRAConfig
from .interface import TrainingStrategy

__all__ = ["LoRAStrategy", "DoRAStrategy", "RSLoRAStrategy", "PiSSAStrategy", "LoRAPlusStrategy", "FullStrategy"]

_NO_DECAY = ("bias", "norm", "lora_magnitude_vector")


def _decay_groups(named: list[tuple[str, Any]], weight_decay: float, lr: float | None = None) -> list[dict[str, Any]]:
    """Weight decay for matrices, none for biases, norms and DoRA magnitudes (as the HF Trainer does)."""
    decay = [p for n, p in named if not any(k in n.lower() for k in _NO_DECAY)]
    rest = [p for n, p in named if any(k in n.lower() for k in _NO_DECAY)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if lr is not None:
        for g in groups:
            g["lr"] = lr
    return [g for g in groups if g["params"]]


class LoRAStrategy(TrainingStrategy):
    """LoRA adapters through PEFT. Keyword arguments are :class:`LoRAConfig` fields; a config
    passed to :meth:`prepare_model` (ours, SAGE's or a dict) replaces them."""

    overrides: dict[str, Any] = {}

    def __init__(self, **lora_options: Any) -> None:
        self.lora_config = LoRAConfig(**{**lora_options, **self.overrides})

    @property
    def name(self) -> str:
        return "lora"

    def _config(self, config: Any) -> LoRAConfig:
        if config is None:
            return self.lora_config
        from .config import coerce_config

        lc = coerce_config(LoRAConfig, config, "lora_config")
        return lc.replace(**self.overrides) if self.overrides else lc

    def prepare_model(self, model: Any, config: Any = None) -> Any:
        from peft import get_peft_model

        from .trainers.lora import check_target_modules, peft_lora_config

        lc = self._config(config)
        check_target_modules(model, lc.resolved_target_modules)
        return get_peft_model(model, peft_lora_config(lc))

    def get_trainable_parameters(self, model: Any) -> Iterator[Any]:
        return (p for p in model.parameters() if p.requires_grad)

    def get_optimizer_grouped_parameters(self, model: Any, weight_decay: float = 0.01) -> list[dict[str, Any]]:
        return _decay_groups([(n, p) for n, p in model.named_parameters() if p.requires_grad], weight_decay)

    def merge_and_unload(self, model: Any) -> Any:
        return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


class DoRAStrategy(LoRAStrategy):
    overrides = {"use_dora": True}

    @property
    def name(self) -> str:
        return "dora"


class RSLoRAStrategy(LoRAStrategy):
    overrides = {"use_rslora": True}

    @property
    def name(self) -> str:
        return "rslora"


class PiSSAStrategy(LoRAStrategy):
    """PiSSA initialisation. It rewrites the base weights: merge, or save the adapter with
    ``path_initial_model_for_weight_conversion`` (our trainers do), before reusing the base."""

    overrides = {"init_lora_weights": "pissa"}

    @property
    def name(self) -> str:
        return "pissa"


class LoRAPlusStrategy(LoRAStrategy):
    """LoRA+: parameter groups give B matrices ``lora_lr_ratio`` x ``learning_rate``."""

    def __init__(self, learning_rate: float = 2e-4, lora_lr_ratio: float = 16.0, **lora_options: Any) -> None:
        super().__init__(**lora_options)
        self.learning_rate, self.lora_lr_ratio = learning_rate, lora_lr_ratio

    @property
    def name(self) -> str:
        return "lora_plus"

    def get_optimizer_grouped_parameters(self, model: Any, weight_decay: float = 0.01) -> list[dict[str, Any]]:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        b = [(n, p) for n, p in named if "lora_B" in n]
        other = [(n, p) for n, p in named if "lora_B" not in n]
        return (_decay_groups(other, weight_decay, self.learning_rate)
                + _decay_groups(b, weight_decay, self.learning_rate * self.lora_lr_ratio))


class FullStrategy(TrainingStrategy):
    """Every parameter trains; nothing to merge."""

    @property
    def name(self) -> str:
        return "full"

    def prepare_model(self, model: Any, config: Any = None) -> Any:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def get_trainable_parameters(self, model: Any) -> Iterator[Any]:
        return (p for p in model.parameters() if p.requires_grad)

    def get_optimizer_grouped_parameters(self, model: Any, weight_decay: float = 0.01) -> list[dict[str, Any]]:
        return _decay_groups([(n, p) for n, p in model.named_parameters() if p.requires_grad], weight_decay)
