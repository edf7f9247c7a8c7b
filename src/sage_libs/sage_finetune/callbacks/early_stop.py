"""``early_stop``: stop when an evaluation metric stops improving."""

from __future__ import annotations

import math
import sys
from typing import Any

from ..interface import TrainingCallback

__all__ = ["EarlyStopCallback"]


class EarlyStopCallback(TrainingCallback):
    """Stops training after ``patience`` evaluations in a row without an improvement of more
    than ``min_delta`` in ``metric`` (``mode='min'`` for losses, ``'max'`` for accuracies).

    ``stopped_at_eval`` counts evaluations up to the stop; ``stopped_step`` is the optimizer step
    (None while it has not stopped). When it stops, it says so on the console (stderr) and the
    run's metrics (``metrics.json``) get ``stopped_early`` and an ``early_stop`` summary: the step,
    the metric, its best value and the step of the best (see :meth:`final_metrics`).
    """

    def __init__(self, patience: int = 3, metric: str = "eval_loss", min_delta: float = 0.0, mode: str = "min") -> None:
        if patience < 1:
            raise ValueError(f"EarlyStopCallback.patience must be >= 1, got {patience}")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopCallback.mode must be 'min' or 'max', got {mode!r}")
        if min_delta < 0:
            raise ValueError(f"EarlyStopCallback.min_delta must be >= 0, got {min_delta}")
        self.patience, self.metric, self.min_delta, self.mode = patience, metric, min_delta, mode
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_evals = self.evals = 0
        self.stopped_at_eval: int | None = None
        self.stopped_step: int | None = None
        self.best_step: int | None = None
        self.last: float | None = None

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_evaluate(self, trainer: Any, metrics: dict[str, Any], **kwargs: Any) -> bool:
        key = self.metric if self.metric in metrics else f"eval_{self.metric}"
        if key not in metrics:
            raise KeyError(f"EarlyStopCallback: metric {self.metric!r} is not among the evaluation metrics "
                           f"({', '.join(sorted(metrics))})")
        self.evals += 1
        value = float(metrics[key])
        self.last = value
        state = getattr(getattr(trainer, "hf_trainer", None), "state", None)
        step = state.global_step if state is not None else None
        if self.improved(value):
            self.best, self.best_step, self.bad_evals = value, step, 0
            return False
        self.bad_evals += 1
        if self.bad_evals < self.patience:
            return False
        self.stopped_at_eval = self.evals
        self.stopped_step = step
        if _is_main(state):
            print(f"Early stopping at step {step}: {key} = {value:.6g} has not improved on its best "
                  f"{self.best:.6g} (step {self.best_step}) for {self.bad_evals} evaluation(s) "
                  f"(patience {self.patience}, min_delta {self.min_delta:g}, mode {self.mode})",
                  file=sys.stderr, flush=True)
        return True

    def final_metrics(self) -> dict[str, Any]:
        """What the run's metrics (``metrics.json``) record about early stopping."""
        return {"stopped_early": self.stopped_step is not None or self.stopped_at_eval is not None,
                "early_stop": {"metric": self.metric, "step": self.stopped_step, "evaluations": self.evals,
                               "best": None if math.isinf(self.best) else self.best, "best_step": self.best_step,
                               "last": self.last, "patience": self.patience, "min_delta": self.min_delta,
                               "mode": self.mode}}


def _is_main(state: Any) -> bool:
    return bool(getattr(state, "is_world_process_zero", True))
