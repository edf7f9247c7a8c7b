"""Time per optimizer step, per epoch and in all, of a run shape over data of given lengths (the
time half of a :class:`.plan.Plan`; :mod:`.timing` prices one batch)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from . import constants as C
from .activations import loss_chunks, loss_is_chunked
from .batches import Lengths, epoch_total
from .shapes import Batch, RunShape
from .spec import ModelSpec
from .timing import Cost, Throughput, seconds, step_cost
from .weights import _layout

__all__ = ["TimePlan", "time_plan", "batch_cost", "optimizer_step_seconds"]


@dataclass
class TimePlan:
    step_seconds: float            # mean optimizer step (gradient accumulation included)
    largest_step_seconds: float    # the step with the largest micro-batches
    epoch_seconds: float
    steps_per_epoch: int
    total_steps: int
    total_seconds: float
    epoch_flops: float
    throughput: Throughput | None


def optimizer_step_seconds(run: RunShape, trainable: int, tp: Throughput) -> float:
    """AdamW over the trainable weights (and gradient clipping): memory-bound passes over float32
    weights, gradients and two states, at the rate the probe measured on weights larger than the
    caches (else ~8 passes at the elementwise ``bandwidth``)."""
    per_param = tp.optimizer_seconds_per_param or 32.0 / tp.bandwidth
    if run.device == "cpu" and not run.malloc_tuning:
        per_param += 8.0 * tp.fault_seconds_per_byte  # the untuned heap maps the two temporaries afresh
    return per_param * trainable + C.STEP_OVERHEAD_SECONDS


def time_plan(spec: ModelSpec, run: RunShape, lengths: Lengths, *, batch_size: int, grad_accum: int,
              tp: Throughput, epochs: float, max_steps: int, seed: int, group_by_length: bool, largest: Batch,
              trainable: int, max_seq_length: int | None = None, preference: bool = False) -> TimePlan:
    """``largest``: the batch with the largest micro-batches (its step is ``largest_step_seconds``);
    ``trainable``: trainable parameters (the optimizer step)."""
    aggregate, micro = epoch_total(lengths, batch_size, run, group_by_length=group_by_length, seed=seed,
                                   max_seq_length=max_seq_length)
    empty = Batch(rows=0, row_len=0, doc_lengths=[], trained=0, pairs=0.0, docs=0)
    # preference log-probabilities over more than one chunk recompute the head in backward: decided
    # per micro-batch, here by the mean one's scored positions
    mean_trained = aggregate.trained / max(micro, 1)
    total = batch_cost(spec, run, aggregate, preference, mean_trained) + batch_cost(
        spec, run, empty, preference, mean_trained).scaled(max(micro - 1, 0))
    steps_per_epoch = max(1, math.ceil(micro / grad_accum))
    opt = optimizer_step_seconds(run, trainable, tp)
    epoch = seconds(total, tp) + steps_per_epoch * opt
    step = epoch / steps_per_epoch
    largest_step = grad_accum * seconds(batch_cost(spec, run, largest, preference), tp) + opt
    total_steps = max_steps if max_steps > 0 else math.ceil(steps_per_epoch * epochs)
    return TimePlan(step_seconds=step, largest_step_seconds=largest_step, epoch_seconds=epoch,
                    steps_per_epoch=steps_per_epoch, total_steps=total_steps, total_seconds=step * total_steps,
                    epoch_flops=total.useful_flops, throughput=tp)


def batch_cost(spec: ModelSpec, run: RunShape, batch: Batch, preference: bool,
               micro_batch_trained: float | None = None) -> Cost:
    """``batch``'s forward and backward (a micro-batch, or an epoch's micro-batches summed, whose
    mean scored positions are ``micro_batch_trained``); with ``preference`` also the reference's
    forward, and the chunked head's second pass."""
    cost = step_cost(spec, run, batch)
    if not preference:
        return cost
    per_batch = micro_batch_trained if micro_batch_trained is not None else batch.trained
    if loss_is_chunked(run, _layout(run, spec)) and loss_chunks(spec, per_batch) > 1:
        # the chunked log-probabilities (perf.chunked_ce.ChunkedLinearTokenLogps) over more than one
        # chunk compute each chunk's logits again in backward: one more pass of the head over the
        # scored positions (one chunk keeps its softmax for backward instead)
        cost = cost + Cost(matmul_flops=2.0 * spec.hidden_size * spec.vocab_size * batch.trained)
    if run.is_lora:
        # the reference: a forward with the adapter disabled and no graph, which is what a run with
        # nothing trained costs (step_cost counts no backward for it)
        cost = cost + step_cost(spec, dataclasses.replace(run, method="freeze", freeze_layers=0,
                                                          gradient_checkpointing=False), batch)
    return cost
