"""The calibration probe: about two seconds of torch on this machine, at the model's own shapes.

It measures what :func:`.timing.seconds` divides by:

* the matmul rate of the compute dtype, on ``(rows x hidden) @ (hidden x intermediate)`` products
  (the shapes of the model's MLP, capped to a few GFLOP each);
* the attention kernel's rate (sdpa, causal, forward and backward) at the model's head layout;
* the bandwidth of elementwise kernels (an out-of-place add over tensors larger than the caches);
* the cost of one small autograd operation (dispatch and bookkeeping);
* an efficiency factor: a miniature training step (two Llama-style layers of the model's width
  with LoRA adapters, forward, backward) timed against what the cost model predicts for it with
  the rates above, so that what the rates miss on this machine (cache effects, threading) is
  measured rather than assumed.

Only this module imports torch; the planner's arithmetic does not.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .timing import Throughput

__all__ = ["run_probe"]

_cache: dict[tuple, Throughput] = {}


def _median(fn: Any, reps: int, budget: float) -> float:
    """The median of up to ``reps`` timed calls within ``budget`` seconds, after one warm-up (the
    median, not the best: a training run meets the machine as it is, other jobs included)."""
    start = time.perf_counter()
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget:
            break
    times.sort()
    return times[len(times) // 2]


def run_probe(hidden: int = 1024, intermediate: int = 2816, heads: int = 16, kv_heads: int = 8, head_dim: int = 64,
              *, dtype: str = "float32", device: str = "cpu", threads: int | None = None,
              budget: float = 2.0, cache: bool = True) -> Throughput:
    """Measure this machine's throughput at these shapes (about ``budget`` seconds)."""
    key = (hidden, intermediate, heads, kv_heads, head_dim, dtype, device, threads)
    if cache and key in _cache:
        return _cache[key]
    import torch

    if threads:
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    H = min(hidden, 4096)
    I = min(max(intermediate, hidden), 8192)
    # ---- matmul
    rows = max(64, min(1024, int(1e9 / (2 * H * I))))
    a = torch.randn(rows, H, dtype=dt, device=dev)
    b = torch.randn(H, I, dtype=dt, device=dev)

    def mm() -> None:
        a @ b
        sync()

    t_mm = _median(mm, 9, 0.25 * budget)
    matmul_rate = 2.0 * rows * H * I / t_mm
    # ---- attention (causal sdpa, forward + backward)
    nh, nkv, hd = min(heads, 64), min(kv_heads, 64), head_dim
    n = 256
    q = torch.randn(1, nh, n, hd, dtype=dt, device=dev, requires_grad=True)
    k = torch.randn(1, nkv, n, hd, dtype=dt, device=dev, requires_grad=True)
    v = torch.randn(1, nkv, n, hd, dtype=dt, device=dev, requires_grad=True)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def att() -> None:
        out = sdpa(q, k, v, is_causal=True, enable_gqa=nh != nkv)
        out.sum().backward()
        sync()

    t_att = _median(att, 5, 0.15 * budget)
    attention_rate = 12.0 * nh * hd * n * (n + 1) / 2 / t_att
    # ---- bandwidth
    elems = 4 * 2**20  # 16 MiB of float32
    x = torch.randn(elems, device=dev)
    y = torch.randn(elems, device=dev)
    z = torch.empty_like(x)

    def add() -> None:
        torch.add(x, y, out=z)
        sync()

    t_bw = _median(add, 9, 0.1 * budget)
    bandwidth = 3 * 4 * elems / t_bw
    del x, y, z
    # ---- small autograd ops
    s = torch.ones(8, requires_grad=True)

    def small() -> None:
        y = s
        for _ in range(30):
            y = y * 1.0001
        y.sum().backward()

    t_small = _median(small, 9, 0.1 * budget)
    op_seconds = t_small / 90  # 30 forward ops, ~60 backward nodes and accumulations
    tp = Throughput(matmul_flops=matmul_rate, attention_flops=attention_rate, bandwidth=bandwidth,
                    op_seconds=op_seconds, source="probe",
                    details={"matmul_shape": [rows, H, I], "threads": torch.get_num_threads(), "dtype": dtype})
    # ---- efficiency: a miniature LoRA training step, measured against the cost model
    tp.efficiency = _mini_step_efficiency(torch, tp, H, I, nh, nkv, hd, dt, dev, sync, 0.4 * budget)
    if cache:
        _cache[key] = tp
    return tp


def _mini_step_efficiency(torch: Any, tp: Throughput, H: int, I: int, nh: int, nkv: int, hd: int, dt: Any,
                          dev: Any, sync: Any, budget: float) -> float:
    from .memory import Batch, RunShape
    from .spec import ModelSpec
    from .timing import seconds, step_cost

    H = min(H, 1024)
    I = min(I, 2816)
    nh = max(1, H // hd)
    nkv = max(1, min(nkv, nh))
    while nh % nkv:
        nkv -= 1
    T, r, layers = 256, 16, 1
    spec = ModelSpec(model_type="llama", hidden_size=H, num_layers=layers, num_heads=nh, num_kv_heads=nkv,
                     head_dim=hd, intermediate_size=I, vocab_size=256, dtype="float32")
    run = RunShape(method="lora", lora_r=r, lora_targets="all-linear", lora_dropout=0.0,
                   weight_bytes=4 if dt == torch.float32 else 2)
    F = torch.nn.functional
    g = torch.Generator(device="cpu").manual_seed(0)

    def w(o: int, i: int, grad: bool = False) -> Any:
        t = (torch.randn(o, i, generator=g) * i ** -0.5).to(dt).to(dev)
        return t.requires_grad_(grad)

    shapes = [(nh * hd, H), (nkv * hd, H), (nkv * hd, H), (H, nh * hd), (I, H), (I, H), (H, I)]
    params = [[w(o, i), w(r, i, True), torch.zeros(o, r, dtype=dt, device=dev, requires_grad=True)]
              for _ in range(layers) for o, i in shapes]
    x0 = torch.randn(1, T, H, dtype=dt, device=dev)
    head = w(256, H)

    def lin(x: Any, p: list) -> Any:
        return F.linear(x, p[0]) + F.linear(F.linear(x, p[1]), p[2]) * 2.0

    def norm(x: Any) -> Any:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    def step() -> None:
        h = x0
        for layer in range(layers):
            ps = params[layer * 7:(layer + 1) * 7]
            n1 = norm(h)
            q = lin(n1, ps[0]).view(1, T, nh, hd).transpose(1, 2)
            k = lin(n1, ps[1]).view(1, T, nkv, hd).transpose(1, 2)
            v = lin(n1, ps[2]).view(1, T, nkv, hd).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=nh != nkv)
            h = h + lin(a.transpose(1, 2).reshape(1, T, nh * hd), ps[3])
            n2 = norm(h)
            h = h + lin(F.silu(lin(n2, ps[4])) * lin(n2, ps[5]), ps[6])
        loss = F.cross_entropy(F.linear(norm(h)[0], head).float(), torch.zeros(T, dtype=torch.long, device=dev))
        loss.backward()
        sync()

    measured = _median(step, 7, budget)
    predicted = seconds(step_cost(spec, run, Batch(rows=1, row_len=T, doc_lengths=[T], trained=T)), tp)
    eff = predicted / measured if measured > 0 else 1.0
    return max(0.2, min(eff, 2.0))


def probe_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1
