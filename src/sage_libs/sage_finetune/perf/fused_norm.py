"""RMSNorm as one autograd function (:func:`install_fused_norms`).

transformers' RMSNorm (Llama, Qwen2, Mistral and most decoders) is five elementwise ops whose
backward autograd assembles from nine more: each a pass over a (tokens, hidden) tensor, about 6% of
a LoRA step of the 32M benchmark model on the CPU. :func:`rms_norm` computes the same
forward with the same ops in the same order, and writes its backward out by hand:

    y = w * (x * r),  r = 1 / sqrt(mean(x^2) + eps)
    dx = r * (g*w - x * r^2 * mean(g*w * x))      dw = sum over tokens of g * x * r

It saves the input and ``r`` only (autograd's version also keeps ``x * r`` for the weight's
gradient; here it is recomputed when the weight trains). A module is switched only if a probe
agrees with its own forward and backward (:func:`install_fused_norms`), so norms that compute
something else (Gemma's ``1 + w``, a norm with a bias) keep their own forward.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

__all__ = ["rms_norm", "install_fused_norms", "norm_modules"]

logger = logging.getLogger(__name__)


@functools.cache
def _rms_norm_function() -> Any:  # the autograd.Function class is built on first use: no torch at import
    import torch

    class RMSNormFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, eps):
            # transformers' order: in float32, x * rsqrt(mean(x^2) + eps), back to the input dtype, times w
            # (float64 stays float64, where transformers would round through float32)
            x32 = x.to(torch.promote_types(x.dtype, torch.float32))
            r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True).add_(eps))
            normed = (x32 * r).to(x.dtype)
            ctx.save_for_backward(x, r, weight)
            if torch.result_type(weight, normed) == normed.dtype:
                return normed.mul_(weight)  # w x n is n x w bit for bit, and one block fewer is freed
            return weight * normed

        @staticmethod
        def backward(ctx, grad):
            x, r, weight = ctx.saved_tensors
            x32 = x.to(r.dtype)
            g_normed = (grad * weight).to(r.dtype)  # the gradient reaching x * r (through the cast, in float32)
            dot = (g_normed * x32).mean(-1, keepdim=True)
            grad_x = g_normed.sub_(x32 * (r * r * dot)).mul_(r).to(x.dtype) if ctx.needs_input_grad[0] else None
            grad_w = None
            if ctx.needs_input_grad[1]:
                normed = (x32 * r).to(x.dtype)
                grad_w = (grad * normed).reshape(-1, normed.shape[-1]).sum(0).to(weight.dtype)
            return grad_x, grad_w, None

    return RMSNormFunction


def rms_norm(x: Any, weight: Any, eps: float) -> Any:
    """transformers' RMSNorm of ``x`` (last dimension) with ``weight``, as one autograd function."""
    return _rms_norm_function().apply(x, weight, eps)


def _eps(module: Any) -> float | None:
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def norm_modules(model: Any) -> list[Any]:
    """Modules that look like an RMSNorm: class name ending in ``RMSNorm``, one 1-D ``weight``
    parameter, a float epsilon, no children and no bias."""
    found = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (type(module).__name__.endswith("RMSNorm") and weight is not None
                and getattr(weight, "dim", lambda: 0)() == 1 and _eps(module) is not None
                and getattr(module, "bias", None) is None and not any(True for _ in module.children())):
            found.append(module)
    return found


class _FusedForward:
    """The forward of one switched norm module (an instance attribute ``forward``). It runs the
    fused function for what the probe checked, an input and a weight in the weight's dtype at probe
    time, and the module's own forward for anything else (a model cast to another dtype after the
    switch, a 16-bit input under autocast with a float32 weight). Pickling (``torch.save`` of the
    whole model) and ``copy.deepcopy`` give the module back its own forward."""

    def __init__(self, module: Any, eps: float, dtype: Any) -> None:
        self.module, self.eps, self.dtype = module, eps, dtype

    def __call__(self, hidden_states: Any) -> Any:
        module = self.module
        if hidden_states.dtype != self.dtype or module.weight.dtype != self.dtype:
            return type(module).forward(module, hidden_states)
        return rms_norm(hidden_states, module.weight, self.eps)

    def __reduce__(self):
        # unpickled before the module's attributes are restored: the class's forward, bound
        return getattr, (self.module, "forward")


def _agrees(module: Any) -> bool:
    """The fused forward and backward against the module's own, on a small random input in the
    weight's dtype and device: the forward bit for bit, the gradients to 1e-5 relative in float32
    (one rounding step in 16-bit types)."""
    import torch

    weight = module.weight
    eps = _eps(module)
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, 3, weight.shape[0], generator=generator).to(weight.device, weight.dtype)
    grad = torch.randn(2, 3, weight.shape[0], generator=generator).to(weight.device, weight.dtype)
    results = []
    with torch.enable_grad():  # also when the run's first call is an evaluation under no_grad
        for forward in (module.forward, lambda h: rms_norm(h, weight, eps)):
            xi = x.clone().requires_grad_(True)
            try:
                out = forward(xi)
            except Exception:  # noqa: BLE001 - a module that cannot take this input keeps its own forward
                return False
            if not torch.is_tensor(out) or out.shape != x.shape or out.dtype != x.dtype or not out.requires_grad:
                return False
            inputs = [xi] + ([weight] if weight.requires_grad else [])
            grads = torch.autograd.grad(out, inputs, grad)
            results.append([out.detach(), *grads])
    (ref_out, *ref_grads), (out, *grads) = results
    if not torch.equal(out, ref_out):  # e.g. OLMo's (w * x).to(dtype) instead of w * x.to(dtype) in 16-bit
        return False
    tol = dict(rtol=1e-5, atol=1e-6) if weight.dtype in (torch.float32, torch.float64) else dict(rtol=2e-2, atol=2e-2)
    return all(torch.allclose(a.float(), b.float(), **tol) for a, b in zip(grads, ref_grads))


def install_fused_norms(model: Any) -> int:
    """Switch every RMSNorm of ``model`` whose own forward the probe reproduces to the fused
    function (an instance attribute: the class, the state dict and saving are unchanged). Returns
    how many modules use it."""
    count, refused = 0, set()
    for module in norm_modules(model):
        if isinstance(vars(module).get("forward"), _FusedForward):
            count += 1
            continue
        if not _agrees(module):
            refused.add(type(module).__name__)
            continue
        module.forward = _FusedForward(module, _eps(module), module.weight.dtype)
        count += 1
    if refused:
        logger.info("fused RMSNorm not used for %s: its forward computes something else", ", ".join(sorted(refused)))
    return count
