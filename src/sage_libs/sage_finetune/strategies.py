"""Training strategies: how a model becomes trainable, usable on a model you already hold.

SAGE components (and anyone not using our trainers) call::

    strategy = create_strategy("dora", r=16, target_modules="all-linear")
    model = strategy.prepare_model(model)
    optimizer = torch.optim.AdamW(strategy.get_optimizer_grouped_parameters(model, weight_decay=0.01))
    ...
    merged = strategy.merge_and_unload(model)

Every rule comes from :mod:`.methods`, the same code the trainers call: which modules LoRA targets
(and the checks of target_modules / modules_to_save), LoRA+'s parameter groups, freeze selection,
and the HF Trainer's weight-decay groups.
"""

from __future__ import annotations

from typing import Any, Iterator

from .config import LoRAConfig
from .interface import TrainingStrategy

__all__ = ["LoRAStrategy", "DoRAStrategy", "RSLoRAStrategy", "PiSSAStrategy", "LoRAPlusStrategy", "FullStrategy"]

class LoRAStrategy(TrainingStrategy):
    """LoRA adapters through PEFT. Keyword arguments are :class:`LoRAConfig` fields; a config
    passed to :meth:`prepare_model` (ours, SAGE's or a dict) replaces them."""

    overrides: dict[str, Any] = {}

    def __init__(self, **lora_options: Any) -> None:
        self.lora_config = LoRAConfig(**{**lora_options, **self.overrides})
        # PiSSA/OLoRA: the adapter as initialised (methods.lora.apply_lora); pass it to
        # methods.lora.save_lora_adapter to save an adapter for the original base
        self.initial_adapter: Any = None

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
        from .methods.lora import apply_lora

        model, self.initial_adapter = apply_lora(model, self._config(config))
        return model

    def get_trainable_parameters(self, model: Any) -> Iterator[Any]:
        return (p for p in model.parameters() if p.requires_grad)

    def get_optimizer_grouped_parameters(self, model: Any, weight_decay: float = 0.01) -> list[dict[str, Any]]:
        from .methods.optim import decay_parameter_groups

        return decay_parameter_groups(model, weight_decay)

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
    """LoRA+: the ``lora_plus`` trainer's parameter groups (:mod:`.methods.lora_plus`): lora_B and 1-d
    adapter weights at ``lora_lr_ratio`` x ``learning_rate``, LoRA'd embeddings at ``lora_lr_embedding``."""

    def __init__(self, learning_rate: float = 2e-4, lora_lr_ratio: float = 16.0,
                 lora_lr_embedding: float | None = None, **lora_options: Any) -> None:
        super().__init__(**lora_options)
        self.learning_rate, self.lora_lr_ratio = learning_rate, lora_lr_ratio
        self.lora_lr_embedding = lora_lr_embedding

    @property
    def name(self) -> str:
        return "lora_plus"

    def get_optimizer_grouped_parameters(self, model: Any, weight_decay: float = 0.01) -> list[dict[str, Any]]:
        from .methods.lora_plus import lora_plus_parameter_groups

        return lora_plus_parameter_groups(model, lr=self.learning_rate, lr_ratio=self.lora_lr_ratio,
                                          weight_decay=weight_decay, lr_embedding=self.lora_lr_embedding)


class FullStrategy(TrainingStrategy):
    """Every parameter trains; nothing to merge."""

    @property
    def name(self) -> str:
        return "full"

    def prepare_model(self, model: Any, config: Any = None) -> Any:
        from .methods.optim import unfreeze_all

        return unfreeze_all(model)

    def get_trainable_parameters(self, model: Any) -> Iterator[Any]:
        return (p for p in model.parameters() if p.requires_grad)

    def get_optimizer_grouped_parameters(self, model: Any, weight_decay: float = 0.01) -> list[dict[str, Any]]:
        from .methods.optim import decay_parameter_groups

        return decay_parameter_groups(model, weight_decay)
