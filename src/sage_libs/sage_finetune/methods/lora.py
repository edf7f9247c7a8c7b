"""LoRA (and DoRA, rsLoRA, PiSSA/OLoRA initialisations) through PEFT."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["linear_module_names", "check_target_modules", "check_modules_to_save", "peft_lora_config",
           "apply_lora", "save_lora_adapter"]


def linear_module_names(model: Any) -> list[str]:
    """The distinct last-name parts of the model's linear layers (what target_modules matches),
    excluding the output head."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            leaf = name.rsplit(".", 1)[-1]
            if leaf != "lm_head":
                names.add(leaf)
    return sorted(names)


def check_target_modules(model: Any, target_modules: Any) -> None:
    """Fail before training when a target module name matches nothing in the model."""
    if target_modules == "all-linear" or not isinstance(target_modules, list):
        return
    module_names = [name for name, _ in model.named_modules()]
    for target in target_modules:
        if not any(n == target or n.endswith("." + target) for n in module_names):
            raise ConfigError(
                f"lora.target_modules: {target!r} matches no module of this model; its linear layers are "
                f"{', '.join(linear_module_names(model))} (or use 'all-linear')")


def check_modules_to_save(model: Any, modules_to_save: list[str] | None) -> None:
    """Fail before training when a ``modules_to_save`` name matches nothing (PEFT ignores it silently)."""
    module_names = [name for name, _ in model.named_modules()]
    for target in modules_to_save or []:
        if not any(n == target or n.endswith("." + target) for n in module_names):
            raise ConfigError(f"lora.modules_to_save: {target!r} matches no module of this model "
                              "(e.g. lm_head or embed_tokens)")


def peft_lora_config(lc: Any) -> Any:
    """Our :class:`LoRAConfig` as a ``peft.LoraConfig``."""
    from peft import LoraConfig

    return LoraConfig(
        r=lc.r, lora_alpha=lc.lora_alpha, target_modules=lc.resolved_target_modules,
        lora_dropout=lc.lora_dropout, bias=lc.bias, task_type=lc.task_type, use_rslora=lc.use_rslora,
        use_dora=lc.use_dora, init_lora_weights=lc.init_lora_weights, modules_to_save=lc.modules_to_save,
        layers_to_transform=lc.layers_to_transform)


def apply_lora(model: Any, lora_config: Any) -> tuple[Any, Any]:
    """Wrap ``model`` in a PEFT LoRA model after checking that every target and ``modules_to_save``
    name matches a module (PEFT would ignore a miss silently). Returns the PEFT model and, for
    PiSSA/OLoRA, a temporary folder holding the adapter as initialised (else None): those
    initialisations subtract their initial adapter from the base weights, and PEFT needs it to save an
    adapter that loads onto the ORIGINAL base (as a plain LoRA of rank 2r). Keep the folder object
    alive as long as the model."""
    from peft import get_peft_model

    check_target_modules(model, lora_config.resolved_target_modules)
    check_modules_to_save(model, lora_config.modules_to_save)
    model = get_peft_model(model, peft_lora_config(lora_config))
    initial = None
    if lora_config.mutates_base:
        initial = tempfile.TemporaryDirectory(prefix="sage-ft-init-")
        model.save_pretrained(os.path.join(initial.name, "initial"), safe_serialization=True)
    return model, initial


def save_lora_adapter(model: Any, output_dir: str | os.PathLike, initial: Any = None) -> None:
    """Write the adapter in safetensors; a PiSSA/OLoRA adapter (``initial`` from :func:`apply_lora`)
    converted so that it applies to the original base."""
    import warnings

    from ..models.files import absolute_local_path, gguf_source

    bases = set()
    for config in getattr(model, "peft_config", {}).values():  # a relative base would load only from here
        config.base_model_name_or_path = absolute_local_path(config.base_model_name_or_path)
        bases.add(config.base_model_name_or_path)
    kwargs: dict[str, Any] = {}
    if initial is not None:
        kwargs["path_initial_model_for_weight_conversion"] = os.path.join(initial.name, "initial")
    gguf = next((b for b in bases if b and gguf_source(b) is not None), None)
    with warnings.catch_warnings():
        if gguf is not None:
            # PEFT tells a resized vocabulary by the base's config.json, which a GGUF file keeps in its
            # conversion: compared there, and PEFT's "could not find a config file" is not the user's concern
            warnings.filterwarnings("ignore", message="Could not find a config file in", category=UserWarning)
            if _vocabulary_resized(model, gguf):
                kwargs["save_embedding_layers"] = True
        model.save_pretrained(str(output_dir), safe_serialization=True, **kwargs)


def _vocabulary_resized(model: Any, gguf: str) -> bool:
    import json

    from ..models.files import resolve_model

    config = json.loads((Path(resolve_model(gguf, weights=False)) / "config.json").read_text(encoding="utf-8"))
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    return bool(vocab_size and config.get("vocab_size") and vocab_size != config["vocab_size"])
