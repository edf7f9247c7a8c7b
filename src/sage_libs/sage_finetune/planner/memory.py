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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from . import constants as C
from .spec import ModelSpec

__all__ = ["RunShape", "Batch", "MemoryPlan", "plan_memory", "quantized_weight_bytes"]

GIB = 2**30
MIB = 2**20


@dataclass
class RunShape:
    """The settings of a run that change its memory and time (resolved from the configs by
    :func:`.plan.run_shape`)."""

    method: str = "lora"                 # lora, qlora, dora, lora_plus, full, freeze
    device: str = "cpu"                  # cpu or cuda
    processes: int = 1
    weight_bytes: int = 4                # bytes per base weight (the loaded dtype)
    autocast_bytes: int | None = None    # 2 under bf16/fp16 mixed precision
    quant_bits: int | None = None        # 4 or 8 (qlora)
    double_quant: bool = True
    lora_r: int = 8
    lora_targets: Any = ("q_proj", "v_proj")   # list of names or "all-linear"
    lora_dropout: float = 0.05
    use_dora: bool = False
    lora_layers: list[int] | None = None      # layers_to_transform
    modules_to_save: list[str] = field(default_factory=list)
    lora_bias: str = "none"
    freeze_layers: int = 2
    train_embeddings: bool = False
    train_lm_head: bool = False
    gradient_checkpointing: bool = False
    selective_logits: bool = True
    chunked_lm_loss: bool | None = None
    attention: str = "doc"               # doc (per-document sdpa), sdpa, eager, flash_attention_2
    padding_free: bool = True
    packing: bool = False
    optim: str = "adamw_torch"
    zero_stage: int = 0
    zero_offload: bool = False
    malloc_tuning: bool = True
    lora_dropout_cpu: bool = True        # CPU dropout keeps a float mask (GPU: a bool mask)
    mmap_weights: bool = True            # CPU: the checkpoint is read at its own dtype (memory-mapped)

    @property
    def is_lora(self) -> bool:
        return self.method in ("lora", "qlora", "dora", "lora_plus")

    @property
    def act_bytes(self) -> int:
        """Bytes of matmul outputs (activations)."""
        return self.autocast_bytes or self.weight_bytes

    @property
    def compute_weight_bytes(self) -> int:
        return self.autocast_bytes or self.weight_bytes


@dataclass
class Batch:
    """One micro-batch as the collator builds it: ``rows`` rows of ``row_len`` positions (padding
    included), the documents in it, and the positions whose next token is trained."""

    rows: int
    row_len: int
    doc_lengths: list[int]
    trained: int
    pairs: float | None = None   # attended (query, key) pairs, when given (an epoch's total)
    docs: int | None = None      # documents, when doc_lengths is not listed

    @property
    def tokens(self) -> int:
        return self.rows * self.row_len

    @property
    def n_docs(self) -> int:
        return self.docs if self.docs is not None else len(self.doc_lengths)

    @property
    def real_tokens(self) -> int:
        return sum(self.doc_lengths)


@dataclass
class MemoryPlan:
    """Bytes of each component; ``peak`` is what the run needs at its worst moment."""

    components: dict[str, int]
    peak: int
    device: str
    phase: str                       # where the peak falls: "loss", "backward", "optimizer", "load"
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def needed(self) -> int:
        """The peak without what the kernel can reclaim (clean checkpoint pages QLoRA no longer reads)."""
        return self.peak - int(self.details.get("reclaimable", 0))

    def gib(self, key: str = "peak") -> float:
        return (self.peak if key == "peak" else self.components[key]) / GIB


# ------------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------------
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
    data's token ids touch (unless the LM head is tied to it: the head reads every row). QLoRA on the CPU reads every linear weight once to quantize it, and the
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


# ------------------------------------------------------------------------------------------------
# Activations: bytes per token of one decoder layer
# ------------------------------------------------------------------------------------------------
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
            if n in adapted and drop:
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
    else:
        out.transient += 4 * H  # x * rsqrt
    # --- q, k, v
    out.saved += consumers_save(attn_in, H, res, in_grad)
    qkv_grad = in_grad or full or any(n in adapted for n in attn_in)
    for n in attn_in:
        m = lin[n]
        if n in adapted:
            out.transient += 3 * m.out_features * a  # base result, lora_B result, scaled
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
        out.transient += 3 * H * a
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
    else:
        out.transient += 4 * H
    # --- MLP
    out.saved += consumers_save(mlp_in, H, res)
    mlp_grad = h2_grad or full or any(n in adapted for n in mlp_in)
    for n in mlp_in:
        m = lin[n]
        if n in adapted:
            out.transient += 3 * m.out_features * a
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
            out.transient += 3 * H * a
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
# The loss
# ------------------------------------------------------------------------------------------------
def _loss_bytes(run: RunShape, spec: ModelSpec, lay: _Layout, batch: Batch) -> tuple[float, float, bool]:
    """(saved, transient at the start of backward, chunked) bytes of the LM head and the loss."""
    V, H = spec.vocab_size, spec.hidden_size
    n = batch.trained if run.selective_logits else batch.tokens
    chunkable = run.selective_logits and not lay.head_train and run.zero_stage == 0
    chunked = chunkable and (run.chunked_lm_loss if run.chunked_lm_loss is not None
                             else 4 * n * V > C.CHUNKED_AUTO_LOGITS_BYTES)
    if chunked:
        rows = max(1, C.CHUNK_LOGITS_BYTES // (4 * V))
        chunk = 4 * min(rows, n) * V
        saved = n * H * run.act_bytes + 4 * n      # grad of the hidden states and logsumexp, kept from forward
        transient = 2 * chunk                       # one chunk's logits and its gradient
        return saved, transient, True
    logits = 4 * n * V
    saved = logits                                  # float32 log-softmax
    if run.act_bytes != 4:
        saved += 0  # the 16-bit logits are freed once upcast
    transient = 2 * logits                          # the loss gradient and the logits gradient
    if lay.head_train:
        saved += n * H * run.act_bytes
    return saved, transient, False


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------
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


def plan_memory(spec: ModelSpec, run: RunShape, batch: Batch, *, baseline: int | None = None,
                weights_file: int | None = None, embedding_rows: int | None = None) -> MemoryPlan:
    """The memory plan of one process training ``batch`` (the largest micro-batch)."""
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
    saved_layers = []
    transient_total = 0.0
    frag = 0.0  # glibc: the part of the forward's freed bytes the heap cannot reuse (see constants)
    gc = run.gradient_checkpointing
    fixed_transient_max = 0.0
    in_grad = lay.embeddings_train or (gc and lay.first_grad_layer < spec.num_layers)
    for layer in range(spec.num_layers):
        rec_before = in_grad
        lb = _layer_bytes(run, spec, lay, layer, rec_before)
        recorded = not lb.nograd
        saved = lb.saved * T + lb.fixed_saved + (_eager_saved(run, spec, batch) if recorded else 0)
        saved_layers.append(saved)
        freed = lb.transient * T + lb.fixed_transient
        transient_total += freed
        if not recorded:
            frag += C.CPU_FRAG_NOGRAD * freed
        elif layer in lay.trainable_base_layers:
            frag += (C.CPU_FRAG_TRAINED_GC if gc else C.CPU_FRAG_TRAINED) * freed
        else:
            frag += (C.CPU_FRAG_ADAPTER_GC if gc else C.CPU_FRAG_ADAPTER) * freed
        if recorded:
            in_grad = True
        if run.quant_bits or run.use_dora:  # one dequantized weight (or DoRA's product) at a time
            fixed_transient_max = max(fixed_transient_max, max(
                (run.compute_weight_bytes if run.quant_bits else 4) * m.in_features * m.out_features
                for m in spec.linears()) * (2 if run.use_dora else 1))
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
    head_grad = (spec.head_params if lay.head_train and not spec.tie_word_embeddings else 0) * tb // shard
    fixed = fixed_transient_max  # a dequantized weight (qlora) or DoRA's product, at any moment
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
    phase = max(phases, key=lambda k: sum(phases[k]))
    grads_at, acts_at, trans_at = phases[phase]
    dynamic = grads_at + acts_at + trans_at

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
                               "chunked_lm_loss": chunked, "trainable_params": trainable,
                               "adapter_params": lay.adapter_params, "first_grad_layer": lay.first_grad_layer,
                               "optimizer": state_what, "saved_per_layer": [int(s) for s in saved_layers],
                               "forward_transients": int(transient_total),
                               "activations_after_forward": int(activations)}
    if run.device == "cpu" and run.quant_bits and run.mmap_weights:
        layer_linear = spec.num_layers * sum(m.in_features * m.out_features for m in spec.linears())
        details["reclaimable"] = run.weight_bytes * layer_linear
        notes.append(f"{run.weight_bytes * layer_linear / GIB:.2f} GiB of the base weights are the checkpoint's pages, "
                     "read once to quantize: resident (counted in RSS) until the kernel needs the memory")
    if run.device == "cpu":
        if not run.malloc_tuning:
            frag = C.CPU_FRAG_UNTUNED * transient_total
        comps["allocator_overhead"] = int(frag)
        proc = C.CPU_PROCESS_BASELINE if baseline is None else baseline
        comps["process_baseline"] = int(proc)
        peak = sum(comps.values())
    else:
        # CUDA: max_memory_allocated counts tensors only; the caching allocator and the context add
        allocated = sum(comps.values())
        details["cuda_max_allocated"] = int(allocated)
        comps["allocator_overhead"] = int(allocated * C.CUDA_RESERVED_OVER_ALLOCATED)
        comps["process_baseline"] = int(C.CUDA_CONTEXT)
        peak = allocated + comps["allocator_overhead"] + comps["process_baseline"]
        notes.append(f"CUDA: {allocated / GIB:.2f} GiB of tensors (torch.cuda.max_memory_allocated); the rest is "
                     "the caching allocator's reserve and the CUDA context")
    if stage:
        notes.append(f"DeepSpeed ZeRO-{stage} over {N} processes: optimizer states"
                     + (", gradients" if stage >= 2 else "") + (" and weights" if stage >= 3 else "")
                     + " sharded; communication buckets not counted")
    return MemoryPlan(components=comps, peak=int(peak), device=run.device, phase=phase, details=details,
                      notes=notes)
