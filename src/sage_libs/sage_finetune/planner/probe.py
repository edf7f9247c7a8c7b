"""The calibration probe: about two seconds of torch on this machine, at the plan's own shapes.

It measures the rates :func:`.timing.seconds` divides by, then an efficiency factor:

* the **matmul rate** of the compute dtype on ``(rows x hidden) @ (hidden x intermediate)``
  products (the shapes of the model's MLP, capped to about a GFLOP each);
* the **attention kernel** (causal sdpa, forward and backward, the model's heads) at three document
  lengths: a fixed cost per call, a rate for the (query, key) pairs and a fixed cost per query row
  (why short documents run at a lower rate than long ones);
* the **bandwidth** of elementwise kernels, the **cost of one small autograd operation** and of a
  random number (CPU dropout draws a mask per adapted input);
* the **optimizer step** per weight (gradient clipping and AdamW on a 32 MiB weight: memory, not
  the caches, bounds a full fine-tune's update);
* the **efficiency factor**: a miniature training step, one decoder layer of this model (its
  width, heads, MLP and, for LoRA methods, adapters of the run's rank on the run's targets, with
  dropout when the run has it; a frozen layer with an input gradient when most layers the backward
  goes through train nothing, as in freeze tuning under gradient checkpointing) on as many tokens
  of the batch as the budget allows at a nominal rate (:data:`.constants.PROBE_NOMINAL_FLOPS`), in
  documents as long as the data's typical ones, timed forward and backward in three windows between
  the other timings (the fastest window counts) and compared with what
  :func:`.timing.step_cost` predicts for it from the rates above, relative to the same ratio on
  the development machine running alone (:data:`.constants.PROBE_MINI_STEP_EFFICIENCY`). The
  plan's time is the cost model's divided by this factor: on a machine shared with other jobs, or
  one whose small operations are slower, steps take longer than the rates alone say.

Every timing is a median (a training run meets the machine as it is, other jobs included); the mini
step's is the fastest of three medians, since one slow second of a shared host would otherwise set
the whole plan. Only this module imports torch; the planner's arithmetic does not.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from . import constants as C
from .shapes import Batch, RunShape
from .spec import ModelSpec
from .timing import Throughput, seconds, step_cost
from .weights import _layout

__all__ = ["run_probe"]

_cache: dict[tuple, Throughput] = {}
_clock = time.perf_counter  # what the probe times with (wall clock; calibration scripts may use CPU time)


def _median(fn: Any, reps: int, budget: float, warm: bool = True) -> float:
    """The median of up to ``reps`` timed calls within ``budget`` seconds, after one warm-up call
    (unless ``warm`` is false: ``fn`` has run before)."""
    start = _clock()
    if warm:
        fn()
    times = []
    for _ in range(reps):
        t = _clock()
        fn()
        times.append(_clock() - t)
        if _clock() - start > budget:
            break
    times.sort()
    return times[len(times) // 2]


# Each timing allocates its tensors in its own frame: they are freed when it returns.
def _time_matmul(torch: Any, rows: int, H: int, I: int, dt: Any, dev: Any, sync: Any, budget: float) -> float:
    """Seconds of one ``(rows x H) @ (H x I)`` product."""
    a = torch.randn(rows, H, dtype=dt, device=dev)
    b = torch.randn(H, I, dtype=dt, device=dev)
    return _median(lambda: (a @ b, sync()), 15, budget)


def _time_add(torch: Any, elems: int, dev: Any, sync: Any, budget: float) -> float:
    """Seconds of one float32 ``x + y`` into a preallocated output of ``elems`` elements."""
    x, y = torch.randn(elems, device=dev), torch.randn(elems, device=dev)
    z = torch.empty_like(x)
    return _median(lambda: (torch.add(x, y, out=z), sync()), 9, budget)


def _time_optimizer(torch: Any, elems: int, dev: Any, sync: Any, budget: float) -> float:
    """Seconds per weight of what a step does after backward, on one float32 weight of ``elems``
    elements, larger than the caches as a full fine-tune's embeddings and head are (a LoRA run's
    few weights make the term negligible): gradient clipping (a norm and a scale) and the passes of
    single-tensor AdamW (the CPU default: decay, two moment updates, square root and quotient into
    two weight-sized temporaries, the update). The temporaries are preallocated, as the tuned
    heap reuses them; the untuned one faults them in every step, which the time model adds."""
    weight, grad, avg, avg_sq, root, denom = (torch.rand(elems, device=dev) for _ in range(6))

    def step() -> None:
        torch.linalg.vector_norm(grad)
        grad.mul_(1.0)
        weight.mul_(1 - 1e-6)
        avg.lerp_(grad, 0.1)
        avg_sq.mul_(0.999).addcmul_(grad, grad, value=0.001)
        torch.sqrt(avg_sq, out=root)
        torch.div(root, 0.99, out=denom).add_(1e-8)
        weight.addcdiv_(avg, denom, value=-1e-4)
        sync()

    return _median(step, 5, budget) / elems


def _time_bernoulli(torch: Any, elems: int, dt: Any, dev: Any, sync: Any, budget: float) -> float:
    """Seconds of drawing a dropout mask of ``elems`` elements (``bernoulli_``)."""
    mask = torch.empty(elems, dtype=dt, device=dev)
    return _median(lambda: (mask.bernoulli_(0.9), sync()), 9, budget)


def _time_page_faults(torch: Any, nbytes: int, dev: Any, budget: float) -> float:
    """Seconds per byte of faulting in fresh pages: filling a block that was just mapped (allocated
    above the allocator's mmap threshold, as the untuned allocator does for large blocks) against
    filling one already resident. CPU only."""
    from ..perf import allocator

    if dev.type != "cpu" or allocator._mode == "speed":  # the tuned heap keeps freed blocks: nothing fresh to time
        return Throughput.fault_seconds_per_byte
    # a 64 MiB block is over glibc's mmap threshold (at most 32 MiB): mapped afresh on every allocation
    elems = nbytes // 4
    warm_block = torch.empty(elems)
    warm = _median(lambda: warm_block.fill_(1.0), 5, budget / 2)
    fresh = _median(lambda: torch.empty(elems).fill_(1.0), 5, budget / 2)
    return max(0.0, fresh - warm) / nbytes


def _mini_spec(spec: ModelSpec, max_layer_params: float = 40e6) -> ModelSpec:
    """One decoder layer of ``spec`` (scaled down in width when it is very large), no vocabulary."""
    k = 1.0
    if spec.layer_params() > max_layer_params:
        k = (max_layer_params / spec.layer_params()) ** 0.5
    hd = spec.head_dim
    heads = max(1, int(spec.num_heads * k))
    kv = max(1, min(spec.num_kv_heads, heads))
    while heads % kv:
        kv -= 1
    hidden = spec.hidden_size if k == 1 else max(hd, heads * hd)
    inter = spec.intermediate_size if k == 1 else max(hd, int(spec.intermediate_size * k))
    return dataclasses.replace(spec, hidden_size=hidden, num_layers=1, num_heads=heads, num_kv_heads=kv,
                               intermediate_size=inter, vocab_size=0, tie_word_embeddings=True, num_experts=0,
                               notes=[])


def run_probe(spec: ModelSpec, run: RunShape | None = None, *, doc_length: int = 512, tokens: int = 2048,
              dtype: str = "float32", device: str = "cpu", budget: float = 2.0, cache: bool = True) -> Throughput:
    """Measure this machine at the shapes of ``spec`` trained as ``run`` on batches of ``tokens``
    tokens in documents of about ``doc_length`` (about ``budget`` seconds)."""
    run = run or RunShape(method="lora", lora_r=16, lora_targets="all-linear", lora_dropout=0.0)
    doc_length = max(16, min(int(doc_length), 1024))
    mini = _mini_spec(spec)
    frozen = _mostly_frozen_through(spec, run)
    key = (mini.hidden_size, mini.intermediate_size, mini.num_heads, mini.num_kv_heads, mini.head_dim, run.method,
           run.lora_r, str(run.lora_targets), run.lora_dropout > 0, frozen, doc_length, tokens, dtype, device,
           run.malloc_tuning)
    if cache and key in _cache:
        return _cache[key]
    import torch

    dt = getattr(torch, dtype)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    H, I = mini.hidden_size, mini.intermediate_size
    # ---- matmul
    rows = max(64, min(1024, int(1e9 / (2 * H * I))))
    matmul_rate = 2.0 * rows * H * I / _time_matmul(torch, rows, H, I, dt, dev, sync, 0.2 * budget)
    # ---- the efficiency's mini step: one decoder layer of this run, sized to take about a tenth of
    # the budget at a nominal rate (a fixed size: the step's efficiency depends on it, and the
    # measured rate moves from run to run), or at twice the measured one on a machine slower than
    # half of it (a loaded one, a slower GPU), so the probe stays within its budget; timed in three
    # windows, between the rates, keeping the fastest: a machine that slows for a second or two (a
    # neighbour on a shared host) must not set the time of a run of hours
    nominal = C.PROBE_NOMINAL_FLOPS["cuda" if dev.type == "cuda" else "cpu"]
    affordable = 0.1 * budget * min(nominal, 2 * matmul_rate) / (6.0 * max(mini.layer_params(), 1))
    tokens = int(max(32, min(tokens, affordable, 4096)))  # as many as the real batch, when affordable
    doc = min(doc_length, tokens)
    n_docs = max(1, tokens // doc)
    mini_run = dataclasses.replace(run, gradient_checkpointing=False, quant_bits=None, use_dora=False,
                                   attention="doc", padding_free=True, lora_layers=None, modules_to_save=[])
    if frozen:  # the layer as most of the run's layers are: frozen, a gradient flowing through it
        mini_run = dataclasses.replace(mini_run, method="freeze", freeze_layers=0, train_embeddings=True,
                                       train_lm_head=False)
    step = build_mini_step(torch, mini, mini_run, doc, n_docs, dt, dev, sync, input_grad=frozen)
    windows = [_median(step, 5, 0.2 * budget)]
    # ---- attention: a fixed cost per call and a rate for the pairs, from two lengths
    nh, nkv, hd = mini.num_heads, mini.num_kv_heads, mini.head_dim
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def att_time(n: int, share: float) -> float:
        q = torch.randn(1, nh, n, hd, dtype=dt, device=dev, requires_grad=True)
        k = torch.randn(1, nkv, n, hd, dtype=dt, device=dev, requires_grad=True)
        v = torch.randn(1, nkv, n, hd, dtype=dt, device=dev, requires_grad=True)

        def f() -> None:
            sdpa(q, k, v, is_causal=True, enable_gqa=nh != nkv).sum().backward()
            sync()

        return _median(f, 9, share * budget)

    # the kernel's time for a document of n tokens: c x (n(n+1)/2 + h x n) + a call's fixed cost;
    # its efficiency grows with n (fixed work per query row), so two lengths fit the rate and h
    n1, n2 = 256, 1024
    t0, t1, t2 = att_time(32, 0.05), att_time(n1, 0.1), att_time(n2, 0.2)
    p1, p2 = n1 * (n1 + 1) / 2, n2 * (n2 + 1) / 2
    ratio = t2 / max(t1, 1e-9)
    h = max(0.0, (p2 - ratio * p1) / max(ratio * n1 - n2, 1e-9)) if ratio * n1 > n2 else 0.0
    h = min(h, 4096.0)
    c = t2 / (p2 + h * n2)
    attention_rate = 12.0 * nh * hd / c  # forward + backward: 12 x heads x head_dim FLOPs per pair
    call_seconds = max(0.0, t0 - c * (32 * 33 / 2 + h * 32)) / 2  # a forward and a backward call
    windows.append(_median(step, 5, 0.2 * budget, warm=False))
    # ---- bandwidth and small autograd ops
    elems = 4 * 2**20  # 16 MiB of float32
    bandwidth = 3 * 4 * elems / _time_add(torch, elems, dev, sync, 0.05 * budget)
    s = torch.ones(8, requires_grad=True)

    def small() -> None:
        out = s
        for _ in range(30):
            out = out * 1.0001
        out.sum().backward()

    op_seconds = _median(small, 9, 0.05 * budget) / 90  # 30 forward ops, ~60 backward nodes and accumulations
    random_seconds = _time_bernoulli(torch, 2**20, dt, dev, sync, 0.03 * budget) / 2**20
    optimizer_seconds = _time_optimizer(torch, 8 * 2**20, dev, sync, 0.05 * budget)
    fault_seconds = _time_page_faults(torch, 64 * 2**20, dev, 0.05 * budget) if run.device == "cpu" \
        and not run.malloc_tuning else Throughput.fault_seconds_per_byte
    tp = Throughput(matmul_flops=matmul_rate, attention_flops=attention_rate, bandwidth=bandwidth,
                    op_seconds=op_seconds, attention_call_seconds=call_seconds, random_seconds=random_seconds,
                    attention_row_pairs=h, fault_seconds_per_byte=fault_seconds,
                    optimizer_seconds_per_param=optimizer_seconds,
                    source="probe",
                    details={"matmul_shape": [rows, H, I], "threads": torch.get_num_threads(), "dtype": dtype,
                             "mini_layer": [H, I, nh, nkv, hd], "doc_length": doc_length})
    measured = min(windows + [_median(step, 5, 0.2 * budget, warm=False)])
    docs = [doc] * n_docs
    predicted = seconds(step_cost(mini, mini_run, Batch(rows=1, row_len=sum(docs), doc_lengths=docs, trained=0)), tp)
    # a one-layer step of a few hundred tokens carries overheads that a full step amortizes: on the
    # development machine, alone, it ran at PROBE_MINI_STEP_EFFICIENCY of the cost model while full
    # steps ran at 1.0; the factor is this machine's mini step relative to that (other jobs sharing
    # the cores slow small operations more than large matmuls), within 0.67-1.25
    reference = C.PROBE_MINI_STEP_EFFICIENCY[1 if torch.get_num_threads() == 1 else 2]
    ratio = predicted / measured if measured > 0 else reference
    tp.efficiency = max(0.67, min(ratio / reference, 1.25))
    tp.details.update(mini_step_s=measured, mini_step_predicted_s=predicted, mini_tokens=sum(docs))
    if cache:
        _cache[key] = tp
    return tp


def _mostly_frozen_through(spec: ModelSpec, run: RunShape) -> bool:
    """Whether most layers the run's backward goes through train nothing (freeze tuning under
    gradient checkpointing, whose ``enable_input_require_grads`` sends the gradient down to the
    embeddings through every frozen layer): the probe's mini step is then such a layer, input
    gradient and no weight gradient, not a trained one (weight gradients and their accumulation
    make a trained layer's step relatively slower than a frozen one's)."""
    if run.is_lora:
        return False
    lay = _layout(run, spec)
    in_grad_from_start = lay.embeddings_train or (run.gradient_checkpointing and lay.first_grad_layer < spec.num_layers)
    recorded = spec.num_layers - (0 if in_grad_from_start else min(lay.first_grad_layer, spec.num_layers))
    trained = len(lay.trainable_base_layers)
    return recorded - trained > trained


def build_mini_step(torch: Any, spec: ModelSpec, run: RunShape, doc_length: int, docs: int, dt: Any, dev: Any,
                    sync: Any, input_grad: bool = False) -> Any:
    """Forward and backward of one Llama-style layer in plain torch on ``docs`` documents of
    ``doc_length`` tokens, trained as ``run`` trains it (LoRA adapters on the targeted projections,
    every weight, or none with ``freeze_layers=0``), with a gradient into its input when
    ``input_grad``: a function that runs one step."""
    from .weights import _targets

    F = torch.nn.functional
    H, I, nh, nkv, hd = spec.hidden_size, spec.intermediate_size, spec.num_heads, spec.num_kv_heads, spec.head_dim
    T = docs * doc_length
    full = not run.is_lora and not (run.method == "freeze" and run.freeze_layers == 0)
    targets = _targets(run, spec) if run.is_lora else set()
    r = run.lora_r
    g = torch.Generator().manual_seed(0)

    def weight(o: int, i: int, grad: bool) -> Any:
        return (torch.randn(o, i, generator=g) * i ** -0.5).to(dt).to(dev).requires_grad_(grad)

    shapes = {"q_proj": (nh * hd, H), "k_proj": (nkv * hd, H), "v_proj": (nkv * hd, H), "o_proj": (H, nh * hd),
              "gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}
    p = {}
    for name, (o, i) in shapes.items():
        p[name] = [weight(o, i, full)]
        if name in targets:
            p[name] += [weight(r, i, True), torch.zeros(o, r, dtype=dt, device=dev, requires_grad=True)]
    norms = [torch.ones(H, dtype=dt, device=dev, requires_grad=full) for _ in range(2)]
    drop = run.is_lora and run.lora_dropout > 0
    x0 = torch.randn(1, T, H, dtype=dt, device=dev).requires_grad_(input_grad)
    cos = torch.randn(1, T, hd, dtype=dt, device=dev)
    sin = torch.randn(1, T, hd, dtype=dt, device=dev)
    sizes = [doc_length] * docs

    def lin(x: Any, name: str) -> Any:
        w = p[name]
        out = F.linear(x, w[0])
        if len(w) > 1:
            out = out + F.linear(F.linear(F.dropout(x, run.lora_dropout) if drop else x, w[1]), w[2]) * 2.0
        return out

    def norm(x: Any, w: Any) -> Any:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def rope(t: Any) -> Any:
        half = t.shape[-1] // 2
        return t * cos.unsqueeze(1) + torch.cat((-t[..., half:], t[..., :half]), dim=-1) * sin.unsqueeze(1)

    def step() -> None:
        n1 = norm(x0, norms[0])
        q = rope(lin(n1, "q_proj").view(1, T, nh, hd).transpose(1, 2))
        k = rope(lin(n1, "k_proj").view(1, T, nkv, hd).transpose(1, 2))
        v = lin(n1, "v_proj").view(1, T, nkv, hd).transpose(1, 2)
        parts = zip(q.split(sizes, dim=2), k.split(sizes, dim=2), v.split(sizes, dim=2))
        a = torch.cat([F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=nh != nkv)
                       .transpose(1, 2) for qq, kk, vv in parts], dim=1).reshape(1, T, nh * hd)
        h = x0 + lin(a, "o_proj")
        n2 = norm(h, norms[1])
        out = h + lin(F.silu(lin(n2, "gate_proj")) * lin(n2, "up_proj"), "down_proj")
        out.sum().backward()
        sync()

    return step
