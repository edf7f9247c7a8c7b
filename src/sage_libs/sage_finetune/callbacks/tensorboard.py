"""``tensorboard``: scalars (loss, learning rate, grad norm, eval metrics...) to TensorBoard,
through transformers' own integration (what ``training.report_to: [tensorboard]`` uses)."""

from __future__ import annotations

import functools
import os
from typing import Any

from ..interface import TrainingCallback
from ._util import missing_extra

__all__ = ["TensorBoardCallback"]


class TensorBoardCallback(TrainingCallback):
    """Logs every value the HF Trainer logs, tagged ``train/...`` or ``eval/...``, at its optimizer
    step (main process only); an evaluation before training (``training.eval_on_start``) is the
    point at step 0.

    This is ``transformers.integrations.TensorBoardCallback`` with our options: creating one gives an
    object that is both this class (registered as ``tensorboard``) and an HF ``TrainerCallback``, so
    the trainer hands it every HF event. Unlike transformers' own, it sets the log directory before
    the first event, so the step-0 evaluation lands in it too. ``training.report_to: [tensorboard]``
    uses this callback (once, also when it is listed in ``callbacks``).

    Args:
        log_dir: event file folder; default ``$TENSORBOARD_LOGGING_DIR``, else ``OUTPUT_DIR/runs``.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is TensorBoardCallback:  # the HF-backed implementation (transformers is imported only now)
            cls = _implementation()
        return super().__new__(cls)

    def __init__(self, log_dir: str | os.PathLike | None = None) -> None:
        self.log_dir = str(log_dir) if log_dir else None


@functools.lru_cache(maxsize=None)
def _implementation() -> type:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise missing_extra("tensorboard", "tensorboard") from None
    from transformers.integrations import TensorBoardCallback as HFTensorBoardCallback

    class HFBackedTensorBoardCallback(HFTensorBoardCallback, TensorBoardCallback):
        __doc__ = TensorBoardCallback.__doc__

        def __init__(self, log_dir: str | os.PathLike | None = None) -> None:
            HFTensorBoardCallback.__init__(self)
            TensorBoardCallback.__init__(self, log_dir)

        def on_init_end(self, args, state, control, **kwargs):
            # where HF would decide only at train begin (and log an earlier evaluation elsewhere)
            if self.tb_writer is None:
                self.logging_dir = (self.log_dir or os.environ.get("TENSORBOARD_LOGGING_DIR")
                                    or os.path.join(args.output_dir, "runs"))
                self.logging_dir = os.path.expanduser(self.logging_dir)

    HFBackedTensorBoardCallback.__name__ = HFBackedTensorBoardCallback.__qualname__ = "TensorBoardCallback"
    return HFBackedTensorBoardCallback
