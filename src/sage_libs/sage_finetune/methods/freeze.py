"""Freeze tuning: only the last N decoder layers train (in full), optionally with the input
embeddings and the output head."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["decoder_layers", "apply_freeze"]


def decoder_layers(model: Any) -> Any:
    """The decoder's list of layers, found generically: the ``nn.ModuleList`` holding
    ``num_hidden_layers`` modules (``model.model.layers`` for Llama/Qwen/Mistral, ``transformer.h``
    for GPT-2, ...); the outermost such list if there are several."""
    import torch

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(config, "num_hidden_layers", None)
    inner = getattr(getattr(model, "model", None), "layers", None)
    if isinstance(inner, torch.nn.ModuleList) and len(inner) == n:
        return inner
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ConfigError(f"freeze: cannot find the decoder layers of {type(model).__name__} (no list of "
                      f"num_hidden_layers={n} modules); use method full or lora for this model")


def apply_freeze(model: Any, freeze_config: Any) -> Any:
    """Freeze everything but the layers ``freeze_config`` (:class:`..config.FreezeConfig`) names."""
    fc = freeze_config
    layers = decoder_layers(model)
    if fc.trainable_layers > len(layers):
        raise ConfigError(f"freeze.trainable_layers: {fc.trainable_layers} is more than the "
                          f"{len(layers)} decoder layers of this model")
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is not None and head.weight is embeddings.weight and fc.train_embeddings != fc.train_lm_head:
        raise ConfigError("freeze: this model ties lm_head to the input embeddings (one matrix); set "
                          "train_embeddings and train_lm_head to the same value")
    model.requires_grad_(False)
    for layer in layers[len(layers) - fc.trainable_layers:]:
        layer.requires_grad_(True)
    if fc.train_embeddings:
        embeddings.requires_grad_(True)
    if fc.train_lm_head and head is not None:
        head.requires_grad_(True)
    return model
