"""``training.report_to``: TensorBoard and W&B go through our ``tensorboard``/``wandb`` callbacks.

Those callbacks are transformers' integrations with a fix: the HF ones only learn where to log at
train begin, so an evaluation before training (``training.eval_on_start``) went to ``./runs`` in
the current directory (TensorBoard) or started a run without our settings (W&B). Routing
``report_to`` through the same callbacks gives one behaviour however a tracker is turned on; a
tracker turned on both ways logs once. Other trackers (mlflow, ...) stay with transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["OURS", "hf_report_to", "tracker_callbacks"]

# report_to name -> (module, class) of the callback that does it
OURS = {"tensorboard": ("tensorboard", "TensorBoardCallback"), "wandb": ("wandb", "WandbCallback")}


def _class(name: str) -> type:
    module, attr = OURS[name]
    return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


def hf_report_to(report_to: list[str]) -> list[str]:
    """The trackers left to transformers' own integrations. Ours must be installed (checked here,
    before anything is loaded)."""
    import importlib.util

    from ..errors import ConfigError

    for name in OURS:
        if name in report_to and importlib.util.find_spec(name) is None:
            raise ConfigError(f"training.report_to: {name} is not installed; pip install {name} "
                              f"(or remove {name} from report_to)")
    return [r for r in report_to if r not in OURS]


def tracker_callbacks(report_to: list[str], callbacks: list[Any]) -> list[Any]:
    """Our callbacks for the ``report_to`` trackers we handle, except those already among ``callbacks``."""
    out = []
    for name in OURS:
        if name in report_to:
            cls = _class(name)
            if not any(isinstance(cb, cls) for cb in callbacks):
                out.append(cls())
    return out
