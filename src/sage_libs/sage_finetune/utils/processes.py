"""Which process this is in a multi-process run (torchrun, accelerate, deepspeed), read from the
launcher's environment so that no torch import is needed to ask."""

from __future__ import annotations

import contextlib
import os
from typing import Any

__all__ = ["world_size", "is_main_process", "local_rank", "main_process_first"]


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that writes outputs and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def main_process_first() -> Any:
    """A context in which the main process goes first and the others wait for it (it tokenizes and
    caches; they reuse the cache); a no-op in a single process."""
    if world_size() <= 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().main_process_first()
