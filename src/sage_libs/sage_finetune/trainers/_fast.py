"""Fast paths of the training loop. Each computes exactly what the plain path computes, less of
what it throws away; ``tests/test_perf_paths.py`` checks losses and gradients against the plain path.

* **Selective logits** (:func:`selective_causal_lm_loss`): the LM head and the cross-entropy run
  only at the positions whose next-token label is trained (``logits_to_keep`` as a boolean mask,
  which every transformers-5 causal LM built on ``slice_logits_to_keep`` accepts), instead of
  ``(batch, seq, vocab)`` logits for every prompt and padding position. With large vocabularies the
  head and the loss also run in chunks of rows (:mod:`._chunked_ce`), so not even the
  ``(trained tokens, vocab)`` logits exist at once.
* **Per-document attention** (:data:`DOC_ATTENTION`): an attention implementation for padding-free
  rows (several documents concatenated, ``position_ids`` restarting at 0 for each, no
  ``attention_mask``). sdpa would build a block-diagonal ``(rows, 1, T, T)`` mask and spend
  quadratic time in the whole row; this runs one causal sdpa call per document instead, so the
  cost is the sum of the documents' own squares. Anything else (a padding mask, a KV cache,
  decoding) goes to transformers' sdpa unchanged.
* **Allocator tuning** (:func:`tune_malloc`): glibc hands every freed block over 32 MB back to the
  OS, so each training step pays the page faults of its activations again.
"""

from __future__ import annotations

import inspect
import logging
import os
import weakref
from typing import Any

__all__ = ["DOC_ATTENTION", "selective_causal_lm_loss", "supports_selective_logits", "lm_head_for_chunking", "install_doc_attention",
           "resolve_padding_free",
           "doc_attention_supported", "tune_malloc", "real_token_count"]

logger = logging.getLogger(__name__)

DOC_ATTENTION = "sage_doc_sdpa"
IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------------
# Selective logits
# ------------------------------------------------------------------------------------------------
def _base_causal_lm(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)  # PEFT wrappers
    return get_base() if callable(get_base) else model


def supports_selective_logits(model: Any) -> bool:
    """True when the model's forward slices its hidden states with ``slice_logits_to_keep``
    (so a boolean ``logits_to_keep`` mask returns ``(n_kept, vocab)`` logits)."""
    base = _base_causal_lm(model)
    config = getattr(base, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text_config, "output_router_logits", False):
        return False  # MoE: the model's own loss adds the router's auxiliary loss
    cls = type(base)
    cached = getattr(cls, "_sage_selective_logits", None)
    if cached is None:
        try:
            cached = "slice_logits_to_keep(" in inspect.getsource(cls.forward)
        except (OSError, TypeError):
            cached = False
        try:
            cls._sage_selective_logits = cached
        except (AttributeError, TypeError):
            pass
    return bool(cached)


_HEAD_CALL = "logits = self.lm_head(hidden_states)"


def lm_head_for_chunking(model: Any) -> Any:
    """The model's LM head when :mod:`._chunked_ce` can stand in for it exactly, else ``None``.

    It must be a plain ``torch.nn.Linear`` (not a LoRA layer, a ``modules_to_save`` wrapper or a
    quantized layer) without hooks, whose weight is an ordinary tensor (not a DeepSpeed ZeRO-3 stub
    or a DTensor shard), called by the model's forward as ``logits = self.lm_head(hidden_states)``
    with nothing done to the logits before the loss (no soft-capping or scaling). A head tied to the
    input embeddings qualifies: both uses' gradients add up in the shared weight."""
    import torch

    if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    base = _base_causal_lm(model)
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not torch.nn.Linear or getattr(base, "lm_head", None) is not head:
        return None
    if head._forward_hooks or head._forward_pre_hooks or hasattr(head, "_hf_hook") or "forward" in head.__dict__:
        return None
    weight = head.weight
    if type(weight) not in (torch.Tensor, torch.nn.Parameter) or hasattr(weight, "ds_id") or weight.dim() != 2:
        return None
    cls = type(base)
    cached = cls.__dict__.get("_sage_chunkable_head")
    if cached is None:
        try:
            src = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            src = ""
        after = src.split(_HEAD_CALL + "\n", 1)[1].lstrip() if src.count(_HEAD_CALL + "\n") == 1 else ""
        cached = after.startswith(("loss = None", "if labels is not None"))
        try:
            cls._sage_chunkable_head = cached
        except (AttributeError, TypeError):
            pass
    return head if cached else None


def _hidden_passthrough(hidden_states: Any) -> Any:
    return hidden_states


def selective_causal_lm_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None,
                             chunked: bool | None = False) -> Any:
    """The causal LM loss of ``inputs`` (with ``labels``), computing logits only where a label is
    trained. Same value as the model's own ``loss``: cross-entropy (in float32) summed over the
    trained next-token positions, divided by ``num_items_in_batch`` when given, else by their count.

    ``chunked`` (``training.chunked_lm_loss``; null: by size, see
    :func:`._chunked_ce.use_chunked_lm_loss`): the LM head, the cross-entropy and their gradients
    run in chunks of rows, so no ``(trained tokens, vocab)`` logits tensor exists;
    models whose head does not qualify (:func:`lm_head_for_chunking`) take the plain path.
    """
    import torch

    from . import _chunked_ce

    labels = inputs["labels"]
    keep = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][keep[:, :-1]]
    forward = {k: v for k, v in inputs.items() if k != "labels"}
    forward["use_cache"] = False
    head = None
    if chunked is not False:
        head = lm_head_for_chunking(model)
        if head is not None and not _chunked_ce.use_chunked_lm_loss(chunked, targets.numel(), head.out_features):
            head = None
        elif head is None and chunked:
            logger.debug("chunked LM loss: the LM head is not a plain Linear called plainly; plain path")
    if head is not None:
        head.forward = _hidden_passthrough  # the model's forward returns the hidden states at `keep`
        try:
            hidden = model(**forward, logits_to_keep=keep).logits
        finally:
            del head.forward
        if hidden.dim() != 2 or hidden.shape != (targets.numel(), head.in_features):
            raise RuntimeError(f"chunked LM loss: expected ({targets.numel()}, {head.in_features}) hidden states, "
                               f"got {tuple(hidden.shape)}; set training.chunked_lm_loss: false for this model")
        normalizer = max(int(targets.numel()), 1) if num_items_in_batch is None else num_items_in_batch
        return _chunked_ce.chunked_linear_cross_entropy(hidden, head.weight, targets.to(hidden.device), head.bias,
                                                        normalizer=normalizer,
                                                        chunk_rows=_chunked_ce.chunk_rows_for(head.out_features,
                                                                                              _chunked_ce.CHUNK_BYTES))
    logits = model(**forward, logits_to_keep=keep).logits
    if logits.dim() != 2 or logits.shape[0] != targets.numel():
        raise RuntimeError(f"selective logits: expected ({targets.numel()}, vocab) logits, got {tuple(logits.shape)}; "
                           "set training.selective_logits: false for this model")
    loss = torch.nn.functional.cross_entropy(logits.float(), targets.to(logits.device), reduction="sum")
    if num_items_in_batch is None:
        return loss / max(int(targets.numel()), 1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


# ------------------------------------------------------------------------------------------------
# Per-document attention for padding-free rows
# ------------------------------------------------------------------------------------------------
_segments_memo: tuple[Any, ...] = (None, None, None, None)  # (weakref, version, key, segments): one atomic swap


def _doc_segments(position_ids: Any, batch: int, length: int) -> list[list[tuple[int, int]]] | None:
    """``[(start, end), ...]`` per row: a document starts wherever its position is 0. ``None`` when
    the positions do not describe whole documents starting at the row's first token."""
    global _segments_memo
    ref, version, key, value = _segments_memo
    if ref is not None and ref() is position_ids and version == position_ids._version and key == (batch, length):
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
    _segments_memo = (weakref.ref(position_ids), position_ids._version, (batch, length), rows)
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
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(DOC_ATTENTION, doc_attention_forward)
    AttentionMaskInterface.register(DOC_ATTENTION, doc_attention_mask)


def doc_attention_supported(model: Any) -> str | None:
    """``None`` when :data:`DOC_ATTENTION` can replace the model's attention exactly, else why not.

    Only plain causal decoders on the CPU qualify: sdpa today, attention through transformers'
    ``AttentionInterface``, every layer full attention (no sliding window, no chunked or
    bidirectional blocks) and a text-only config (multimodal models overlay masks of their own).
    On GPUs one sdpa call per document would launch many small kernels; flash-attention kernels
    handle padding-free rows natively there."""
    import torch

    base = _base_causal_lm(model)
    config = getattr(base, "config", None)
    if config is None:
        return "no config"
    try:
        device = next(base.parameters()).device.type
    except (StopIteration, AttributeError):
        device = "cpu"
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
    if getattr(_base_causal_lm(model).config, "_attn_implementation", None) == DOC_ATTENTION:
        return True
    why = doc_attention_supported(model)
    if why is not None:
        logger.info("per-document attention not used: %s", why)
        return False
    _register()
    _base_causal_lm(model).set_attn_implementation(DOC_ATTENTION)
    return True


# ------------------------------------------------------------------------------------------------
# Token counting for batches without attention_mask
# ------------------------------------------------------------------------------------------------
def real_token_count(input_ids: Any, position_ids: Any, pad_token_id: int | None) -> Any:
    """Tokens of a position_ids batch that are not the padding tail the packed collator appends
    (a run of ``pad_token_id`` starting at position 0 and running to the end of the row). Unlike
    ``input_ids != pad_token_id`` this does not miss real eos tokens when pad == eos."""
    import torch

    if pad_token_id is None:
        return torch.tensor(input_ids.numel())
    is_pad = input_ids == pad_token_id
    tail = is_pad.flip(-1).to(torch.int32).cumprod(-1).flip(-1).bool()  # every token from here on is pad
    starts = tail & (position_ids.expand_as(input_ids) == 0)
    length = input_ids.shape[-1]
    idx = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    first = torch.where(starts, idx, torch.full_like(idx, length)).min(dim=-1).values
    return first.sum()


# ------------------------------------------------------------------------------------------------
# Allocator
# ------------------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_malloc_tuned = False


def tune_malloc() -> bool:
    """Keep freed memory in this process (glibc only): ``M_MMAP_MAX=0`` (large blocks come from the
    heap, not from fresh mmaps) and a trim threshold that is never reached. Same effect as
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`` in the environment. Returns whether
    it applied; ``SAGE_FINETUNE_MALLOC_TUNING=0`` turns it off."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if os.environ.get("SAGE_FINETUNE_MALLOC_TUNING", "1").lower() in ("0", "false", "no", "off"):
        return False
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        gnu_get_libc_version = libc.gnu_get_libc_version  # absent on musl and other libcs
        gnu_get_libc_version.restype = ctypes.c_char_p
        gnu_get_libc_version()
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _malloc_tuned = ok
    return ok


# ------------------------------------------------------------------------------------------------
# Padding-free batches
# ------------------------------------------------------------------------------------------------
def resolve_padding_free(data_config: Any, training_config: Any, model: Any) -> bool:
    """``data.padding_free`` for this run: an explicit true/false wins; null turns it on when each
    document's attention stays cheap, i.e. flash-attention kernels (varlen from position_ids) or
    sdpa on the CPU, where :data:`DOC_ATTENTION` replaces it. Elsewhere sdpa/eager would build a
    block-diagonal mask over the whole batch, so padded batches stay the default there."""
    explicit = getattr(data_config, "padding_free", None)
    if explicit is not None:
        return bool(explicit)
    if model is None:
        return False
    impl = str(getattr(_base_causal_lm(model).config, "_attn_implementation", "") or "")
    if impl.startswith("flash_attention") or impl == DOC_ATTENTION:
        return True
    import torch

    on_cpu = bool(getattr(training_config, "use_cpu", False)) or not torch.cuda.is_available()
    return on_cpu and doc_attention_supported(model) is None
