"""Cross-entropy of a linear LM head without a ``[tokens x vocab]`` logits tensor.

The idea of Liger's fused linear cross-entropy and of Cut Cross-Entropy, in plain torch (so it runs
on the CPU as well as on GPUs): the logits ``hidden @ weight.T (+ bias)`` are computed for a chunk
of rows at a time and turned into the loss and that chunk's share of ``grad_hidden`` and
``grad_weight`` right away. Peak memory of the head and the loss is one chunk's logits (a few tens
of MB) instead of all of them plus their gradient. Two schedules (see
:class:`ChunkedLinearCrossEntropy`): by default the gradients are computed in the forward pass
(Liger's schedule: the head's matmuls run as often as in the plain path); with ``recompute``,
forward keeps only each row's logsumexp and backward computes each chunk's logits again (Cut
Cross-Entropy's: nothing but [N] floats held between the passes, one more matmul of the head).

Float semantics are the plain path's: the matmul runs in the compute dtype (the autocast dtype when
autocast is on, else the inputs' dtype), each chunk's logits are upcast to float32 (float64 stays
float64) for the softmax and the loss; ``grad_weight`` is accumulated in float32.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

__all__ = ["chunked_linear_cross_entropy", "ChunkedLinearCrossEntropy", "chunked_linear_token_logps",
           "ChunkedLinearTokenLogps", "chunk_rows_for", "use_chunked_lm_loss", "CHUNK_BYTES"]

logger = logging.getLogger(__name__)

from .constants import CHUNK_BYTES, chunk_rows_for  # noqa: E402, F401 (module attributes: tests may patch them here)


def use_chunked_lm_loss(setting: bool | None) -> bool:
    """The one place that decides ``training.chunked_lm_loss``: false is off; true and null (the
    default) are on. At any size: with the chunk's softmax and gradient computed in place in one
    buffer, a batch whose trained positions fit one chunk holds one ``[positions x vocab]`` block,
    where the plain path holds three (logits, log-softmax, gradient) for the same matmuls."""
    return setting is not False


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    dev = hidden.device.type
    if hidden.dtype in (torch.float32, torch.float16, torch.bfloat16) and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return hidden.dtype


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """One chunk's logits ``h @ w.T + b``, written into ``out`` (float32 or float64 rows of the
    chunk buffer). The buffer is allocated once per call and reused by every chunk: a fresh
    ``[rows x vocab]`` block per chunk leaves holes in the heap that the small tensors allocated
    between chunks split, and the next chunk's block then comes from fresh memory."""
    if h.dtype == out.dtype:
        if b is None:
            return torch.mm(h, w.t(), out=out)
        return torch.addmm(b, h, w.t(), out=out)
    return out.copy_(torch.nn.functional.linear(h, w, b))  # 16-bit matmul, upcast into the buffer


def _softmax_inplace(logits: torch.Tensor) -> torch.Tensor:
    """Each row's logsumexp; ``logits`` becomes the row's softmax in place (no second
    ``[rows x vocab]`` block, and one ``exp`` pass where logsumexp-then-softmax takes two)."""
    top = logits.amax(dim=1)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a row of -inf: no nan
    total = logits.sub_(top[:, None]).exp_().sum(dim=1)
    logits.div_(total[:, None])
    return top + total.log()


def _onehot_grad_(probs: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
    """d(CE_i)/d(logits) of one chunk's rows from their softmax, in place: softmax - onehot. (Rows
    are weighted, ignored rows zeroed, on the hidden-size side: see :func:`_accumulate`.)"""
    probs[torch.arange(probs.shape[0], device=probs.device), safe] -= 1
    return probs


def _chunk_grad(logits: torch.Tensor, lse: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
    """d(CE_i)/d(logits) of one chunk from its logits and logsumexp, in place of ``logits``."""
    return _onehot_grad_(logits.sub_(lse[:, None]).exp_(), safe)


def _row_weights(valid: torch.Tensor, scale: torch.Tensor | None, acc: torch.dtype) -> torch.Tensor | None:
    """Each row's weight in the gradient (``scale``, a number or one per row, and zero where the
    row is ignored), or None when every row counts once."""
    if scale is None and bool(valid.all()):
        return None
    weights = valid.to(acc)
    return weights if scale is None else weights * scale.to(acc)


def _grad_buffers(hidden: torch.Tensor, weight: torch.Tensor, acc: torch.dtype,
                  needs: tuple[bool, bool, bool]) -> tuple[Any, Any, Any]:
    """Empty buffers for the gradients of hidden, weight and bias (None where not needed); the
    head's two are accumulated in ``acc`` chunk by chunk."""
    need_h, need_w, need_b = needs
    return (torch.empty_like(hidden) if need_h else None,
            torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None,
            torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None)


def _cast_grads(grad_h: Any, grad_w: Any, grad_b: Any, weight: torch.Tensor, bias: Any) -> tuple[Any, Any, Any]:
    """The accumulated gradients in their parameters' dtypes."""
    return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype))


def _chunk_buffer(n: int, chunk_rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(min(chunk_rows, n), vocab, dtype=dtype, device=device)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``sum_i CE(hidden[i] @ weight.T + bias, targets[i])`` over rows whose target is not
    ``ignore_index``, computed ``chunk_rows`` rows at a time (see the module docstring).

    ``grads`` (need grad_hidden, grad_weight, grad_bias): with ``recompute`` false the gradients of
    the (scalar) loss are computed in the same pass as the loss, chunk by chunk, and backward only
    scales them by its incoming gradient: the head's matmuls run as often as in the plain path,
    and a trainable head's float32 ``grad_weight`` exists from forward on. With ``recompute`` true
    forward keeps only each row's logsumexp and backward computes each chunk's logits again (one
    more matmul of the head; nothing but [N] floats held between forward and backward)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, ignore_index: int, chunk_rows: int, grads: tuple[bool, bool, bool],
                recompute: bool) -> torch.Tensor:
        cdtype = _compute_dtype(hidden)
        acc = _acc_dtype(cdtype)
        w = weight.to(cdtype)
        b = None if bias is None else bias.to(cdtype)
        n = hidden.shape[0]
        valid = targets != ignore_index
        safe = torch.where(valid, targets, torch.zeros_like(targets))
        eager = not recompute and any(grads)
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h, grad_w, grad_b = _grad_buffers(hidden, weight, acc, tuple(g and eager for g in grads))
        buf = _chunk_buffer(n, chunk_rows, weight.shape[0], acc, hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk_rows):
                e = min(s + chunk_rows, n)
                h = hidden[s:e].to(cdtype)
                logits = _chunk_logits(h, w, b, buf[: e - s])
                picked = logits.gather(1, safe[s:e, None]).squeeze(1)
                row_lse = _softmax_inplace(logits)
                lse[s:e] = row_lse
                total += torch.where(valid[s:e], row_lse - picked, torch.zeros_like(row_lse)).sum()
                if eager:
                    _accumulate(_onehot_grad_(logits, safe[s:e]), h, w, s, e, cdtype, acc, grad_h, grad_w, grad_b,
                                _row_weights(valid[s:e], None, acc))
        del buf
        ctx.cdtype, ctx.chunk_rows, ctx.recompute = cdtype, chunk_rows, not eager
        if eager:
            ctx.grad_buffers = [grad_h, grad_w, grad_b]
            ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        else:
            ctx.save_for_backward(hidden, weight, bias, safe, valid, lse)
        ctx.has_bias = bias is not None
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor):
        if not ctx.recompute:
            # scaled copies (not in place): a retained graph may run backward again
            return (*(None if buf is None or not ctx.needs_input_grad[i] else (buf * grad_out.to(buf.dtype)).to(dtype)
                      for i, (buf, dtype) in enumerate(zip(ctx.grad_buffers, ctx.dtypes))),
                    None, None, None, None, None)
        hidden, weight, bias, safe, valid, lse = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        return (*_recomputed_grads(hidden, weight, bias, safe, valid, lse, grad_out, ctx.cdtype, ctx.chunk_rows, needs),
                None, None, None, None, None)


def _recomputed_grads(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, safe: torch.Tensor,
                      valid: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor, cdtype: torch.dtype,
                      chunk_rows: int, needs: tuple[bool, bool, bool]) -> tuple[Any, Any, Any]:
    """Gradients (hidden, weight, bias; None where not needed) of ``sum_i scale_i * CE_i`` with each
    chunk's logits computed again from the saved logsumexp. ``scale``: one number (a summed loss) or
    one per row (per-token values)."""
    acc = _acc_dtype(cdtype)
    w = weight.to(cdtype)
    b = None if bias is None else bias.to(cdtype)
    n = hidden.shape[0]
    grad_h, grad_w, grad_b = _grad_buffers(hidden, weight, acc, needs)
    scale = scale.to(acc)
    buf = _chunk_buffer(n, chunk_rows, weight.shape[0], acc, hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        for s in range(0, n, chunk_rows):
            e = min(s + chunk_rows, n)
            h = hidden[s:e].to(cdtype)
            g = _chunk_grad(_chunk_logits(h, w, b, buf[: e - s]), lse[s:e], safe[s:e])
            rows = _row_weights(valid[s:e], scale if scale.dim() == 0 else scale[s:e], acc)
            _accumulate(g, h, w, s, e, cdtype, acc, grad_h, grad_w, grad_b, rows)
    del buf
    return _cast_grads(grad_h, grad_w, grad_b, weight, bias)


def _kept_softmax_grads(probs: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        targets: torch.Tensor, scale: torch.Tensor, cdtype: torch.dtype,
                        needs: tuple[bool, bool, bool]) -> tuple[Any, Any, Any]:
    """The gradients of :func:`_recomputed_grads` (every row valid, ``scale`` one per row) from the
    rows' softmax ``probs`` kept from forward. The target entries (one per row) are saved, turned
    into softmax - onehot for the matmuls and put back exactly: a second backward through a
    retained graph gets the same result."""
    acc = probs.dtype
    n = probs.shape[0]
    grad_h, grad_w, grad_b = _grad_buffers(hidden, weight, acc, needs)
    rows = torch.arange(n, device=probs.device)
    at_targets = probs[rows, targets]
    with torch.autocast(hidden.device.type, enabled=False):
        try:
            _accumulate(_onehot_grad_(probs, targets), hidden.to(cdtype), weight.to(cdtype), 0, n, cdtype, acc,
                        grad_h, grad_w, grad_b, scale.to(acc))
        finally:
            probs[rows, targets] = at_targets
    return _cast_grads(grad_h, grad_w, grad_b, weight, bias)


class ChunkedLinearTokenLogps(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T + bias)[i, targets[i]]`` for every row, ``chunk_rows`` rows at a
    time: the per-token log-probabilities that a preference loss sums per sequence. The output has
    one number per row, so a row's gradient scale is known only in backward. Rows that fit one chunk
    keep their softmax (the chunk's buffer) for backward: one ``[rows x vocab]`` block held, where
    the plain path holds the logits, the log-softmax and then their gradients. More rows take Cut
    Cross-Entropy's schedule: forward keeps each row's logsumexp, backward computes each chunk's
    logits again (one more matmul of the head)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        cdtype = _compute_dtype(hidden)
        acc = _acc_dtype(cdtype)
        w = weight.to(cdtype)
        b = None if bias is None else bias.to(cdtype)
        n = hidden.shape[0]
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        logps = torch.empty(n, dtype=acc, device=hidden.device)
        buf = _chunk_buffer(n, chunk_rows, weight.shape[0], acc, hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk_rows):
                e = min(s + chunk_rows, n)
                logits = _chunk_logits(hidden[s:e].to(cdtype), w, b, buf[: e - s])
                picked = logits.gather(1, targets[s:e, None]).squeeze(1)
                lse[s:e] = _softmax_inplace(logits)
                logps[s:e] = picked - lse[s:e]
        # one chunk, and a backward to come: its softmax is what backward needs
        ctx.probs = buf if 0 < n <= chunk_rows and any(ctx.needs_input_grad[:3]) else None
        del buf
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.cdtype, ctx.chunk_rows, ctx.has_bias = cdtype, chunk_rows, bias is not None
        return logps

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        # a log-probability is minus the row's cross-entropy: the same gradients, negated
        if ctx.probs is not None:
            grads = _kept_softmax_grads(ctx.probs, hidden, weight, bias, targets, -grad_out, ctx.cdtype, needs)
        else:
            every_row = torch.ones_like(targets, dtype=torch.bool)
            grads = _recomputed_grads(hidden, weight, bias, targets, every_row, lse, -grad_out, ctx.cdtype,
                                      ctx.chunk_rows, needs)
        return (*grads, None, None)


def _accumulate(g: torch.Tensor, h: torch.Tensor, w: torch.Tensor, s: int, e: int, cdtype: torch.dtype,
                acc: torch.dtype, grad_h: Any, grad_w: Any, grad_b: Any, rows: torch.Tensor | None = None) -> None:
    """Add one chunk's share to the gradient buffers. ``g``: d CE_i / d logits (float32) of the
    chunk's rows; ``rows``: each row's weight (None: 1). The weights are applied on the
    hidden-size side (to ``g @ w`` and to ``h``), never in a pass over the ``[rows x vocab]`` block."""
    if grad_b is not None:
        grad_b += g.sum(0) if rows is None else g.t() @ rows
    g = g.to(cdtype)
    if grad_h is not None:
        if rows is None and grad_h.dtype == g.dtype:
            torch.mm(g, w, out=grad_h[s:e])  # straight into the rows: no chunk-sized temporary
        elif rows is None:
            grad_h[s:e] = (g @ w).to(grad_h.dtype)
        else:
            grad_h[s:e] = ((g @ w).to(acc) * rows[:, None]).to(grad_h.dtype)
    if grad_w is not None:
        hw = h if rows is None else (h.to(acc) * rows[:, None]).to(cdtype)
        if cdtype == acc:
            grad_w.addmm_(g.t(), hw)
        else:
            grad_w += (g.t() @ hw).to(acc)


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 bias: torch.Tensor | None = None, *, ignore_index: int = -100,
                                 reduction: str = "sum", normalizer: Any = None,
                                 chunk_rows: int | None = None, recompute: bool = False) -> torch.Tensor:
    """Cross-entropy of ``hidden [N, H] @ weight.T [H, V] (+ bias [V])`` against ``targets [N]``
    without materialising the ``[N, V]`` logits. ``reduction``: ``"sum"`` over the rows whose target
    is not ``ignore_index``, ``"mean"`` over their count; ``normalizer`` (a number or tensor), when
    given, divides the sum instead. ``chunk_rows``: rows per chunk (default: :func:`chunk_rows_for`).
    ``recompute``: compute the logits again in backward instead of the gradients in forward (see
    :class:`ChunkedLinearCrossEntropy`)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected targets [{hidden.shape[0]}], got {tuple(targets.shape)}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction: 'sum' or 'mean', got {reduction!r}")
    rows = int(chunk_rows) if chunk_rows else chunk_rows_for(weight.shape[0])
    if rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
    targets = targets.to(hidden.device)
    on = torch.is_grad_enabled()
    grads = (on and hidden.requires_grad, on and weight.requires_grad, on and bias is not None and bias.requires_grad)
    loss = ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, int(ignore_index), rows, grads,
                                           bool(recompute))
    if normalizer is not None:
        if torch.is_tensor(normalizer):
            normalizer = normalizer.to(loss.device)
        return loss / normalizer
    if reduction == "mean":
        return loss / (targets != ignore_index).sum().clamp(min=1).to(loss.dtype)
    return loss


def chunked_linear_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               bias: torch.Tensor | None = None, *, chunk_rows: int | None = None) -> torch.Tensor:
    """``log_softmax(hidden [N, H] @ weight.T (+ bias))`` at ``targets [N]``: one log-probability per
    row (float32, float64 for float64 inputs), without materialising the ``[N, V]`` logits (see
    :class:`ChunkedLinearTokenLogps`). ``chunk_rows``: default :func:`chunk_rows_for`."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected targets [{hidden.shape[0]}], got {tuple(targets.shape)}")
    rows = int(chunk_rows) if chunk_rows else chunk_rows_for(weight.shape[0])
    if rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
    return ChunkedLinearTokenLogps.apply(hidden, weight, bias, targets.to(hidden.device), rows)
