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

import logging
import types
from typing import Any

__all__ = ["rms_norm", "install_fused_norms", "norm_modules"]

logger = logging.getLogger(__name__)

_FUSED = "_sage_fused_norm"  # set on a module whose forward is the fused one


def _function():
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


_FUNCTION: Any = None


def _rms_norm_function() -> Any:  # the autograd.Function class is built on first use: no torch at import
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _function()
    return _FUNCTION


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
        if (type(module).__name__.endswith("RMSNorm") and weight is not None and getattr(weight, "dim", lambda: 0)() == 1
                and _eps(module) is not None and getattr(module, "bias", None) is None
                and not any(True for _ in module.children())):
            found.append(module)
    return found


def _fused_forward(self: Any, hidden_states: Any) -> Any:
    return rms_norm(hidden_states, self.weight, self._sage_norm_eps)


def _agrees(module: Any) -> bool:
    """The fused forward and backward against the module's own, on a small random input in the
    module's dtype and device (float32: to 1e-5 relative; 16-bit: to one rounding step)."""
    import torch

    weight = module.weight
    eps = _eps(module)
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, 3, weight.shape[0], generator=generator).to(weight.device, weight.dtype)
    grad = torch.randn(2, 3, weight.shape[0], generator=generator).to(weight.device, weight.dtype)
    results = []
    for forward in (module.forward, lambda h: rms_norm(h, weight, eps)):
        xi = x.clone().requires_grad_(True)
        try:
            out = forward(xi)
        except Exception:  # noqa: BLE001 - a module that cannot take this input keeps its own forward
            return False
        if not torch.is_tensor(out) or out.shape != x.shape:
            return False
        inputs = [xi] + ([weight] if weight.requires_grad else [])
        grads = torch.autograd.grad(out, inputs, grad)
        results.append([out.detach(), *grads])
    tol = dict(rtol=1e-5, atol=1e-6) if weight.dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    return all(torch.allclose(a.float(), b.float(), **tol) for a, b in zip(*results))


def install_fused_norms(model: Any) -> int:
    """Switch every RMSNorm of ``model`` whose own forward the probe reproduces to the fused
    function (an instance attribute: the class, the state dict and saving are unchanged). Returns
    how many modules use it."""
    count, refused = 0, set()
    for module in norm_modules(model):
        if getattr(module, _FUSED, False):
            count += 1
            continue
        if not _agrees(module):
            refused.add(type(module).__name__)
            continue
        module._sage_norm_eps = _eps(module)
        module.forward = types.MethodType(_fused_forward, module)
        setattr(module, _FUSED, True)
        count += 1
    if refused:
        logger.info("fused RMSNorm not used for %s: its forward computes something else", ", ".join(sorted(refused)))
    return count
