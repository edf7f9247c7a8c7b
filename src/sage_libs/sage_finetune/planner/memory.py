"""Peak memory of a training run, from first principles (pure arithmetic: no torch).

The peak is the sum of what lives through the whole step and the largest of what lives at some
moment of it:

* **base weights** at their dtype, or 4/8-bit (bitsandbytes NF4/FP4 blocks of 64 with their
  absmax, double-quantized or not; embeddings, norms and the head stay unquantized);
* **adapter / trainable weights** (LoRA A and B, DoRA magnitudes, ``modules_to_save`` copies),
  their **gradients** and **optimizer states** (AdamW: two per trainable weight);
* **activations** autograd saves for backward, counted per token and per decoder layer from what
  each operation of a Llama-style layer keeps (norm inputs, the inputs of linear layers whose
  weight or adapter trains, q/k/v/output and logsumexp of the attention kernel, the MLP's gate,
  activation and up projections, LoRA's rank-r intermediate, DoRA's extra results, CPU dropout's
  float mask), for the largest batch the data produces: padding-free rows (one document after
  another, attention per document), padded rows or packed rows; gradient checkpointing keeps
  each layer's input and recomputes one layer at a time; layers with no trainable weight and no
  gradient flowing through them (below the first trained layer) keep nothing;
* **the loss**: logits at the trained positions only (selective logits) or everywhere, their
  float32 log-softmax and its gradient; with the chunked loss one chunk's logits instead;
* **transients** of the step: the backward working set of one layer, the optimizer's
  temporaries, the gradients that accumulate during backward (full fine-tuning);
* **the allocator**: on the CPU, glibc keeps freed memory in the process (``malloc_tuning``) and
  part of what a layer frees during forward stays stuck below tensors saved for backward
  (:data:`.constants.CPU_FRAG_ADAPTER` and its siblings: a share of the forward's freed bytes); on CUDA the
  caching allocator reserves more than it hands out, and the context costs a fixed amount;
* **the process**: Python, torch, transformers and the data (a measured constant).

DeepSpeed ZeRO shards optimizer states (stage 1), gradients (2) and weights (3) across processes.

The parts live in :mod:`.shapes` (the run, the batch, the plan), :mod:`.weights` (which weights
train, their bytes and their optimizer states) and :mod:`.activations` (each layer's saved and
freed bytes per token, the forward of the largest batch, the loss); this module puts them
together over the phases of a step (loss, backward layer by layer, optimizer) and adds the
allocator and the process.
"""

from __future__ import annotations

from typing import Any

from . import constants as C
from ..perf.constants import chunk_rows_for
from .activations import _Forward, _forward, _loss_bytes, loss_is_chunked
from .batches import Lengths, epoch_batches, largest_batch
from .shapes import GIB, MIB, Batch, MemoryPlan, RunShape
from .spec import ModelSpec
from .weights import _layout, _optimizer_bytes_per_param, _weights, quantized_weight_bytes

# RunShape, Batch, MemoryPlan (:mod:`.shapes`), quantized_weight_bytes (:mod:`.weights`): re-exported
__all__ = ["RunShape", "Batch", "MemoryPlan", "plan_memory", "smaller_first_loss_block", "quantized_weight_bytes",
           "GIB", "MIB"]


def smaller_first_loss_block(spec: ModelSpec, run: RunShape, lengths: Lengths, batch_size: int, *,
                             group_by_length: bool = False, seed: int = 42, max_seq_length: int | None = None) -> float:
    """The odds that the run's first step has a smaller loss block (the chunked loss's buffer, or
    the plain loss's logits) than its largest batch: a later step's larger block then does not fit
    the first one's hole, and the tuned heap grows by it (:func:`_add_overheads`). With a random
    order, the share of an epoch's micro-batches whose block is smaller than the largest one's
    (batches scoring more positions than a chunk's rows all make the same block); none when a
    process has one batch (no later step). Length-grouped batches start with the one holding the
    longest sample, the top of a sorted mega-batch of up to 50 batches (transformers'
    ``get_length_grouped_indices``): nearly the largest once the data holds a few mega-batches'
    worth; on small data a mega-batch is a batch or two, and the others come in random order, so
    the share is used as for a random order."""
    if group_by_length and len(lengths) // max(4 * batch_size * max(run.processes, 1), 1) >= 4:
        return 0.0
    lay = _layout(run, spec)
    cap = chunk_rows_for(spec.vocab_size, C.CHUNK_LOGITS_BYTES) if loss_is_chunked(run, lay) else None

    def block(b: Batch) -> int:
        n = b.trained if run.selective_logits else b.tokens
        return min(n, cap) if cap else n

    batches = epoch_batches(lengths, batch_size, padding_free=run.padding_free, seed=seed,
                            max_seq_length=max_seq_length, processes=run.processes)
    if len(batches) < 2:
        return 0.0
    largest = block(largest_batch(lengths, batch_size, padding_free=run.padding_free, max_seq_length=max_seq_length))
    return sum(1 for b in batches if block(b) < 0.95 * largest) / len(batches)


def plan_memory(spec: ModelSpec, run: RunShape, batch: Batch, *, baseline: int | None = None,
                weights_file: int | None = None, embedding_rows: int | None = None,
                smaller_first_block: float = 0.0) -> MemoryPlan:
    """The memory plan of one process training ``batch`` (the largest micro-batch);
    ``smaller_first_block``: the odds that the first step's loss block is smaller than the largest
    one's (:func:`smaller_first_loss_block`)."""
    lay = _layout(run, spec)
    N = max(run.processes, 1)
    stage = run.zero_stage
    T = batch.tokens
    base_w, adapter_w = _weights(run, spec, lay, embedding_rows)
    trainable = lay.adapter_params + lay.trainable_base_params
    tb = 4 if (run.is_lora or run.quant_bits) else run.weight_bytes   # bytes of a trainable weight
    grads_total = trainable * tb
    state_per, state_what = _optimizer_bytes_per_param(run.optim)
    opt_total = trainable * state_per
    master = 0
    if stage:
        if run.autocast_bytes and not run.is_lora:
            master = trainable * 4  # fp32 master weights of a 16-bit engine
        opt_total = (opt_total + master) // N
        master = 0
        if stage >= 2:
            grads_total //= N
        if stage >= 3:
            base_w //= N
        if run.zero_offload:
            opt_total = 0

    # activations of the largest batch
    fwd = _forward(run, spec, lay, batch)
    saved_layers, in_grad = fwd.saved_layers, fwd.grad_out
    cos_sin = 2 * T * spec.head_dim * 4
    final_norm = (4 * spec.hidden_size * T + 4 * T) if in_grad else 0
    if run.method == "full":  # the final norm's weight trains too: it keeps its normalized input
        final_norm += run.weight_bytes * spec.hidden_size * T
    loss_saved, loss_transient, chunked = _loss_bytes(run, spec, lay, batch)
    a = run.act_bytes
    H, I = spec.hidden_size, spec.intermediate_size
    # what one layer's backward holds besides the saved tensors: the residual gradient (two copies)
    # and the MLP's gradients
    ws = T * (2 * 4 * H + 2 * I * a)
    if run.gradient_checkpointing:  # each layer keeps its input; backward recomputes one layer at a time
        saved_total = sum(T * H * 4 for s in saved_layers if s)
    else:
        saved_total = sum(saved_layers)
    activations = saved_total + cos_sin + final_norm + loss_saved

    # Phases of a step, each as (gradients, activations, transients) alive at its worst moment
    per_layer_grad = spec.layer_params() * tb if lay.trainable_base_layers else 0
    adapter_layer_grad = (lay.adapter_params // max(len(lay.adapted_layers), 1)) * 4 if lay.adapted_layers else 0
    shard = N if stage >= 2 else 1
    # the head's gradient exists from the loss's backward on; a tied head's is the embedding's
    head_grad = (spec.embedding_params if spec.tie_word_embeddings else spec.head_params) * tb // shard \
        if lay.head_train else 0
    fixed = fwd.fixed_transient  # a dequantized weight (qlora) or DoRA's product, at any moment
    if run.autocast_bytes and run.weight_bytes == 4 and not run.quant_bits:
        # autocast keeps a 16-bit copy of every float32 weight a matmul used, until the step ends
        fixed += run.autocast_bytes * (spec.num_layers * sum(m.in_features * m.out_features for m in spec.linears())
                                       + (spec.head_params or spec.embedding_params))
    phases: dict[str, tuple[float, float, float]] = {
        "loss": (0.0, activations, loss_transient + fixed)}
    kept = activations - loss_saved - final_norm
    grads_so_far = head_grad
    worst = (0.0, 0.0, 0.0)
    for layer in reversed(range(spec.num_layers)):
        recompute = saved_layers[layer] if run.gradient_checkpointing else 0
        here = (grads_so_far, kept, recompute + ws + fixed)
        if sum(here) > sum(worst):
            worst = here
        kept -= (T * H * 4 if saved_layers[layer] else 0) if run.gradient_checkpointing else saved_layers[layer]
        if layer in lay.trainable_base_layers:
            grads_so_far += per_layer_grad // shard
        elif layer in lay.adapted_layers:
            grads_so_far += adapter_layer_grad
    phases["backward"] = worst
    # optimizer step: every gradient and the update's temporaries
    if run.is_lora:
        largest = 4 * max(run.lora_r * (m.in_features + m.out_features) for m in spec.linears())
    else:
        largest = tb * max([m.params for m in spec.linears()]
                           + ([spec.embedding_params] if lay.embeddings_train else [])
                           + ([spec.head_params] if lay.head_train and not spec.tie_word_embeddings else []))
    if run.device == "cpu" or "fused" in run.optim:
        opt_temp = 2 * largest if trainable else 0   # single-tensor AdamW: sqrt and division of one weight
    else:
        opt_temp = trainable * tb // (N if stage else 1)  # foreach AdamW: a temporary per state
    phases["optimizer"] = (float(grads_total), 0.0, float(opt_temp))
    # the tuned CPU heap also keeps the previous step's update temporaries (_add_overheads)
    regrown_opt = C.CPU_OPTIMIZER_TEMPS_REGROWN * opt_temp if run.device == "cpu" and run.malloc_tuning else 0.0
    phase = max(phases, key=lambda k: sum(phases[k]) + (regrown_opt if k == "optimizer" else 0.0))
    regrown_opt = regrown_opt if phase == "optimizer" else 0.0
    grads_at, acts_at, trans_at = phases[phase]

    comps: dict[str, int] = {
        "base_weights": int(base_w),
        "trainable_weights": int(adapter_w),
        "gradients": int(grads_at),
        "optimizer_states": int(opt_total),
        "activations": int(acts_at),
        "step_transients": int(trans_at),
    }
    notes: list[str] = []
    details: dict[str, Any] = {"tokens": T, "trained_positions": batch.trained, "rows": batch.rows,
                               "row_len": batch.row_len, "documents": len(batch.doc_lengths),
                               "chunked_lm_loss": chunked, "loss_blocks": int(loss_transient),
                               "trainable_params": trainable,
                               "adapter_params": lay.adapter_params, "first_grad_layer": lay.first_grad_layer,
                               "optimizer": state_what, "saved_per_layer": [int(s) for s in saved_layers],
                               "forward_transients": int(fwd.freed),
                               "activations_after_forward": int(activations),
                               "phases": {k: [int(x) for x in v] for k, v in phases.items()},
                               "regrown_optimizer_temps": int(regrown_opt),
                               "kept_after_loss": int(grads_total + opt_total),
                               "smaller_first_block": smaller_first_block}
    if run.device == "cpu" and run.quant_bits and run.mmap_weights:
        layer_linear = spec.num_layers * sum(m.in_features * m.out_features for m in spec.linears())
        details["reclaimable"] = run.weight_bytes * layer_linear
        notes.append(f"{run.weight_bytes * layer_linear / GIB:.2f} GiB of the base weights are the checkpoint's pages, "
                     "read once to quantize: resident (counted in RSS) until the kernel needs the memory")
    peak = _add_overheads(run, comps, fwd, baseline, details, notes)
    unread = _weights(run, spec, lay, None)[0] - base_w if run.device == "cpu" and not run.is_lora else 0
    if unread > 0 and run.malloc_tuning:
        # the run ends by writing the whole model (run.recipe.save_final_weights): that reads every
        # page of the memory-mapped checkpoint, the input embedding's rows the data never used too,
        # while the tuned heap still holds what training grew it to (plan_validation --seed 13 #18:
        # 1593 MB before the save, 1878 MB during it, all of it file pages)
        comps["base_weights"] += unread
        peak += unread
        phase = "save"
        details["unread_weights"] = int(unread)
        size = f"{unread / MIB:.0f} MiB" if unread >= 10 * MIB else f"{unread / 2**10:.0f} KiB"
        notes.append(f"the peak is the end of the run: writing the model reads the {size} of embedding rows "
                     "the data never used (memory-mapped checkpoint pages)")
    if stage:
        notes.append(f"DeepSpeed ZeRO-{stage} over {N} processes: optimizer states"
                     + (", gradients" if stage >= 2 else "") + (" and weights" if stage >= 3 else "")
                     + " sharded; communication buckets not counted")
    return MemoryPlan(components=comps, peak=int(peak), device=run.device, phase=phase, details=details,
                      notes=notes)


# ------------------------------------------------------------------------------------------------
# The allocator and the process
# ------------------------------------------------------------------------------------------------
def _add_overheads(run: RunShape, comps: dict[str, int], fwd: _Forward, baseline: int | None,
                   details: dict[str, Any], notes: list[str]) -> int:
    """Adds the allocator's overhead and the process's own memory to ``comps``; returns the peak.

    CPU: what glibc's heap keeps of the forward's freed bytes (without ``malloc_tuning`` blocks over
    the fixed mmap threshold go back to the OS) and the process baseline (measured, or the constant). CUDA:
    ``max_memory_allocated`` counts tensors only; the caching allocator's reserve and the context add."""
    if run.device == "cpu":
        # malloc_tuning off fixes glibc's mmap threshold (perf.allocator.return_freed_memory): blocks
        # over it go back to the OS; activations all under it stay in the heap as with the tuning
        untuned_returns = fwd.largest_tensor > C.RETURNED_BLOCK_BYTES
        frag = C.CPU_FRAG_UNTUNED * fwd.freed if not run.malloc_tuning and untuned_returns else fwd.frag
        loss_blocks = details.get("loss_blocks", 0)
        if run.malloc_tuning or loss_blocks <= 2 * C.RETURNED_BLOCK_BYTES:
            # after step 1 the heap grows by the loss's blocks when a later step's are larger than the
            # first's (they do not fit its hole), else by what of the hole the weight gradients and
            # optimizer states allocated meanwhile took (a LoRA run's are a few MB: no growth); the
            # order is random: the expected growth
            odds = details.get("smaller_first_block", 0.0)
            taken = min(loss_blocks, details.get("kept_after_loss", loss_blocks))
            frag += C.CPU_LOSS_BLOCKS_REGROWN * (odds * loss_blocks + (1 - odds) * taken)
        frag += details.get("regrown_optimizer_temps", 0)  # and by the update's, at an optimizer-step peak
        comps["allocator_overhead"] = int(frag)
        comps["process_baseline"] = int(C.CPU_PROCESS_BASELINE if baseline is None else baseline)
        return sum(comps.values())
    allocated = sum(comps.values())
    details["cuda_max_allocated"] = int(allocated)
    comps["allocator_overhead"] = int(allocated * C.CUDA_RESERVED_OVER_ALLOCATED)
    comps["process_baseline"] = int(C.CUDA_CONTEXT)
    notes.append(f"CUDA: {allocated / GIB:.2f} GiB of tensors (torch.cuda.max_memory_allocated); the rest is "
                 "the caching allocator's reserve and the CUDA context")
    return allocated + comps["allocator_overhead"] + comps["process_baseline"]
