"""``tensorboard``: scalars (loss, learning rate, grad norm, tokens/s, eval metrics) to TensorBoard."""

from __future__ import annotations

import os
from typing import Any

from ..interface import TrainingCallback
from ._util import is_main_process, missing_extra, numeric, tagged

__all__ = ["TensorBoardCallback"]


class TensorBoardCallback(TrainingCallback):
    """Writes every numeric log value as a scalar tagged ``train/...`` or ``eval/...`` (main
    process only).

    Args:
        log_dir: event file folder; default ``OUTPUT_DIR/runs``.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None) -> None:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise missing_extra("tensorboard", "tensorboard") from None
        self.log_dir = str(log_dir) if log_dir else None
        self.writer: Any = None

    def on_train_begin(self, trainer: Any, **kwargs: Any) -> None:
        if self.writer is None and is_main_process(trainer):
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self.log_dir or os.path.join(trainer.training_config.output_dir, "runs")
            self.writer = SummaryWriter(log_dir=log_dir)

    def on_log(self, trainer: Any, logs: dict[str, Any], step: int, **kwargs: Any) -> None:
        if self.writer is None:
            return
        for key, value in numeric(logs).items():
            self.writer.add_scalar(tagged(key), value, step)
        self.writer.flush()

    def on_train_end(self, trainer: Any, **kwargs: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
