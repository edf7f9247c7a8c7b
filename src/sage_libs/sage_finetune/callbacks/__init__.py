"""Callbacks: user hooks (:class:`~sage_libs.sage_finetune.interface.TrainingCallback`) bridged
onto the HF Trainer, the run logger behind ``trainer_log.jsonl``, and built-ins selectable by name
(``tensorboard``, ``wandb``, ``early_stop``)::

    from sage_libs.sage_finetune.callbacks import WandbCallback, TensorBoardCallback, EarlyStopCallback
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TensorBoardCallback": "tensorboard",
    "WandbCallback": "wandb",
    "EarlyStopCallback": "early_stop",
    "CallbackBridge": "bridge",
    "RunLogCallback": "run_log",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
