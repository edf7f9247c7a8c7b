"""Which fast paths a run uses: a pure decision from the options, the loaded model's probed
capabilities and the device (:func:`plan_fast_paths`), read by the trainer and the planner alike.
Nothing here changes process or model state; :mod:`.install` does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .constants import DOC_ATTENTION

__all__ = ["FastPaths", "plan_fast_paths", "padding_free_for", "resolve_padding_free", "resolve_group_by_length",
           "malloc_tuning_for", "widest_activation_bytes", "fused_lora_for"]


def widest_activation_bytes(training_config: Any, hidden_size: int, intermediate_size: int) -> int:
    """Bytes of the widest activation of a full batch: batch x max_seq_length tokens x the wider of the
    hidden and the MLP width, in the compute dtype."""
    tc = training_config
    tokens = int(getattr(tc, "per_device_train_batch_size", 1)) * int(getattr(tc, "max_seq_length", 0) or 0)
    width = max(int(hidden_size or 0), int(intermediate_size or 0))
    return tokens * width * (2 if getattr(tc, "bf16", False) or getattr(tc, "fp16", False) else 4)


def malloc_tuning_for(training_config: Any, widest_activation: int | None = None) -> bool:
    """``training.malloc_tuning`` for a run (the planner reads the same): an explicit true/false wins;
    null is on, except with ``gradient_checkpointing`` when the run's widest activation
    (:func:`widest_activation_bytes`) is above :data:`.allocator.RETURNED_BLOCK_BYTES`, the size over
    which the untuned allocator returns freed blocks (unknown: off).

    Why: the tuned glibc heap keeps what a step frees, and part of it stays stuck below the tensors
    saved for backward: about 40% of the bytes every layer's forward frees (planner/constants.py).
    Checkpointing is chosen to save memory and frees every layer's activations; when those are large
    the stuck part dominates the peak, and the untuned allocator would hand them back to the OS
    (Qwen2-0.5B shape, 129k vocabulary, LoRA, batch 8 x 1024, three steps: training peak 10.2 GB
    tuned, 5.7 GB not; benchmarks/results/sft_throughput_qwen0.5b_b8_len1024_phases*.json). The
    untuned allocator fixes glibc's mmap threshold at 4 MiB (:func:`.allocator.return_freed_memory`),
    so activations between 4 and 32 MiB go back to the OS as well: a Qwen3-shaped layer, 128k tied
    vocabulary, LoRA, 2 x 1024 tokens (widest activation 25 MiB) peaked at 2.05 GB tuned and 1.33 GB
    untuned (benchmarks/plan_validation.py, seed 1, #02). Only activations under 4 MiB stay in the
    heap either way; there the tuning's speed is kept."""
    explicit = getattr(training_config, "malloc_tuning", None)
    if explicit is not None:
        return bool(explicit)
    if not getattr(training_config, "gradient_checkpointing", False):
        return True
    from .allocator import RETURNED_BLOCK_BYTES

    return widest_activation is not None and widest_activation <= RETURNED_BLOCK_BYTES


@dataclass(frozen=True)
class FastPaths:
    """The fast paths one run uses (see the module docstring)."""

    selective_logits: bool = False
    chunked_lm_loss: bool | None = None  # None (the option's default): on (chunked_ce.use_chunked_lm_loss)
    padding_free: bool = False
    group_by_length: bool = False  # the sampler: length-grouped batches (data.group_by_length; resolve_group_by_length)
    doc_attention: bool = False
    malloc_tuning: bool = False
    returns_freed_memory: bool = False  # malloc_tuning off and the fixed mmap threshold applied (glibc)
    compile_layers: bool = False
    fused_norms: bool = False  # RMSNorm modules run fused_norm.rms_norm (CPU; per module, after a probe)
    fused_lora: bool = False  # LoRA linears with dropout run fused_lora.lora_branch (CPU; per module, after a probe)
    notes: tuple[str, ...] = ()  # why a path is off, for the log

    def describe(self) -> str:
        chunked = {None: "on", True: "on", False: "off"}[self.chunked_lm_loss]
        flags = [f"selective logits {'on' if self.selective_logits else 'off'}",
                 f"chunked LM loss {chunked if self.selective_logits else 'off'}",
                 f"padding-free batches {'on' if self.padding_free else 'off'}",
                 f"length-grouped batches {'on' if self.group_by_length else 'off'}",
                 f"per-document attention {'on' if self.doc_attention else 'off'}",
                 "malloc tuning " + ("on" if self.malloc_tuning else "off (freed blocks over 4 MiB returned)"
                                     if self.returns_freed_memory else "off (glibc's defaults)"),
                 f"fused RMSNorm {'on' if self.fused_norms else 'off'}",
                 f"fused LoRA branch {'on' if self.fused_lora else 'off'}",
                 f"compiled decoder layers {'on' if self.compile_layers else 'off'}"]
        return "; ".join(flags) + (f" ({'; '.join(self.notes)})" if self.notes else "")


def resolve_padding_free(data_config: Any, training_config: Any, model: Any) -> bool:
    """``data.padding_free`` for a run of the loaded ``model`` (:func:`padding_free_for`, the rule the
    planner applies to config.json)."""
    from ..utils.processes import run_device
    from .doc_attention import doc_attention_supported
    from .selective_logits import base_causal_lm

    if model is None:
        return bool(getattr(data_config, "padding_free", None))
    impl = str(getattr(base_causal_lm(model).config, "_attn_implementation", "") or "")
    return padding_free_for(data_config, attn_implementation=impl, device=run_device(training_config),
                            doc_attention_ok=doc_attention_supported(model) is None)


def padding_free_for(data_config: Any, *, attn_implementation: str, device: str, doc_attention_ok: bool) -> bool:
    """``data.padding_free`` for a run, from facts the trainer reads off the loaded model and the
    planner off config.json: an explicit true/false wins; null turns it on when each document's
    attention stays cheap, i.e. flash-attention kernels (varlen from position_ids) or sdpa on the CPU,
    where per-document attention replaces it (``doc_attention_ok``: the model qualifies,
    :func:`.doc_attention.doc_attention_supported`). Elsewhere sdpa/eager would build a
    block-diagonal mask over the whole batch, so padded batches stay the default there."""
    explicit = getattr(data_config, "padding_free", None)
    if explicit is not None:
        return bool(explicit)
    impl = str(attn_implementation or "")
    if impl.startswith("flash_attention") or impl == DOC_ATTENTION:
        return True
    return device == "cpu" and doc_attention_ok


def resolve_group_by_length(data_config: Any, padding_free: bool) -> bool:
    """``data.group_by_length`` for a run: an explicit true/false wins; null turns it on for padded
    batches, where sorting samples of similar length into one batch is what cuts the padding computed
    (the 0.5B benchmark on CUDA with sdpa: 2.95 computed tokens per real one in random batches, 1.30
    grouped); padding-free
    and packed rows carry no padding to cut."""
    explicit = getattr(data_config, "group_by_length", None)
    if explicit is not None:
        return bool(explicit)
    return not padding_free and not bool(getattr(data_config, "packing", False))


def plan_fast_paths(model: Any, training_config: Any, data_config: Any, *, sharded: bool = False,
                    packing_or_flat_rows: bool | None = None) -> FastPaths:
    """Decide the fast paths of a run of ``model`` (loaded, adapter applied). ``sharded``: weights
    are sharded across processes (FSDP, DeepSpeed), where the head's weight is gathered for its own
    forward and backward only, so the chunked loss is off. ``packing_or_flat_rows``: the batches
    carry ``position_ids`` and no ``attention_mask`` (None: decide padding-free here)."""
    from .doc_attention import doc_attention_supported
    from .selective_logits import base_causal_lm, model_device_type, probe_model

    tc, notes = training_config, []
    selective = bool(getattr(tc, "selective_logits", True))
    if selective:
        probe = probe_model(model)
        if not probe.selective:
            selective = False
            notes.append(f"selective logits: {probe.why}")
    chunked = getattr(tc, "chunked_lm_loss", None)
    if sharded:
        chunked = False
    padding_free = resolve_padding_free(data_config, training_config, model)
    flat_rows = bool(getattr(data_config, "packing", False)) or padding_free \
        if packing_or_flat_rows is None else packing_or_flat_rows
    doc_attention = False
    if flat_rows:
        why = doc_attention_supported(model)
        doc_attention = why is None or _uses_doc_attention(model)
        if not doc_attention:
            notes.append(f"per-document attention: {why}")
    compile_layers = bool(getattr(tc, "compile_layers", False))
    fused_norms = fused_norms_for(tc, device=model_device_type(model), compile_layers=compile_layers, sharded=sharded)
    fused_lora = fused_lora_for(tc, device=model_device_type(model), compile_layers=compile_layers, sharded=sharded)
    config = getattr(base_causal_lm(model), "config", None)
    hidden = getattr(config, "hidden_size", 0) if config is not None else 0
    widest = widest_activation_bytes(tc, hidden, getattr(config, "intermediate_size", 4 * hidden)) if hidden else None
    return FastPaths(selective_logits=selective, chunked_lm_loss=chunked, padding_free=padding_free,
                     group_by_length=resolve_group_by_length(data_config, padding_free), doc_attention=doc_attention,
                     malloc_tuning=malloc_tuning_for(tc, widest), compile_layers=compile_layers,
                     fused_norms=fused_norms, fused_lora=fused_lora, notes=tuple(notes))


def fused_norms_for(training_config: Any, *, device: str, compile_layers: bool = False, sharded: bool = False) -> bool:
    """``training.fused_norms`` for a run (the planner reads the same): eager CPU only (inductor
    fuses the norms itself, sharded weights cannot be probed, and on GPUs this was not measured)."""
    return bool(getattr(training_config, "fused_norms", True)) and device == "cpu" and not compile_layers \
        and not sharded


def fused_lora_for(training_config: Any, *, device: str, compile_layers: bool = False, sharded: bool = False) -> bool:
    """``training.fused_lora`` for a run (the planner reads the same): on the CPU in eager mode with
    unsharded weights. Whether a module qualifies (plain LoRA, dropout > 0) is the module's own
    check at install time. CUDA's dropout already keeps a bool mask and draws its noise in a fused
    kernel with another generator, which the fused branch would not reproduce."""
    return bool(getattr(training_config, "fused_lora", True)) and device == "cpu" and not compile_layers and not sharded


def _uses_doc_attention(model: Any) -> bool:
    from .selective_logits import base_causal_lm

    return getattr(base_causal_lm(model).config, "_attn_implementation", None) == DOC_ATTENTION
