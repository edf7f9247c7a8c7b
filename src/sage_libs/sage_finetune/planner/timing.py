"""Time of a training step: useful FLOPs of the actual token lengths over the machine's throughput.

Per micro-batch (pure arithmetic, no torch):

* **matmul FLOPs**: every linear layer a token goes through, 2 x in x out forward; backward the
  gradient of its input (2 x in x out, where a gradient has to flow) and of its weight when it
  trains; LoRA adds 2 x r x (in + out) forward and twice that backward per adapted layer;
  gradient checkpointing runs the recorded layers' forward twice; frozen layers below the first
  trained one run forward only;
* **attention FLOPs**: 4 x (heads x head_dim) per attended (query, key) pair forward, twice that
  backward; padding-free rows attend within each document (sum of n(n+1)/2 pairs), padded and
  packed rows with sdpa or eager over the whole row;
* **the LM head**: 2 x hidden x vocab per position it runs at (the trained ones with selective
  logits), forward and the input gradient backward;
* **memory traffic** of everything else (norms, activations, RoPE, residual adds, LoRA's scaling,
  the loss, dequantizing 4-bit weights): about three passes over the bytes the forward allocates;
* **op overhead**: a fixed cost per tensor operation (dispatch, autograd bookkeeping, thread
  wake-ups), which dominates for tiny models;
* **page faults** (CPU, ``malloc_tuning`` off): blocks over the fixed mmap threshold come from fresh
  mappings every step and are returned when freed, so the bytes of every activation that large are
  faulted in again each time they are allocated (forward, the recompute of gradient checkpointing,
  and their gradients in backward).

The time is ``matmul / matmul_rate + attention / attention_rate + traffic / bandwidth + ops x
op_cost``, divided by an efficiency factor; the rates come from :mod:`.probe` (measured on this
machine) or from ``--tflops``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .activations import _layer_bytes
from .constants import RETURNED_BLOCK_BYTES
from .shapes import Batch, RunShape
from .spec import ModelSpec
from .weights import _layout

__all__ = ["Cost", "step_cost", "attention_pairs", "Throughput", "seconds"]


@dataclass
class Cost:
    matmul_flops: float = 0.0
    attention_flops: float = 0.0
    traffic_bytes: float = 0.0
    ops: float = 0.0
    attention_calls: float = 0.0
    attention_queries: float = 0.0  # 4 x width per query row and pass: the kernel's per-row work
    random_elements: float = 0.0  # dropout masks drawn (bernoulli)
    dequant_bytes: float = 0.0
    faulted_bytes: float = 0.0  # fresh pages touched (untuned allocator: large blocks mapped every step)
    useful_flops: float = 0.0  # matmul + attention without recomputation (for MFU)

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))

    def scaled(self, k: float) -> "Cost":
        return Cost(*(getattr(self, f) * k for f in self.__dataclass_fields__))


@dataclass
class Throughput:
    """What this machine sustains (measured by :func:`.probe.run_probe`, or given)."""

    matmul_flops: float              # FLOP/s of large matmuls in the compute dtype
    attention_flops: float           # FLOP/s of the attention kernel
    bandwidth: float                 # bytes/s of elementwise kernels
    op_seconds: float = 20e-6        # per tensor operation
    attention_call_seconds: float = 0.0  # fixed cost of one attention kernel call (forward or backward)
    attention_row_pairs: float = 0.0    # per query row, the kernel costs as much as this many more pairs
    random_seconds: float = 2e-9     # per random number drawn (dropout masks)
    dequant_bytes_per_s: float = 2e9  # bitsandbytes dequantization (bytes of output per second)
    fault_seconds_per_byte: float = 0.5e-9  # faulting in a fresh page, per byte (2 us per 4 KiB page here)
    optimizer_seconds_per_param: float = 0.0  # AdamW's update and gradient clipping per float32 weight
    #                                          (0: 32 bytes over ``bandwidth``)
    efficiency: float = 1.0          # measured step time over the model's, on the probe's mini step
    source: str = "given"
    details: dict = field(default_factory=dict)


# ops per decoder layer and step (forward + backward), counted from the dispatcher on a Llama layer
_OPS_BASE_LAYER = 120
_OPS_PER_ADAPTER = 30
_OPS_PER_DOC = 12


def attention_pairs(run: RunShape, rows: int, row_len: int, doc_lengths: list[int]) -> float:
    """(query, key) pairs the attention kernel computes for one batch: within each document for
    padding-free rows and per-document kernels (causal: n(n+1)/2), over the whole padded or packed
    row otherwise (sdpa with a mask computes the causal half of every row, eager all of it)."""
    if (run.padding_free or run.packing) and run.attention in ("doc", "flash_attention_2", "flash_attention_3"):
        return sum(n * (n + 1) / 2 for n in doc_lengths)
    if run.attention in ("flash_attention_2", "flash_attention_3"):
        return rows * row_len * (row_len + 1) / 2
    if run.padding_free:  # sdpa/eager over one long row with a block-diagonal mask
        row_len = sum(doc_lengths)
        rows = 1
    return rows * row_len * row_len * (0.5 if run.attention != "eager" else 1.0)


def step_cost(spec: ModelSpec, run: RunShape, batch: Batch) -> Cost:
    """The cost of one micro-batch (forward, backward; not the optimizer)."""
    lay = _layout(run, spec)
    T = batch.tokens
    H, V = spec.hidden_size, spec.vocab_size
    Q = spec.q_width
    pairs = batch.pairs if batch.pairs is not None else attention_pairs(run, batch.rows, batch.row_len,
                                                                        batch.doc_lengths)
    linears = spec.linears()
    expert_share = (spec.experts_per_token / spec.num_experts) if spec.num_experts else 1.0
    cost = Cost()
    in_grad = lay.embeddings_train or (run.gradient_checkpointing and lay.first_grad_layer < spec.num_layers)
    for layer in range(spec.num_layers):
        full = layer in lay.trainable_base_layers
        adapted = lay.adapted if layer in lay.adapted_layers else set()
        recorded = in_grad or full or bool(adapted)
        fwd = bwd = 0.0
        ops = _OPS_BASE_LAYER / 3 + _OPS_PER_DOC * batch.n_docs / 3
        for m in linears:
            share = expert_share if m.kind.startswith("mlp") and spec.num_experts else 1.0
            w = 2.0 * m.in_features * m.out_features * T * share
            fwd += w
            if recorded:
                # the input gradient is needed unless this is the first recorded layer's q/k/v with no
                # gradient flowing in (gradient checkpointing's enable_input_require_grads asks for it)
                if in_grad or m.kind != "attn_in":
                    bwd += w
                if full:
                    bwd += w
            if m.name in adapted:
                lw = 2.0 * run.lora_r * (m.in_features + m.out_features) * T * share
                fwd += lw
                bwd += 2 * lw
                ops += _OPS_PER_ADAPTER / 3
                if run.lora_dropout > 0:
                    cost.random_elements += m.in_features * T * (2 if recorded and run.gradient_checkpointing else 1)
                if run.use_dora:
                    fwd += 2.0 * run.lora_r * m.in_features * m.out_features  # B @ A for the weight norm
        att = 4.0 * Q * pairs
        cost.matmul_flops += fwd + (fwd if recorded and run.gradient_checkpointing else 0) + bwd
        passes = 1 + (2 if recorded else 0) + (1 if recorded and run.gradient_checkpointing else 0)
        cost.attention_flops += att * passes
        cost.attention_queries += 4.0 * Q * T * passes
        calls = 1 + (1 if recorded else 0) + (1 if recorded and run.gradient_checkpointing else 0)
        cost.attention_calls += (batch.n_docs if run.attention == "doc" else batch.rows) * calls
        cost.useful_flops += fwd + bwd + att * (3 if recorded else 1)
        lb = _layer_bytes(run, spec, lay, layer, in_grad)
        per_token = lb.saved + lb.transient
        if not recorded:  # frozen layers below the first trained one: forward traffic only
            per_token = lb.transient
        passes = 3 if recorded else 1
        if recorded and run.gradient_checkpointing:
            passes += 1
        cost.traffic_bytes += passes * per_token * T + passes * lb.fixed_transient / 2
        if run.device == "cpu" and not run.malloc_tuning and T * H * run.act_bytes > RETURNED_BLOCK_BYTES:
            # allocated afresh (forward, checkpointing's recompute) and their gradients in backward
            allocations = (1 + (1 if recorded else 0) + (1 if recorded and run.gradient_checkpointing else 0))
            cost.faulted_bytes += allocations * (lb.saved + lb.transient) * T
        cost.ops += ops * (3 if recorded else 1) * (4 / 3 if recorded and run.gradient_checkpointing else 1)
        if run.quant_bits:
            dq = sum(m.in_features * m.out_features for m in linears) * run.compute_weight_bytes
            cost.dequant_bytes += dq * ((2 if recorded else 1) + (1 if recorded and run.gradient_checkpointing else 0))
        if recorded:
            in_grad = True
    n = batch.trained if run.selective_logits else T
    head = 2.0 * H * V * n
    head_total = head * (1 + (1 if in_grad else 0) + (1 if lay.head_train else 0))
    cost.matmul_flops += head_total
    cost.useful_flops += head_total
    cost.traffic_bytes += 3 * 4 * n * V * 2
    cost.ops += 60
    return cost


def seconds(cost: Cost, tp: Throughput) -> float:
    t = (cost.matmul_flops / tp.matmul_flops
         + (cost.attention_flops + tp.attention_row_pairs * cost.attention_queries) / tp.attention_flops
         + cost.traffic_bytes / tp.bandwidth + cost.ops * tp.op_seconds
         + cost.attention_calls * tp.attention_call_seconds + cost.random_elements * tp.random_seconds
         + cost.dequant_bytes / tp.dequant_bytes_per_s + cost.faulted_bytes * tp.fault_seconds_per_byte)
    return t / tp.efficiency
