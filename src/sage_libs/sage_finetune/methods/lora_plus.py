"""LoRA+ (Hayou et al. 2024): the B matrices learn ``lora_lr_ratio`` times faster than the A matrices.

One semantics, PEFT's (``peft.optimizers.create_loraplus_optimizer``, which follows the LoRA+ authors'
reference code): lora_A and other matrices at ``lr``; lora_B **and every other 1-d trained parameter
(biases, norms, DoRA magnitudes)** at ``lr * ratio``, 1-d ones without weight decay; LoRA'd embedding
layers at ``lr_embedding``. The trainer (``lora_plus``) and the SAGE strategy (``lora_plus``) both use
:func:`lora_plus_parameter_groups`; we call PEFT's grouping rather than re-implementing it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["lora_plus_parameter_groups", "create_lora_plus_optimizer"]


class _GroupsOnly:
    """Stands in for an optimizer class: receives PEFT's parameter groups and keeps them."""

    __name__ = "_GroupsOnly"

    def __init__(self, groups: list[dict[str, Any]], **_: Any) -> None:
        self.param_groups = groups


def lora_plus_parameter_groups(model: Any, *, lr: float, lr_ratio: float, weight_decay: float = 0.0,
                               lr_embedding: float | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups (``params``, ``lr``, ``weight_decay``), empty groups dropped."""
    from peft.optimizers import create_loraplus_optimizer

    kwargs: dict[str, Any] = {"loraplus_weight_decay": weight_decay}
    if lr_embedding is not None:
        kwargs["loraplus_lr_embedding"] = lr_embedding
    groups = create_loraplus_optimizer(model, _GroupsOnly, lr=lr, loraplus_lr_ratio=lr_ratio, **kwargs).param_groups
    return [g for g in groups if g["params"]]


def create_lora_plus_optimizer(model: Any, optimizer_cls: type, optimizer_kwargs: dict[str, Any], *, lr: float,
                               lr_ratio: float, weight_decay: float = 0.0, lr_embedding: float | None = None) -> Any:
    """``optimizer_cls`` (with ``optimizer_kwargs``: betas, eps, ...) over :func:`lora_plus_parameter_groups`."""
    from peft.optimizers import create_loraplus_optimizer

    kwargs = {k: v for k, v in optimizer_kwargs.items() if k != "lr"}
    if lr_embedding is not None:
        kwargs["loraplus_lr_embedding"] = lr_embedding
    # PEFT's function also registers 32-bit state for embeddings under bitsandbytes' 8-bit optimizers
    return create_loraplus_optimizer(model, optimizer_cls, lr=lr, loraplus_lr_ratio=lr_ratio,
                                     loraplus_weight_decay=weight_decay, **kwargs)
