"""``trainer_log.jsonl``: one JSON line per log event, written by the main process only."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

__all__ = ["RunLogCallback", "read_log"]


class RunLogCallback(TrainerCallback):
    """Appends every HF log event (loss, learning_rate, grad_norm, eval metrics...) with its step,
    epoch and the real-token throughput since the previous event."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._last_time: float | None = None
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kw):
        self._last_time = time.perf_counter()
        self._last_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        entry: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        entry.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str)) or v is None})
        now = time.perf_counter()
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if "loss" in logs and self._last_time is not None and now > self._last_time and tokens > self._last_tokens:
            entry["tokens_per_second"] = round((tokens - self._last_tokens) / (now - self._last_time), 2)
            self._last_time, self._last_tokens = now, tokens
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
