"""Which process this is in a multi-process run (torchrun, accelerate, deepspeed), read from the
launcher's environment so that no torch import is needed to ask."""

from __future__ import annotations

import contextlib
import os
from typing import Any

__all__ = ["world_size", "is_main_process", "local_rank", "main_process_first", "run_device"]


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that writes outputs and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def run_device(training_config: Any) -> str:
    """Where a run of ``training_config`` trains, known before any model is loaded: ``"cpu"`` with
    ``training.use_cpu`` or without a CUDA GPU, else ``"cuda"``. The one answer the planner, the
    fast paths, QLoRA and the HF arguments read (after loading, the model's own device is
    ``perf.selective_logits.model_device_type``)."""
    if getattr(training_config, "use_cpu", False):
        return "cpu"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def main_process_first() -> Any:
    """A context in which the main process goes first and the others wait for it (it tokenizes and
    caches; they reuse the cache); a no-op in a single process."""
    if world_size() <= 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().main_process_first()
