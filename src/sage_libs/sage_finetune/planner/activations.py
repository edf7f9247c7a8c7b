"""Activations: the bytes per token one decoder layer keeps for backward and frees during its
forward (:func:`_layer_bytes`), what the attention kernel keeps, and the LM head and the loss
(:func:`_loss_bytes`). Pure arithmetic: no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..perf.constants import chunk_rows_for
from . import constants as C
from .shapes import Batch, RunShape
from .spec import ModelSpec
from .weights import _Layout

__all__: list[str] = []


@dataclass
class _LayerBytes:
    saved: float = 0.0        # per token, kept for backward
    transient: float = 0.0    # per token, allocated and freed during the forward
    fixed_saved: float = 0.0  # per layer, independent of tokens (DoRA's weight-sized products)
    fixed_transient: float = 0.0  # per layer (dequantized 4-bit weights, DoRA's B@A)
    nograd: bool = False      # below the first trained layer: nothing kept, transient = all it allocates


def _layer_bytes(run: RunShape, spec: ModelSpec, lay: _Layout, layer: int, in_grad: bool) -> _LayerBytes:
    H, Q, K, I = spec.hidden_size, spec.q_width, spec.kv_width, spec.intermediate_size
    a = run.act_bytes
    res = run.weight_bytes if not run.autocast_bytes else 4   # residual stream dtype
    lin = {m.name: m for m in spec.linears()}
    full = layer in lay.trainable_base_layers
    adapted = lay.adapted if layer in lay.adapted_layers else set()
    out = _LayerBytes()
    if not in_grad and not full and not adapted:
        # no autograd record: everything this layer allocates is freed during its forward
        rec = _layer_bytes(run, spec, lay, layer, True)
        out.transient = rec.saved + rec.transient
        out.nograd = True
        return out
    drop = run.is_lora and run.lora_dropout > 0

    def consumers_save(names: list[str], width: int, dtype: int, input_grad: bool = True) -> float:
        names = [n for n in names if n in lin]
        saved = 0.0
        shared = False
        for n in names:
            if n in adapted and drop and run.fused_lora:
                # perf/fused_lora: x kept once for all consumers, a bool dropout mask per module
                saved += width
                shared = True
            elif n in adapted and drop:
                # dropout(x) kept by lora_A, and, when a gradient flows into x, its mask: a float
                # tensor on the CPU, bool on CUDA
                saved += width * a + (width * (4 if run.lora_dropout_cpu else 1) if input_grad else 0)
                if full:
                    shared = True
            elif n in adapted or full:
                if run.autocast_bytes:
                    saved += width * run.autocast_bytes  # each linear keeps its own cast copy
                else:
                    shared = True
        return saved + (width * dtype if shared else 0.0)

    def branch_transient(m_in: int, m_out: int) -> float:
        """What an adapted linear's forward frees: perf/fused_lora's branch frees its dropout noise
        (the dropped input is computed in its buffer) and lora_B's output (scaled in place, added
        into the base output, which is the module's output); PEFT's frees the base output, lora_B's
        output and the scaled branch (the sum is the output)."""
        if drop and run.fused_lora:
            return (m_in + m_out) * a
        return 3 * m_out * a

    attn_in = [n for n in ("q_proj", "k_proj", "v_proj", "qkv_proj") if n in lin]
    mlp_in = [n for n in ("gate_proj", "up_proj", "gate_up_proj", "fc1") if n in lin]
    mlp_out = [n for n in ("down_proj", "fc2") if n in lin]
    norm_fp32_copy = 4 if res != 4 else 0  # RMSNorm upcasts a 16-bit input to float32

    # --- input norm
    if in_grad:
        out.saved += 4 * H + 4
    else:
        out.transient += norm_fp32_copy * H
    out.transient += 4 * H  # pow(2)
    if full:
        out.saved += res * H
    elif not run.fused_norms:
        out.transient += 4 * H  # x * rsqrt (perf/fused_norm multiplies it by the weight in place)
    # --- q, k, v
    out.saved += consumers_save(attn_in, H, res, in_grad)
    qkv_grad = in_grad or full or any(n in adapted for n in attn_in)
    for n in attn_in:
        m = lin[n]
        if n in adapted:
            out.transient += branch_transient(m.in_features, m.out_features)
            out.saved += run.lora_r * a
            if run.use_dora:
                out.saved += 2 * m.out_features * a
    # q and k: their projections and the rotary embedding's temporaries
    out.transient += 4.5 * (Q + K) * a
    if qkv_grad:
        out.saved += (Q + 2 * K) * a  # q, k after RoPE and v, kept by the attention kernel
        out.saved += _attention_saved_per_token(run, spec)
    else:
        out.transient += K * a
    # --- attention output -> o_proj
    o = lin["o_proj"]
    out.saved += consumers_save(["o_proj"], Q, a)
    if not (full or "o_proj" in adapted) or (drop and not full):
        out.transient += Q * a  # the concatenated attention output, when nothing keeps it
    if "o_proj" in adapted:
        out.transient += branch_transient(o.in_features, o.out_features)
        out.saved += run.lora_r * a + (2 * H * a if run.use_dora else 0)
    out.transient += o.out_features * a  # o_proj result (the residual add makes a new tensor)
    h2_grad = qkv_grad or "o_proj" in adapted
    # --- post-attention norm
    if h2_grad:
        out.saved += 4 * H + 4
    else:
        out.transient += norm_fp32_copy * H
    out.transient += 4 * H
    if full:
        out.saved += res * H
    elif not run.fused_norms:
        out.transient += 4 * H
    # --- MLP
    out.saved += consumers_save(mlp_in, H, res)
    mlp_grad = h2_grad or full or any(n in adapted for n in mlp_in)
    for n in mlp_in:
        m = lin[n]
        if n in adapted:
            out.transient += branch_transient(m.in_features, m.out_features)
            out.saved += run.lora_r * a + (2 * m.out_features * a if run.use_dora else 0)
    if spec.gated_mlp:
        if mlp_grad:
            out.saved += 3 * I * a       # gate (for the activation), activation and up (for their product)
        if any(n in adapted for n in mlp_out) and drop and not full or not (full or any(n in adapted for n in mlp_out)):
            out.transient += I * a       # act * up, when nothing keeps it
    else:
        if mlp_grad:
            out.saved += I * a
    out.saved += consumers_save(mlp_out, I, a)
    for n in mlp_out:
        if n in adapted:
            out.transient += branch_transient(lin[n].in_features, lin[n].out_features)
            out.saved += run.lora_r * a + (2 * H * a if run.use_dora else 0)
    out.transient += H * a  # down_proj result
    # --- per layer, independent of tokens
    linears = [lin[n] for n in lin]
    if run.use_dora and adapted:
        out.fixed_saved += sum(4 * m.in_features * m.out_features for m in linears if m.name in adapted)
        out.fixed_transient += 2 * sum(4 * m.in_features * m.out_features for m in linears if m.name in adapted)
    if run.quant_bits:
        # each 4/8-bit weight is dequantized to the compute dtype in forward and again in backward;
        # the glibc heap keeps about one layer's worth per layer (see constants)
        out.fixed_transient += C.CPU_DEQUANT_FRAGMENTATION / C.CPU_FRAG_ADAPTER * sum(
            run.compute_weight_bytes * m.in_features * m.out_features for m in linears)
    return out


def _attention_saved_per_token(run: RunShape, spec: ModelSpec) -> float:
    """What the attention kernel keeps per token besides q, k, v (sdpa/flash: the output and a
    float32 logsumexp per head; eager: see :func:`_eager_saved`)."""
    if run.attention == "eager":
        return spec.q_width * run.act_bytes  # the output; the probabilities are per document, below
    return spec.q_width * run.act_bytes + 4 * spec.num_heads


def _eager_saved(run: RunShape, spec: ModelSpec, batch: Batch) -> float:
    """Eager attention keeps the softmax probabilities: heads x L x L per row (padded/packed rows
    use the row length; padding-free rows the whole row, as eager builds one mask per row)."""
    if run.attention != "eager":
        return 0.0
    per_row = batch.row_len * batch.row_len
    return batch.rows * spec.num_heads * per_row * (run.act_bytes + 4)


# ------------------------------------------------------------------------------------------------
# The forward of the largest batch through every decoder layer
# ------------------------------------------------------------------------------------------------
@dataclass
class _Forward:
    saved_layers: list[float]   # bytes each layer keeps for backward
    freed: float                # bytes the layers allocate and free during the forward
    frag: float                 # glibc: the part of the freed bytes the heap cannot reuse (see constants)
    fixed_transient: float      # a dequantized weight (qlora) or DoRA's product, alive at any moment
    grad_out: bool              # a gradient flows out of the last layer (into the final norm)
    largest_tensor: float = 0.0  # bytes of the widest activation (tokens x max(hidden, intermediate))


def _forward(run: RunShape, spec: ModelSpec, lay: _Layout, batch: Batch) -> _Forward:
    T = batch.tokens
    gc = run.gradient_checkpointing
    out = _Forward(saved_layers=[], freed=0.0, frag=0.0, fixed_transient=0.0,
                   grad_out=lay.embeddings_train or (gc and lay.first_grad_layer < spec.num_layers),
                   largest_tensor=T * max(spec.hidden_size, spec.intermediate_size, spec.q_width) * run.act_bytes)
    for layer in range(spec.num_layers):
        lb = _layer_bytes(run, spec, lay, layer, out.grad_out)
        recorded = not lb.nograd
        out.saved_layers.append(lb.saved * T + lb.fixed_saved + (_eager_saved(run, spec, batch) if recorded else 0))
        freed = lb.transient * T + lb.fixed_transient
        out.freed += freed
        if not recorded:
            out.frag += C.CPU_FRAG_NOGRAD * freed
        elif layer in lay.trainable_base_layers:
            out.frag += (C.CPU_FRAG_TRAINED_GC if gc else C.CPU_FRAG_TRAINED) * freed
        else:
            out.frag += (C.CPU_FRAG_ADAPTER_GC if gc else C.CPU_FRAG_ADAPTER) * freed
        if recorded:
            out.grad_out = True
        if run.quant_bits or run.use_dora:  # one dequantized weight (or DoRA's product) at a time
            out.fixed_transient = max(out.fixed_transient, max(
                (run.compute_weight_bytes if run.quant_bits else 4) * m.in_features * m.out_features
                for m in spec.linears()) * (2 if run.use_dora else 1))
    return out


# ------------------------------------------------------------------------------------------------
# The loss
# ------------------------------------------------------------------------------------------------
def loss_is_chunked(run: RunShape, lay: _Layout) -> bool:
    """Whether the LM head and the loss run in chunks (perf.chunked_ce; ``chunked_lm_loss`` null or
    true): perf.selective_logits.lm_head_for_chunking takes a plain Linear head, trained (full,
    freeze) or tied; LoRA's modules_to_save wraps it (not plain); ZeRO-3 weights are stubs."""
    chunkable = run.selective_logits and not (run.is_lora and lay.head_train) and run.zero_stage == 0
    return chunkable and run.chunked_lm_loss is not False


def loss_chunks(spec: ModelSpec, positions: float) -> int:
    """How many chunks the chunked loss runs for ``positions`` scored positions."""
    return max(1, math.ceil(positions / chunk_rows_for(spec.vocab_size, C.CHUNK_LOGITS_BYTES)))


def _loss_bytes(run: RunShape, spec: ModelSpec, lay: _Layout, batch: Batch) -> tuple[float, float, bool]:
    """(saved, transient at the start of backward, chunked) bytes of the LM head and the loss."""
    V, H = spec.vocab_size, spec.hidden_size
    n = batch.trained if run.selective_logits else batch.tokens
    chunked = loss_is_chunked(run, lay)
    if chunked:
        rows = chunk_rows_for(V, C.CHUNK_LOGITS_BYTES)
        chunk = 4 * min(rows, n) * V
        saved = n * H * run.act_bytes + 4 * n      # grad of the hidden states and logsumexp, kept from forward
        if lay.head_train:  # the head's float32 gradient, accumulated chunk by chunk from forward on
            saved += 4 * V * H
        # one float32 chunk buffer, reused by every chunk (its softmax and gradient are computed in
        # place; preference log-probabilities in one chunk keep it for backward: the same block);
        # a 16-bit matmul adds its output and the gradient's 16-bit copy
        transient = chunk + (min(rows, n) * V * run.act_bytes if run.act_bytes != 4 else 0)
        return saved, transient, True
    logits = 4 * n * V
    saved = logits                                  # float32 log-softmax
    if run.act_bytes != 4:
        saved += 0  # the 16-bit logits are freed once upcast
    transient = 2 * logits                          # the loss gradient and the logits gradient
    if lay.head_train:
        saved += n * H * run.act_bytes
    return saved, transient, False

