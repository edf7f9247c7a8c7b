"""Signals during a run: Ctrl-C (SIGINT) and SIGTERM (what schedulers send before they kill) end the
run with a checkpoint instead of losing the steps since the last one; outside the training loop SIGTERM
raises, so that ``finally`` blocks and atomic writes clean up; resuming a finished run trains nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator

from transformers import TrainerCallback

from ..errors import RunFinished, Terminated

__all__ = ["InterruptCallback", "terminate_raises", "outputs_first"]


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


@contextlib.contextmanager
def outputs_first() -> Iterator[dict[str, int | None]]:
    """After the last step the run only evaluates and writes its outputs: a Ctrl-C or SIGTERM then
    waits for them (a few seconds) instead of leaving metrics.json without adapter/. Yields a dict
    whose ``signum`` says which signal came; a second signal stops at once (atomic writes clean up).
    Only in the main thread of a single process, and only over Python's default handlers."""
    got: dict[str, int | None] = {"signum": None}
    if threading.current_thread() is not threading.main_thread() or int(os.environ.get("WORLD_SIZE", "1")) != 1:
        yield got
        return
    defaults = {signal.SIGINT: (signal.default_int_handler,), signal.SIGTERM: (signal.SIG_DFL, _raise_terminated)}
    previous = {s: signal.getsignal(s) for s, ok in defaults.items() if signal.getsignal(s) in ok}

    def on_signal(signum: int, frame: Any) -> None:
        if got["signum"] is not None:  # the second one: at once
            for s, handler in previous.items():
                signal.signal(s, handler)
            if signum == signal.SIGTERM:
                raise Terminated("terminated (SIGTERM)")
            raise KeyboardInterrupt
        got["signum"] = int(signum)
        what = "SIGTERM received" if signum == signal.SIGTERM else "Interrupted"
        print(f"\n{what} after the last step: writing the run's outputs first (a second one stops at once, "
              "without them)", file=sys.stderr, flush=True)

    for s in previous:
        signal.signal(s, on_signal)
    try:
        yield got
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
        self.steps_done = False  # the last optimizer step has ended: a signal now saves nothing more
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
        doing = ("after the last step: the run is complete, writing its outputs" if self.steps_done
                 else "finishing this step and saving a checkpoint")
        print(f"\n{what}: {doing} ({again} stops at once, without saving)", file=sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, **kw):
        if state.max_steps and state.global_step >= state.max_steps:
            raise RunFinished(f"step {state.global_step} of {state.max_steps}")

    def on_step_end(self, args, state, control, **kw):
        if self.requested and self.stopped_at is None:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        self.steps_done = bool(state.max_steps) and state.global_step >= state.max_steps
