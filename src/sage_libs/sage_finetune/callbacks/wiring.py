"""The HF ``TrainerCallback`` objects every run gets, in order: the run log (trainer_log.jsonl), Ctrl-C /
SIGTERM handling, the non-finite guard, the user's HF callbacks and trackers (report_to), and the
bridge that runs our own :class:`TrainingCallback` hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

__all__ = ["run_callbacks"]


def run_callbacks(owner: Any, step_losses: Any, accumulated_loss: Callable[[], Any]) -> tuple[list[Any], Any]:
    """The callbacks for a run of ``owner`` (a trainer: its ``training_config`` and ``callbacks``),
    and the :class:`.safety.InterruptCallback` among them (the run asks it how the loop ended)."""
    from transformers import TrainerCallback

    from ..run import files as run_files
    from .bridge import CallbackBridge
    from .reporting import tracker_callbacks
    from .run_log import RunLogCallback
    from ..run.signals import InterruptCallback
    from .safety import NonFiniteGuard

    tc = owner.training_config
    ours = [cb for cb in owner.callbacks if not isinstance(cb, TrainerCallback)]
    theirs = [cb for cb in owner.callbacks if isinstance(cb, TrainerCallback)]
    theirs += tracker_callbacks(tc.report_to, owner.callbacks)  # report_to tensorboard/wandb
    interrupt = InterruptCallback()
    out = [RunLogCallback(Path(tc.output_dir) / run_files.TRAINER_LOG), interrupt,
           NonFiniteGuard(tc, accumulated_loss), *theirs]
    if ours:
        out.append(CallbackBridge(owner, ours, step_losses))
    return out, interrupt
