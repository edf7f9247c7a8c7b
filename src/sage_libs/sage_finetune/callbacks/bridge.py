"""Runs :class:`TrainingCallback` hooks from inside the HF Trainer's event loop."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

__all__ = ["CallbackBridge"]


class CallbackBridge(TrainerCallback):
    """Translates HF Trainer events into our hook calls, with the isage-finetune trainer as the
    first argument. A hook returning True stops training after the current step."""

    def __init__(self, owner: Any, callbacks: list[Any], step_losses: Any) -> None:
        self.owner = owner  # the isage-finetune trainer: the first argument of every hook
        self.callbacks = list(callbacks)
        self.step_losses = step_losses  # hf_core.StepLosses: the micro-batch losses of the current step

    def _each(self, hook: str, *args: Any, control: Any = None, **kwargs: Any) -> None:
        results = [getattr(cb, hook)(self.owner, *args, **kwargs) for cb in self.callbacks if hasattr(cb, hook)]
        if control is not None and any(r is True for r in results):
            control.should_training_stop = True

    def on_train_begin(self, args, state, control, **kw):
        self._each("on_train_begin")

    def on_train_end(self, args, state, control, **kw):
        self._each("on_train_end")

    def on_epoch_begin(self, args, state, control, **kw):
        self._each("on_epoch_begin", int(state.epoch or 0))

    def on_epoch_end(self, args, state, control, **kw):
        metrics = next((e for e in reversed(state.log_history) if "loss" in e), None)
        self._each("on_epoch_end", max(int(round(state.epoch or 0)) - 1, 0), metrics)

    def on_step_begin(self, args, state, control, **kw):
        self._each("on_step_begin", state.global_step)

    def on_step_end(self, args, state, control, **kw):
        self._each("on_step_end", state.global_step, self.step_losses.pop_mean(), control=control)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        self._each("on_evaluate", dict(metrics or {}), control=control)

    def on_save(self, args, state, control, **kw):
        self._each("on_save", f"{args.output_dir}/checkpoint-{state.global_step}")

    def on_log(self, args, state, control, logs=None, **kw):
        if logs:
            self._each("on_log", dict(logs), state.global_step, control=control)
