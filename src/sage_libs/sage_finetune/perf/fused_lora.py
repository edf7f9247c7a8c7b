"""LoRA's dropout branch as one autograd function (:func:`install_fused_lora`).

PEFT computes a LoRA linear as ``base(x) + lora_B(lora_A(dropout(x))) * scaling``. With
``lora_dropout > 0`` each adapted module draws its own dropout of ``x``, and autograd keeps, per
module, the dropped input (for ``lora_A``'s gradient) and, on the CPU, the dropout's float32 noise
(for the input's gradient): 8 bytes per element of every adapted input. On a Llama-shaped layer with
all seven linears adapted that is (6 x hidden + intermediate) x 8 bytes per token, more than half of
what a layer keeps for backward (SmolLM2-135M: 40 of 68 KB per token and layer).

:class:`LoraBranch` computes the same branch and keeps ``x`` (one tensor shared by q/k/v, and by
gate/up: the same input object), the dropout mask as bool (1 byte per element) and the rank-r
intermediate; the dropped input is recomputed in backward for ``lora_A``'s gradient:

    n = bernoulli(1 - p) / (1 - p)      d = x * n      h = d @ A^T      y = (h @ B^T) * s
    gB = (g s)^T h      gh = (g s) @ B      gA = gh^T d      gx = (gh @ A) * n

The noise is drawn exactly as torch's dropout draws it (``empty_like(x).bernoulli_(1 - p)`` on the
same generator, in the same module order), so a run with the fused branch sees the same masks as one
without: same losses to rounding (tests/perf/test_fused_lora.py). A module is switched only when a
probe agrees with its own forward and backward; at call time anything else (DoRA and other variants,
several active adapters, merged or disabled adapters, ``adapter_names``, eval mode, an input of
another dtype) runs PEFT's own forward. Under autocast (bf16 on the CPU, with the frozen base held in
bfloat16) the branch runs in the compute dtype: the noise is then drawn on a bfloat16 tensor, not on
PEFT's float32 copy of ``x``, so the masks differ from an unfused run's (same distribution).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

__all__ = ["lora_branch", "install_fused_lora", "fusable_lora_modules"]

logger = logging.getLogger(__name__)


@functools.cache
def _lora_branch_function() -> Any:  # built on first use: no torch at import
    import torch
    import torch.nn.functional as F

    class LoraBranch(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight_a, weight_b, p, scaling):
            # torch's CPU dropout: noise = empty_like(x).bernoulli_(1 - p); noise /= 1 - p; x * noise
            noise = torch.empty_like(x).bernoulli_(1 - p)
            mask = noise.bool()
            # in the noise's own buffer (n x is x n, bit for bit): one input-sized block per module,
            # not two, and the scaling in place on lora_B's output: fewer blocks freed between the
            # tensors kept for backward, which is where the heap fragments
            dropped = noise.div_(1 - p).mul_(x)
            h = F.linear(dropped, weight_a)
            del noise, dropped
            ctx.p, ctx.scaling = p, scaling
            ctx.save_for_backward(x, mask, weight_a, weight_b, h)
            return F.linear(h, weight_b).mul_(scaling)

        @staticmethod
        def backward(ctx, grad):
            x, mask, weight_a, weight_b, h = ctx.saved_tensors
            noise = mask.to(x.dtype).div_(1 - ctx.p)  # the forward's noise, bit for bit
            g = grad * ctx.scaling
            g2 = g.reshape(-1, g.shape[-1])
            grad_b = g2.t().mm(h.reshape(-1, h.shape[-1])) if ctx.needs_input_grad[2] else None
            gh = g.matmul(weight_b)
            grad_a = None
            if ctx.needs_input_grad[1]:
                dropped = (x * noise).reshape(-1, x.shape[-1])
                grad_a = gh.reshape(-1, gh.shape[-1]).t().mm(dropped)
            grad_x = gh.matmul(weight_a).mul_(noise) if ctx.needs_input_grad[0] else None
            return grad_x, grad_a, grad_b, None, None

    return LoraBranch


def lora_branch(x: Any, weight_a: Any, weight_b: Any, p: float, scaling: float) -> Any:
    """``(dropout(x, p) @ A^T @ B^T) * scaling`` as one autograd function (training-mode dropout)."""
    return _lora_branch_function().apply(x, weight_a, weight_b, p, scaling)


def fusable_lora_modules(model: Any) -> list[Any]:
    """PEFT LoRA ``Linear`` modules whose adapters are plain LoRA: ``nn.Linear`` A and B without
    bias, an ``nn.Dropout`` with p > 0, no variant (DoRA), a plain ``nn.Linear`` base layer."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    import torch.nn as nn

    found = []
    for module in model.modules():
        if type(module) is not LoraLinear or type(getattr(module, "base_layer", None)) is not nn.Linear:
            continue
        if getattr(module, "fan_in_fan_out", False) or getattr(module, "lora_variant", None):
            continue
        adapters = list(module.lora_A.keys())
        if adapters and all(_plain_adapter(module, name) for name in adapters):
            found.append(module)
    return found


def _plain_adapter(module: Any, name: str) -> bool:
    import torch.nn as nn

    a, b, drop = module.lora_A[name], module.lora_B[name], module.lora_dropout[name]
    return (type(a) is nn.Linear and type(b) is nn.Linear and a.bias is None and b.bias is None
            and type(drop) is nn.Dropout and not drop.inplace and 0 < drop.p < 1
            and isinstance(module.scaling.get(name), (int, float)))


class _FusedLoraForward:
    """The forward of one switched LoRA module (an instance attribute ``forward``): the fused branch
    for a training-mode call of one active plain adapter, PEFT's own forward for anything else.
    Pickling and ``copy.deepcopy`` give the module back its class's forward."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        module = self.module
        own = type(module).forward
        if args or kwargs or module.disable_adapters or module.merged or len(module.active_adapters) != 1:
            return own(module, x, *args, **kwargs)
        name = module.active_adapters[0]
        if name not in module.lora_A or module.lora_variant.get(name) is not None:
            return own(module, x, *args, **kwargs)
        a, b, drop = module.lora_A[name], module.lora_B[name], module.lora_dropout[name]
        if not drop.training or not torch.is_grad_enabled() or not _plain_adapter(module, name):
            return own(module, x, *args, **kwargs)
        wa, wb = a.weight, b.weight
        if torch.is_autocast_enabled(x.device.type):
            # bf16 on the CPU: x arrives in the compute dtype (a frozen base held in it); the branch
            # runs in it as PEFT's does under autocast, without PEFT's float32 copy of x and float32
            # noise per module; the float32 A and B are cast per call (their gradients flow back)
            compute = torch.get_autocast_dtype(x.device.type)
            if x.dtype != compute or wa.dtype != wb.dtype:
                return own(module, x, *args, **kwargs)
            wa, wb = wa.to(compute), wb.to(compute)
        elif x.dtype != wa.dtype or wb.dtype != wa.dtype:
            return own(module, x, *args, **kwargs)
        result = module.base_layer(x)
        branch = lora_branch(x, wa, wb, drop.p, module.scaling[name])
        if branch.dtype == result.dtype and not result._is_view() and (result.grad_fn is not None
                                                                       or not result.requires_grad):
            # into the base output (the frozen linear's backward does not keep it): no third block
            return result.add_(branch)
        return (result + branch).to(result.dtype)

    def __reduce__(self):
        return getattr, (self.module, "forward")


def _agrees(module: Any) -> bool:
    """The fused forward and backward against PEFT's own, on a small random input with the same
    dropout draws (the generator state restored between the two): output and gradients of the
    input, A and B to 1e-5 relative (float32; one rounding step in 16-bit types)."""
    import torch

    weight = module.base_layer.weight
    name = module.active_adapters[0] if len(module.active_adapters) == 1 else None
    if name is None or name not in module.lora_A:
        return False
    a, b = module.lora_A[name].weight, module.lora_B[name].weight
    if weight.dtype != a.dtype:  # a 16-bit base under float32 adapters (bf16): probe the same module in float32
        with _base_in(module, a.dtype):
            return _agrees(module)
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, 3, weight.shape[1], generator=generator).to(weight.device, a.dtype)
    grad = torch.randn(2, 3, weight.shape[0], generator=generator).to(weight.device, a.dtype)
    was_training = module.training
    module.train()
    results = []
    b_data = b.detach().clone()
    with torch.no_grad():  # B starts at zero, which would hide a wrong gradient of A
        b.copy_(torch.randn(b.shape, generator=generator).to(b.device, b.dtype) * 0.1)
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
            state = torch.get_rng_state()
            for forward in (lambda h: type(module).forward(module, h), _FusedLoraForward(module)):
                torch.set_rng_state(state)
                xi = x.clone().requires_grad_(True)
                try:
                    out = forward(xi)
                except Exception:  # noqa: BLE001 - a module that cannot take this input keeps its own forward
                    return False
                params = [p for p in (a, b) if p.requires_grad]
                grads = torch.autograd.grad(out, [xi, *params], grad)
                results.append([out.detach(), *grads])
    finally:
        module.train(was_training)
        with torch.no_grad():
            b.copy_(b_data)
    (ref_out, *ref_grads), (out, *grads) = results
    tol = dict(rtol=1e-5, atol=1e-6) if a.dtype in (torch.float32, torch.float64) else dict(rtol=2e-2, atol=2e-2)
    return torch.allclose(out.float(), ref_out.float(), **tol) and all(
        torch.allclose(g.float(), r.float(), **tol) for g, r in zip(grads, ref_grads))


@contextlib.contextmanager
def _base_in(module: Any, dtype: Any) -> Any:
    """``module``'s base layer computing in ``dtype`` for a while (its parameters' data swapped for
    converted copies, then back): what the probe checks is how the module computes, not in what."""
    params = [p for p in module.base_layer.parameters(recurse=False)]
    saved = [p.data for p in params]
    try:
        for p in params:
            p.data = p.data.to(dtype)
        yield
    finally:
        for p, data in zip(params, saved):
            p.data = data


def install_fused_lora(model: Any) -> int:
    """Switch every plain LoRA linear of ``model`` (:func:`fusable_lora_modules`) whose own forward the
    probe reproduces to the fused branch (an instance attribute: the class, the state dict and the
    saved adapter are unchanged). Returns how many modules use it."""
    count = refused = 0
    for module in fusable_lora_modules(model):
        if isinstance(vars(module).get("forward"), _FusedLoraForward):
            count += 1
            continue
        if not _agrees(module):
            refused += 1
            continue
        module.forward = _FusedLoraForward(module)
        count += 1
    if refused:
        logger.info("fused LoRA branch not used for %d module(s): the probe did not reproduce their forward", refused)
    return count
