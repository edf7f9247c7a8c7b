"""LoRA+ (Hayou et al. 2024): the B matrices learn ``lora_lr_ratio`` times faster than the A matrices.

One semantics, PEFT's (``peft.optimizers.create_loraplus_optimizer``, which follows the LoRA+ authors'
reference code): lora_A and other matrices at ``lr``; lora_B **and every other 1-d trained parameter
(biases, norms, DoRA magnitudes)** at ``lr * ratio``; LoRA'd embedding layers at ``lr_embedding``. We
call PEFT's grouping rather than re-implementing it. Weight decay follows the project's one rule
(:func:`.optim.decay_parameter_names`, as for every method): PEFT would decay DoRA magnitudes, which
that rule leaves alone, so they move to a copy of their group without decay. The trainer
(``lora_plus``) and the SAGE strategy (``lora_plus``) both build their groups here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["lora_plus_parameter_groups", "create_lora_plus_optimizer"]


class _GroupsOnly:
    """Stands in for an optimizer class: receives PEFT's parameter groups and keeps them."""

    __name__ = "_GroupsOnly"

    def __init__(self, groups: list[dict[str, Any]], **_: Any) -> None:
        self.param_groups = groups


def _with_the_decay_rule(model: Any, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PEFT's groups with every parameter outside :func:`.optim.decay_parameter_names` (DoRA
    magnitudes) moved to a copy of its group with ``weight_decay`` 0."""
    from .optim import decay_parameter_names

    names = set(decay_parameter_names(model))  # once: it walks every module of the model
    decay = {id(p) for n, p in model.named_parameters() if n in names}
    out = []
    for group in groups:
        kept = [p for p in group["params"] if not group.get("weight_decay") or id(p) in decay]
        moved = [p for p in group["params"] if group.get("weight_decay") and id(p) not in decay]
        out.append({**group, "params": kept})
        if moved:
            out.append({**group, "params": moved, "weight_decay": 0.0})
    return out


def lora_plus_parameter_groups(model: Any, *, lr: float, lr_ratio: float, weight_decay: float = 0.0,
                               lr_embedding: float | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups (``params``, ``lr``, ``weight_decay``), empty groups dropped."""
    from peft.optimizers import create_loraplus_optimizer

    kwargs: dict[str, Any] = {"loraplus_weight_decay": weight_decay}
    if lr_embedding is not None:
        kwargs["loraplus_lr_embedding"] = lr_embedding
    groups = create_loraplus_optimizer(model, _GroupsOnly, lr=lr, loraplus_lr_ratio=lr_ratio, **kwargs).param_groups
    return [g for g in _with_the_decay_rule(model, groups) if g["params"]]


def create_lora_plus_optimizer(model: Any, optimizer_cls: type, optimizer_kwargs: dict[str, Any], *, lr: float,
                               lr_ratio: float, weight_decay: float = 0.0, lr_embedding: float | None = None) -> Any:
    """``optimizer_cls`` (with ``optimizer_kwargs``: betas, eps, ...) over :func:`lora_plus_parameter_groups`."""
    from peft.optimizers import create_loraplus_optimizer

    kwargs = {k: v for k, v in optimizer_kwargs.items() if k != "lr"}
    if lr_embedding is not None:
        kwargs["loraplus_lr_embedding"] = lr_embedding
    def with_the_decay_rule(groups: list[dict[str, Any]], **optimizer_kwargs: Any) -> Any:
        return optimizer_cls(_with_the_decay_rule(model, groups), **optimizer_kwargs)

    # PEFT's function also registers 32-bit state for embeddings under bitsandbytes' 8-bit optimizers,
    # which it recognises by the class name
    with_the_decay_rule.__name__ = optimizer_cls.__name__
    return create_loraplus_optimizer(model, with_the_decay_rule, lr=lr, loraplus_lr_ratio=lr_ratio,
                                     loraplus_weight_decay=weight_decay, **kwargs)
