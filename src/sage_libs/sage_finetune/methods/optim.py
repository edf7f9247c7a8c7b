"""Which parameters train and how the optimizer groups them, for methods without their own rule."""

from __future__ import annotations

from typing import Any

__all__ = ["unfreeze_all", "trainable_named_parameters", "decay_parameter_names", "decay_parameter_groups"]


def unfreeze_all(model: Any) -> Any:
    """Full fine-tuning: every parameter trains."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_named_parameters(model: Any) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def decay_parameter_names(model: Any) -> list[str]:
    """The parameters that get weight decay: the HF Trainer's rule (no biases, no norm weights) minus
    DoRA magnitude vectors. A magnitude is the column norm of the adapted weight, initialised to the
    base weight's norm; decaying it pulls the layer towards zero output, not towards the base model
    as decay on lora_A/lora_B does. The trainers (``SFTTrainerCore.get_decay_parameter_names``) and
    the SAGE strategies both ask this function, so both optimizers agree."""
    from transformers import Trainer

    # an instance method that reads nothing from the instance: called unbound so that the rule stays
    # exactly the HF Trainer's as transformers changes it
    return [n for n in Trainer.get_decay_parameter_names(None, model) if "lora_magnitude_vector" not in n]


def decay_parameter_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups, as the HF Trainer forms them from :func:`decay_parameter_names`: weight decay for
    the trained matrices, none for biases, norm weights and DoRA magnitudes."""
    decay = set(decay_parameter_names(model))
    named = trainable_named_parameters(model)
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
