"""Compiled decoder layers (``training.compile_layers``): each repeated block of the model compiled
in place with ``torch.compile(dynamic=True)``, so that inductor fuses the work between the matmuls
(norms, RoPE, SiLU-multiply, LoRA scaling, residual adds, their backward) into a few kernels.

Why regional and in place: every decoder layer has the same code and shapes, so the layers share
one compiled graph family (compile time of one layer, not of the model), the sequence length stays
symbolic (padding-free rows change length every batch), and ``nn.Module.compile`` keeps the
module tree and its parameter names, so PEFT, saving and merging see the model they always see
(``accelerate.utils.compile_regions`` wraps blocks in new modules instead). The per-document
attention is left eager (:func:`..doc_attention.doc_attention_forward` is excluded from tracing):
its document list comes from the data, and tracing it would recompile for every new layout.

Measured on the 32M benchmark model (2 CPU cores, ``benchmarks/layer_fusion.py``): the time
outside matmuls and attention fell from ~40-45% of a step to ~27%, step time 0.75-0.85x, losses
equal to 1e-6, for ~100-220 s of compilation at the start of the run. Hence off by default: it
pays on runs of more than several minutes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["decoder_layers", "compile_decoder_layers"]


def decoder_layers(model: Any) -> list[Any]:
    """The model's repeated blocks: modules whose class the model lists in ``_no_split_modules``
    (transformers' name for its decoder layer class), outermost first."""
    from .selective_logits import base_causal_lm

    base = base_causal_lm(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers, inside = [], set()
    for name, module in base.named_modules():
        if type(module).__name__ in names and not any(name.startswith(p + ".") for p in inside):
            layers.append(module)
            inside.add(name)
    return layers


def compile_decoder_layers(model: Any) -> int:
    """Compile every decoder layer of ``model`` in place (see the module docstring); the number of
    layers compiled (0: none found, nothing changed)."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
