"""What to change so that a run fits a memory budget, as options the user can paste.

In order: the largest per-device batch that fits, with the gradient accumulation that keeps the
global batch (processes x batch x accumulation); gradient checkpointing when even one sample per
device does not fit without it; QLoRA (4-bit base) for LoRA methods when the weights themselves do
not fit; and the sequence-length cut-off that fits, with how many samples it truncates.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .batches import largest_batch, truncated_at
from .memory import plan_memory, smaller_first_loss_block
from .step_time import time_plan


@dataclass
class Option:
    """One line of the suggestions table: a change and what it gives."""

    label: str
    batch_size: int
    grad_accum: int
    gradient_checkpointing: bool
    method: str
    max_seq_length: int
    truncates: int
    peak: int
    step_seconds: float | None
    fits: bool | None
    overrides: list[str] = field(default_factory=list)

__all__ = ["suggestions"]


def _evaluate(plan: Any, run: Any, batch_size: int, max_len: int, *, weights_file: int | None,
              baseline: int | None) -> int:
    batch = largest_batch(plan.lengths, batch_size, padding_free=run.padding_free, max_seq_length=max_len)
    odds = smaller_first_loss_block(plan.spec, run, plan.lengths, batch_size, group_by_length=plan.group_by_length,
                                    max_seq_length=max_len)
    return plan_memory(plan.spec, run, batch, weights_file=weights_file, baseline=baseline,
                       embedding_rows=plan.lengths.distinct_tokens, smaller_first_block=odds).needed


def _step_seconds(plan: Any, run: Any, batch_size: int, grad_accum: int, max_len: int, **kw: Any) -> float | None:
    if plan.time is None or plan.time.throughput is None:
        return None
    batch = largest_batch(plan.lengths, batch_size, padding_free=run.padding_free, max_seq_length=max_len)
    trainable = plan_memory(plan.spec, run, batch).details["trainable_params"]
    t = time_plan(plan.spec, run, plan.lengths, batch_size=batch_size, grad_accum=grad_accum,
                  tp=plan.time.throughput, largest=batch, trainable=trainable, max_seq_length=max_len, **kw)
    return t.step_seconds


def _accumulation(global_batch: int, batch_size: int, processes: int) -> int:
    return max(1, math.ceil(global_batch / (batch_size * processes)))


def _overrides(plan: Any, batch_size: int, grad_accum: int, gc: bool, method: str, max_len: int) -> list[str]:
    out = []
    if batch_size != plan.batch_size:
        out.append(f"training.per_device_train_batch_size={batch_size}")
    if grad_accum != plan.grad_accum:
        out.append(f"training.gradient_accumulation_steps={grad_accum}")
    if gc != plan.run.gradient_checkpointing:
        out.append(f"training.gradient_checkpointing={'true' if gc else 'false'}")
    if method != plan.run.method:
        out.append(f"method={method}")
    if max_len != plan.max_seq_length:
        out.append(f"training.max_seq_length={max_len}")
    return out


def suggestions(plan: Any, *, weights_file: int | None = None, baseline: int | None = None, **time_kw: Any) -> list:
    """The rows of the suggestions table (the current run first)."""
    run, budget = plan.run, plan.budget
    procs = run.processes
    global_batch = plan.batch_size * plan.grad_accum * procs
    max_len = plan.max_seq_length
    already = plan.lengths.truncated

    def fits(peak: int) -> bool | None:
        return None if budget is None else peak <= budget

    def option(label: str, r: Any, b: int, gc: bool, method: str, length: int, peak: int | None = None) -> Any:
        ga = _accumulation(global_batch, b, procs) if b != plan.batch_size else plan.grad_accum
        peak = _evaluate(plan, r, b, length, weights_file=weights_file, baseline=baseline) if peak is None else peak
        return Option(label=label, batch_size=b, grad_accum=ga, gradient_checkpointing=gc, method=method,
                      max_seq_length=length, truncates=truncated_at(plan.lengths.lengths, length) if length < max_len else already,
                      peak=peak, step_seconds=_step_seconds(plan, r, b, ga, length, **time_kw), fits=fits(peak),
                      overrides=_overrides(plan, b, ga, gc, method, length))

    current = Option(label="as configured", batch_size=plan.batch_size, grad_accum=plan.grad_accum,
                     gradient_checkpointing=run.gradient_checkpointing, method=run.method, max_seq_length=max_len,
                     truncates=already, peak=plan.memory.needed,
                     step_seconds=plan.time.step_seconds if plan.time else None, fits=fits(plan.memory.needed))
    out = [current]
    if budget is None:
        return out

    def largest_fitting(r: Any, length: int) -> int | None:
        """The largest per-device batch (at most the global batch) that fits, by bisection."""
        hi = max(global_batch // procs, 1)
        if _evaluate(plan, r, 1, length, weights_file=weights_file, baseline=baseline) > budget:
            return None
        lo = 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _evaluate(plan, r, mid, length, weights_file=weights_file, baseline=baseline) <= budget:
                lo = mid
            else:
                hi = mid - 1
        # prefer a batch that divides the global batch exactly (the same global batch)
        per_device = max(global_batch // procs, 1)
        for b in range(lo, 0, -1):
            if per_device % b == 0 and b * 2 > lo:
                return b
        return lo

    b = largest_fitting(run, max_len)
    if b is not None and b != plan.batch_size:
        out.append(option("largest batch that fits" if b > plan.batch_size else "smaller batch",
                          run, b, run.gradient_checkpointing, run.method, max_len))
    gc_run = dataclasses.replace(run, gradient_checkpointing=True)
    if not run.gradient_checkpointing and (b is None or (current.fits is False and b < plan.batch_size)):
        bg = largest_fitting(gc_run, max_len)
        if bg is not None:
            out.append(option("gradient checkpointing", gc_run, bg, True, run.method, max_len))
    need_more = b is None and (run.gradient_checkpointing or largest_fitting(gc_run, max_len) is None)
    if need_more and run.method in ("lora", "dora", "lora_plus") and not run.quant_bits:
        q_run = dataclasses.replace(gc_run, method="qlora", quant_bits=4, double_quant=True)
        bq = largest_fitting(q_run, max_len)
        if bq is not None:
            out.append(option("QLoRA (4-bit base)", q_run, bq, True, "qlora", max_len))
    # the longest sequence-length cut-off that fits at the configured batch (else at one sample)
    if current.fits is False:
        use = run if b is not None else gc_run
        cuts = _cutoffs(plan.lengths.lengths, max_len)
        for size in (plan.batch_size, 1):
            cut = next((c for c in cuts if _evaluate(plan, use, size, c, weights_file=weights_file,
                                                     baseline=baseline) <= budget), None)
            if cut is not None:
                out.append(option(f"cut sequences at {cut}", use, size, use.gradient_checkpointing, run.method, cut))
                break
    if len(out) == 1 or all(o.fits is False for o in out):
        if current.fits is False and not any(o.fits for o in out):
            plan.notes.append("nothing tried fits this budget: a smaller model, more memory, or several devices "
                              "with DeepSpeed ZeRO-3 (training.deepspeed)")
    return out


def _cutoffs(lengths: list[int], current: int) -> list[int]:
    """Candidate max_seq_length values below ``current``, longest first: powers of two and the
    lengths at a few percentiles of the data."""
    s = sorted(lengths)
    cands = {2**k for k in range(6, 20) if 2**k < current}
    for q in (0.99, 0.95, 0.9, 0.75, 0.5):
        if s:
            v = s[min(len(s) - 1, int(q * len(s)))]
            if 16 <= v < current:
                cands.add(v)
    return sorted(cands, reverse=True)
