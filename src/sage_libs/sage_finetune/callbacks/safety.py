"""A guard every run gets: a non-finite loss stops training before anything bad is saved (Ctrl-C and
SIGTERM are :mod:`..run.signals`)."""

from __future__ import annotations

from typing import Any, Callable

from transformers import TrainerCallback

from ..errors import NonFiniteLossError, RunFinished, Terminated  # noqa: F401 (re-exported)

__all__ = ["NonFiniteGuard", "RunFinished", "Terminated"]


def _on_any_rank(flag: bool, device: Any) -> bool:
    """``flag`` or-ed over all processes of a distributed run, so that every rank stops together
    (one rank raising alone would leave the others waiting in the next collective)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _first_non_finite(model: Any) -> str | None:
    import torch

    for name, param in model.named_parameters():
        if param.requires_grad and not bool(torch.isfinite(param.detach()).all()):
            return name
    return None


class NonFiniteGuard(TrainerCallback):
    """Raises :class:`NonFiniteLossError` at the first optimizer step whose loss is NaN or inf.

    The check runs in ``on_pre_optimizer_step``: the bad gradients never reach the weights, and the
    exception leaves the loop before the step's checkpoint would be saved, so the newest checkpoint
    on disk is the last good one. Before every checkpoint (and at the last step) the trainable
    weights are checked as well, which catches a finite loss with exploding updates (a learning rate
    far too high) one step before the loss itself overflows.

    The HF Trainer normally hides non-finite losses from its logs (``logging_nan_inf_filter``); the
    trainers turn that filter off so that the accumulated loss this guard reads is the true one. It
    costs one device sync per optimizer step.
    """

    def __init__(self, training_config: Any, accumulated_loss: Callable[[], Any]) -> None:
        self.training_config = training_config
        self.accumulated_loss = accumulated_loss  # the HF Trainer's running loss (hf_core.SFTTrainerCore)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        import torch

        loss = self.accumulated_loss()
        if isinstance(loss, torch.Tensor):
            if _on_any_rank(not bool(torch.isfinite(loss).all()), args.device):
                self._stop(args, state, f"the training loss is {float(loss.detach().float().sum())}")
        elif model is not None:  # a Trainer without _tr_loss: look at the gradients instead
            bad = next((name for name, param in model.named_parameters()
                        if param.grad is not None and not bool(torch.isfinite(param.grad).all())), None)
            if _on_any_rank(bad is not None, args.device):
                self._stop(args, state, f"the gradient of {bad or 'a parameter'} is not finite")

    def on_step_end(self, args, state, control, model=None, **kw):
        if model is None or not (control.should_save or control.should_training_stop
                                 or state.global_step >= state.max_steps):
            return
        bad = _first_non_finite(model)
        if _on_any_rank(bad is not None, args.device):
            self._stop(args, state, f"the weight {bad or '(on another process)'} became NaN or inf",
                       step=state.global_step)

    def _stop(self, args, state, what: str, step: int | None = None) -> None:
        from ..run.checkpoints import last_complete_checkpoint

        tc = self.training_config
        step = state.global_step + 1 if step is None else step
        plain = not (tc.deepspeed or tc.fsdp)
        last, _ = last_complete_checkpoint(args.output_dir, training_state=plain, weights=plain)
        kept = (f"the last good checkpoint is {last}" if last is not None
                else "no checkpoint was written before it")
        precision = ("fp16 is on and float16 overflows above 65504: try bf16 or float32" if tc.fp16
                     else "bf16 is on: try float32" if tc.bf16
                     else "with fp16, float16 overflows above 65504 (prefer bf16)")
        raise NonFiniteLossError(
            f"training stopped at optimizer step {step} (epoch {state.epoch or 0:.2f}): {what}. Nothing from "
            f"this step was saved; {kept}. Try a lower training.learning_rate (now {tc.learning_rate:g}) or "
            "more warm-up and gradient clipping (training.max_grad_norm); check the data near this step "
            f"(empty, huge or corrupted samples); {precision}.", step=step,
            checkpoint=None if last is None else str(last))
