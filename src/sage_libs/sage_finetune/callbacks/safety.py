"""Guards every run gets: a non-finite loss stops training before anything bad is saved; Ctrl-C
(SIGINT) and SIGTERM (what schedulers send before they kill) end the run with a checkpoint instead of
losing the steps since the last one; resuming a finished run trains nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator

from transformers import TrainerCallback

from ..errors import NonFiniteLossError, RunFinished, Terminated  # noqa: F401 (re-exported)

__all__ = ["NonFiniteGuard", "InterruptCallback", "RunFinished", "Terminated", "terminate_raises"]


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
        from ..utils.checkpoint import last_complete_checkpoint

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


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated("terminated (SIGTERM)")


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (so ``finally`` blocks and atomic writes
    clean up) instead of ending the process silently. Only in the main thread, and only when SIGTERM
    has its default action (an application's own handler is left alone)."""
    install = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if not install:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class InterruptCallback(TrainerCallback):
    """The first Ctrl-C (or SIGTERM) asks the run to stop: the current optimizer step finishes, a
    checkpoint is saved (whatever ``save_strategy`` says) and training ends; :meth:`BaseTrainer.train`
    then raises :class:`TrainingInterrupted` (the CLI exits with 130, or 143 after SIGTERM). A second
    signal stops at once, as usual, without saving. SIGTERM is what batch schedulers (Slurm,
    Kubernetes) send before they kill a job: their grace period must cover one optimizer step and one
    checkpoint save.

    The handlers are installed only in the main thread of a single-process run, and only when the
    signal still has Python's default handler (an application's own handler is left alone); under
    torchrun every rank would stop at a different step, so there the default behaviour stays.

    It also stops a run resumed from its final checkpoint before the HF Trainer trains a step past
    ``max_steps`` (:class:`RunFinished`).
    """

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        self.signum = int(signal.SIGINT)
        self._previous: dict[int, Any] = {}

    @property
    def verb(self) -> str:
        return "terminated (SIGTERM)" if self.signum == signal.SIGTERM else "interrupted"

    @contextlib.contextmanager
    def catch_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread() or int(os.environ.get("WORLD_SIZE", "1")) != 1:
            yield
            return
        ours = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: (signal.SIG_DFL, _raise_terminated)}
        for signum, defaults in ours.items():
            current = signal.getsignal(signum)
            if current is defaults or (isinstance(defaults, tuple) and current in defaults):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        try:
            yield
        finally:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
            self._previous = {}

    catch_sigint = catch_signals  # the name of earlier versions

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested, self.signum = True, int(signum)
        for other, previous in self._previous.items():
            signal.signal(other, previous)  # the next signal acts at once
        what = "SIGTERM received" if signum == signal.SIGTERM else "Interrupted"
        again = "a second SIGTERM" if signum == signal.SIGTERM else "Ctrl-C again"
        print(f"\n{what}: finishing this step and saving a checkpoint ({again} stops at once, without saving)",
              file=sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, **kw):
        if state.max_steps and state.global_step >= state.max_steps:
            raise RunFinished(f"step {state.global_step} of {state.max_steps}")

    def on_step_end(self, args, state, control, **kw):
        if self.requested and self.stopped_at is None:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
