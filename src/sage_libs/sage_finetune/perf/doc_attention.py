"""Per-document attention (:data:`DOC_ATTENTION`): an attention implementation for padding-free
rows (several documents concatenated, ``position_ids`` restarting at 0 for each, no
``attention_mask``). sdpa would build a block-diagonal ``(rows, 1, T, T)`` mask and spend quadratic
time in the whole row; this runs one causal sdpa call per document instead, so the cost is the sum
of the documents' own squares. Anything else (a padding mask, a KV cache, decoding) goes to
transformers' sdpa unchanged. Registered with transformers' ``AttentionInterface`` only when a
model is switched to it (:func:`install_doc_attention`).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from .constants import DOC_ATTENTION  # the name, in the module that imports nothing (decide.py reads it)
from .selective_logits import base_causal_lm, model_device_type

__all__ = ["DOC_ATTENTION", "doc_attention_forward", "doc_attention_mask", "doc_attention_supported",
           "install_doc_attention"]

logger = logging.getLogger(__name__)



_segments_memo: tuple[Any, ...] = (None, None, None, None)  # (weakref, version, key, segments): one atomic swap


def _doc_segments(position_ids: Any, batch: int, length: int) -> list[list[tuple[int, int]]] | None:
    """``[(start, end), ...]`` per row: a document starts wherever its position is 0. ``None`` when
    the positions do not describe whole documents starting at the row's first token."""
    global _segments_memo
    ref, version, key, value = _segments_memo
    # inference-mode tensors (an evaluation under torch.inference_mode) have no version counter and
    # cannot change in place; under it, identity is enough
    current = None if position_ids.is_inference() else position_ids._version
    if ref is not None and ref() is position_ids and version == current and key == (batch, length):
        return value  # every layer of one forward pass sees the same position_ids
    pos = position_ids.detach()
    if pos.dim() == 1:
        pos = pos.unsqueeze(0)
    if pos.shape[-1] != length or pos.shape[0] not in (1, batch):
        return None
    rows: list[list[tuple[int, int]]] = []
    starts_all = (pos == 0).cpu()
    for r in range(pos.shape[0]):
        starts = starts_all[r].nonzero().flatten().tolist()
        if not starts or starts[0] != 0:
            return None
        rows.append(list(zip(starts, starts[1:] + [length])))
    if len(rows) == 1 and batch > 1:
        rows = rows * batch
    _segments_memo = (weakref.ref(position_ids), current, (batch, length), rows)
    return rows


def doc_attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                          dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None,
                          **kwargs: Any) -> tuple[Any, None]:
    """sdpa, with one causal call per document for padding-free rows (see the module docstring)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    position_ids = kwargs.get("position_ids")
    if (attention_mask is None and position_ids is not None and length > 1 and key.shape[2] == length
            and is_causal is not False and getattr(module, "is_causal", True)
            and kwargs.get("position_bias") is None and kwargs.get("softcap") is None):
        segments = _doc_segments(position_ids, query.shape[0], length)
        if segments is not None and any(len(row) > 1 for row in segments):
            gqa = query.shape[1] != key.shape[1]
            sdpa = torch.nn.functional.scaled_dot_product_attention
            rows = []
            # split (not slicing) so that backward concatenates the gradients instead of adding
            # each document's into a zero tensor of the whole row
            for b, row in enumerate(segments):
                sizes = [e - s for s, e in row]
                parts = zip(*(t[b:b + 1].split(sizes, dim=2) for t in (query, key, value)))
                outs = [sdpa(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa).transpose(1, 2)
                        for q, k, v in parts]  # (1, len, heads, dim): the layout the caller reshapes
                rows.append(outs[0] if len(outs) == 1 else torch.cat(outs, dim=1))
            out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
            return out.contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def doc_attention_mask(batch_size: int, q_length: int, kv_length: int, q_offset: Any = 0, kv_offset: int = 0,
                       attention_mask: Any = None, **kwargs: Any) -> Any:
    """No mask for rows without padding (the attention derives causality and document boundaries
    from ``position_ids``); sdpa's mask for everything else."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and q_length == kv_length and kv_offset == 0 and isinstance(q_offset, int) \
            and q_offset == 0:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


def _register() -> None:
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    # never traced by torch.compile (compiled layers, .compiled_layers): the document list comes from
    # the data, so a traced version would recompile for every new document layout
    AttentionInterface.register(DOC_ATTENTION, torch.compiler.disable(doc_attention_forward))
    AttentionMaskInterface.register(DOC_ATTENTION, doc_attention_mask)


def doc_attention_supported(model: Any) -> str | None:
    """``None`` when :data:`DOC_ATTENTION` can replace the model's attention exactly, else why not.

    Only plain causal decoders on the CPU qualify: sdpa today, attention through transformers'
    ``AttentionInterface``, every layer full attention (no sliding window, no chunked or
    bidirectional blocks) and a text-only config (multimodal models overlay masks of their own).
    On GPUs one sdpa call per document would launch many small kernels; flash-attention kernels
    handle padding-free rows natively there."""
    import torch

    base = base_causal_lm(model)
    config = getattr(base, "config", None)
    if config is None:
        return "no config"
    device = model_device_type(base)
    if device != "cpu":
        return f"the model is on {device} (on GPUs use flash_attention_2, which reads the same position_ids)"
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return f"attention is {getattr(config, '_attn_implementation', None)!r}, not sdpa"
    if config.get_text_config() is not config or getattr(config, "is_encoder_decoder", False):
        return "not a text-only decoder"
    if not getattr(config, "is_causal", True):
        return "not causal"
    for name in ("sliding_window", "attention_chunk_size"):
        if getattr(config, name, None):
            if name != "sliding_window" or getattr(config, "use_sliding_window", True):
                return f"{name} is set"
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return "not every layer uses full attention"
    can_set = getattr(type(base), "_can_set_attn_implementation", None)
    if can_set is None or not can_set():
        return "the model does not dispatch attention through transformers' AttentionInterface"
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) < (2, 5):
        return "needs torch >= 2.5 (sdpa enable_gqa)"
    return None


def install_doc_attention(model: Any) -> bool:
    """Switch a supported model to :data:`DOC_ATTENTION`; returns whether it uses it now."""
    if getattr(base_causal_lm(model).config, "_attn_implementation", None) == DOC_ATTENTION:
        return True
    why = doc_attention_supported(model)
    if why is not None:
        logger.info("per-document attention not used: %s", why)
        return False
    _register()
    base_causal_lm(model).set_attn_implementation(DOC_ATTENTION)
    return True
