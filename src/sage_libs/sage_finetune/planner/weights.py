"""Weights and their states: which weights train (:func:`_layout`), the bytes of the base weights
(their dtype, 4/8-bit blocks, memory-mapped pages) and of the adapters or trained copies
(:func:`_weights`), and the optimizer's bytes per trained weight. Pure arithmetic: no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .shapes import RunShape
from .spec import ModelSpec

__all__ = ["quantized_weight_bytes", "touched_bytes"]


def quantized_weight_bytes(n: int, bits: int, double_quant: bool) -> int:
    """bitsandbytes storage of ``n`` weights: 4-bit blocks of 64 with a float32 absmax each (double
    quantization: a uint8 absmax per block plus a float32 per 256 blocks); 8-bit: one byte each
    plus a float32 scale per output row (counted as n/4096)."""
    if bits == 8:
        return n + 4 * math.ceil(n / 4096)
    packed = math.ceil(n / 2)
    blocks = math.ceil(n / 64)
    if double_quant:
        return packed + blocks + 4 * math.ceil(blocks / 256) + 64
    return packed + 4 * blocks


def _targets(run: RunShape, spec: ModelSpec) -> set[str]:
    names = [m.name for m in spec.linears()]
    t = run.lora_targets
    if t in ("all-linear", "all_linear"):
        return set(names)
    if t is None:
        t = ["q_proj", "v_proj"]
    if isinstance(t, str):
        t = [t]
    out = set()
    for name in names:
        if any(name == x or name.endswith("." + x) or x.endswith("." + name) or x == name for x in t):
            out.add(name)
    return out


@dataclass
class _Layout:
    """Which weights train, per layer and overall."""

    trainable_base_layers: set[int]      # layers whose every weight trains (full, freeze)
    adapted_layers: set[int]             # layers with LoRA adapters
    adapted: set[str]                    # adapted linear names
    embeddings_train: bool
    head_train: bool
    first_grad_layer: int                # layers below this keep nothing for backward
    adapter_params: int                  # LoRA A/B + DoRA magnitudes
    trainable_base_params: int           # base weights that train (full/freeze/modules_to_save)


def _layout(run: RunShape, spec: ModelSpec) -> _Layout:
    layers = range(spec.num_layers)
    adapted: set[str] = set()
    adapted_layers: set[int] = set()
    trainable: set[int] = set()
    emb = head = False
    adapter_params = 0
    if run.is_lora:
        adapted = _targets(run, spec)
        adapted_layers = set(run.lora_layers) if run.lora_layers else set(layers)
        per_layer = sum(run.lora_r * (m.in_features + m.out_features) + (m.out_features if run.use_dora else 0)
                        for m in spec.linears() if m.name in adapted)
        adapter_params = per_layer * len(adapted_layers)
        mts = [m.rsplit(".", 1)[-1] for m in run.modules_to_save]
        emb = any(m in ("embed_tokens", "wte", "word_embeddings") for m in mts)
        head = any(m in ("lm_head", "embed_out") for m in mts)
    elif run.method == "freeze":
        n = min(run.freeze_layers, spec.num_layers)
        trainable = set(range(spec.num_layers - n, spec.num_layers))
        emb, head = run.train_embeddings, run.train_lm_head
    else:  # full
        trainable = set(layers)
        emb = head = True
    if spec.tie_word_embeddings and (emb or head):
        emb = head = True
    first = spec.num_layers
    if emb:
        first = 0
    else:
        candidates = trainable | (adapted_layers if adapted else set())
        if candidates:
            first = min(candidates)
    base = len(trainable) * spec.layer_params()
    if run.method == "full":
        base = spec.total_params
    else:
        base += (spec.embedding_params if emb else 0) + (spec.head_params if head and not spec.tie_word_embeddings else 0)
        if run.method == "freeze" and trainable and max(trainable) == spec.num_layers - 1:
            base += 0  # the final norm stays frozen in freeze tuning
    return _Layout(trainable, adapted_layers, adapted, emb, head, first, adapter_params, base)


PAGE = 4096


def touched_bytes(rows: int, row_bytes: int, used_rows: int | None) -> int:
    """Resident bytes of a memory-mapped ``rows x row_bytes`` matrix of which ``used_rows`` random
    rows are read: the pages holding at least one of them (all of it when unknown)."""
    total = rows * row_bytes
    if used_rows is None or used_rows >= rows or total == 0:
        return total
    pages = max(1, math.ceil(total / PAGE))
    rows_per_page = max(PAGE / max(row_bytes, 1), 1.0)
    touched_pages = pages * (1 - (1 - 1 / pages) ** (used_rows * (row_bytes / PAGE if row_bytes > PAGE else 1)))
    if rows_per_page == 1.0:
        touched_pages = used_rows * math.ceil(row_bytes / PAGE)
    return int(min(total, touched_pages * PAGE))


def _weights(run: RunShape, spec: ModelSpec, lay: _Layout, embedding_rows: int | None = None) -> tuple[int, int]:
    """(base weight bytes resident, adapter/copy bytes).

    On the CPU a checkpoint loaded at its own dtype stays memory-mapped (transformers reads
    safetensors zero-copy): a frozen input embedding then costs only the pages of the rows the
    data's token ids touch (unless the LM head is tied to it: the head reads every row). QLoRA on
    the CPU reads every linear weight once to quantize it, and the
    mapping stays: those pages count as well as the 4-bit blocks."""
    wb = run.weight_bytes
    layer_linear = spec.num_layers * sum(m.in_features * m.out_features for m in spec.linears())
    other = spec.total_params - layer_linear
    emb_bytes = spec.embedding_params * (4 if run.quant_bits else wb)
    emb_resident = emb_bytes
    # a head tied to the embeddings reads every row in each step: all its pages are resident
    if run.device == "cpu" and run.mmap_weights and not lay.embeddings_train and not spec.tie_word_embeddings:
        emb_resident = touched_bytes(spec.vocab_size, spec.hidden_size * (4 if run.quant_bits else wb), embedding_rows)
    if run.quant_bits:
        # prepare_model_for_kbit_training keeps what is not quantized (embeddings, norms, head) in float32
        base = quantized_weight_bytes(layer_linear, run.quant_bits, run.double_quant) + 4 * other
        if run.device == "cpu" and run.mmap_weights:
            base += wb * layer_linear  # the checkpoint's pages, read while quantizing
    else:
        base = spec.total_params * wb
    base += emb_resident - emb_bytes
    extra = 4 * lay.adapter_params
    if run.is_lora and (lay.embeddings_train or lay.head_train):  # modules_to_save: a trained copy
        copies = (spec.embedding_params if lay.embeddings_train else 0) + (
            spec.head_params if lay.head_train and not spec.tie_word_embeddings else 0)
        extra += copies * (4 if run.quant_bits else wb)
    return base, extra


def _optimizer_bytes_per_param(optim: str) -> tuple[int, str]:
    o = optim.lower()
    if "8bit" in o:
        return 2, "8-bit states"
    if o.startswith("sgd"):
        return 0, "no state"
    if "adafactor" in o:
        return 0, "factored states (negligible)"
    if "lion" in o:
        return 4, "one state"
    return 8, "two float32 states"

