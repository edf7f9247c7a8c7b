"""Which parameters train and how the optimizer groups them, for methods without their own rule."""

from __future__ import annotations

from typing import Any

__all__ = ["unfreeze_all", "trainable_named_parameters", "decay_parameter_groups"]


def unfreeze_all(model: Any) -> Any:
    """Full fine-tuning: every parameter trains."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_named_parameters(model: Any) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def decay_parameter_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups, as the HF Trainer forms them (its own ``get_decay_parameter_names``): weight decay
    for the trained matrices, none for biases and norm weights."""
    from transformers import Trainer

    # an instance method that reads nothing from the instance: called unbound so that the rule stays
    # exactly the HF Trainer's as transformers changes it
    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = trainable_named_parameters(model)
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
