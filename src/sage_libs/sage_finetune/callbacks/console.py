"""What a person watching a run sees: one progress bar, one line per evaluation, nothing else.

Replaces the HF Trainer's own console output (``ProgressCallback`` prints every log dict with its
values as strings and nests an evaluation bar whose cursor codes litter redirected logs;
``PrinterCallback`` prints the dicts). Every value stays in ``trainer_log.jsonl``.

On a terminal: a single bar with the step, loss, learning rate and ETA; evaluations print a line
above it. Redirected to a file (or with ``training.disable_tqdm``): one plain line per logging step
and per evaluation, with the elapsed time and an ETA, and no carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from transformers import TrainerCallback

__all__ = ["ConsoleCallback", "label_standalone_evaluation"]


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _number(value: Any) -> Any:
    try:
        return float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value
    except ValueError:
        return value


class ConsoleCallback(TrainerCallback):
    """Args:
        bar: show a progress bar when the stream is a terminal.
        stream: where to write (default: standard error).
    """

    def __init__(self, bar: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.want_bar = bar
        self._bar: Any = None
        self._start: float | None = None
        self._first_step = 0
        # the label of an evaluation outside the training steps: eval_on_start's, or a standalone
        # evaluation (trainer.evaluate, `sage-finetune eval`: standalone_evaluation)
        self.idle_label = "before training"
        self._training = False  # between on_train_begin and on_train_end: lines carry the step

    @property
    def _out(self) -> TextIO:
        return self.stream or sys.stderr

    def _interactive(self) -> bool:
        isatty = getattr(self._out, "isatty", None)
        return bool(self.want_bar and isatty is not None and isatty())

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self._out)
        else:
            print(line, file=self._out, flush=True)

    def _eta(self, state: Any) -> str:
        done = state.global_step - self._first_step
        if self._start is None or done <= 0 or not state.max_steps:
            return ""
        elapsed = time.perf_counter() - self._start
        left = elapsed / done * (state.max_steps - state.global_step)
        return f"  {_duration(elapsed)} elapsed, ETA {_duration(left)}"

    def standalone_evaluation(self) -> None:
        """What is logged next is an evaluation of its own, not at a training step (also after a
        training run that ended with an error, when on_train_end never came)."""
        self.idle_label = "evaluation"
        self._training = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self._start, self._first_step = time.perf_counter(), state.global_step
        self._training = True
        if self._interactive():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                             file=self._out, dynamic_ncols=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.update(state.global_step - self._bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        logs = {k: _number(v) for k, v in logs.items()}
        # an evaluation after train() has ended is not at "step N/N" of anything
        where = f"step {state.global_step}/{state.max_steps}" if self._training and state.max_steps \
            else self.idle_label
        if "eval_loss" in logs:
            extra = "".join(f"  {k} {v:.4f}" for k, v in logs.items()
                            if k.startswith("eval_") and k != "eval_loss" and isinstance(v, float)
                            and not k.endswith(("_runtime", "_per_second", "_preparation_time")))
            self._write(f"{where}  eval_loss {logs['eval_loss']:.4f}{extra}")
        if "loss" in logs:
            lr = logs.get("learning_rate")
            lr = lr if isinstance(lr, float) else None
            if self._bar is not None:
                self._bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{lr:.2e}" if lr is not None else "-")
            else:
                lr_text = f"  lr {lr:.2e}" if lr is not None else ""
                self._write(f"{where}  loss {logs['loss']:.4f}{lr_text}{self._eta(state)}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._training = False
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def label_standalone_evaluation(hf_trainer: Any) -> None:
    """A standalone evaluation (``evaluate``, ``sage-finetune eval``) is printed as "evaluation",
    not as eval_on_start's "before training"."""
    for callback in hf_trainer.callback_handler.callbacks:
        if isinstance(callback, ConsoleCallback):
            callback.standalone_evaluation()
