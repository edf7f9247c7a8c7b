"""Small helpers shared by the built-in callbacks (standard library only)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["missing_extra", "is_main_process", "numeric", "tagged"]


def missing_extra(package: str, extra: str) -> ImportError:
    # the extra's package by name: 'pip install isage-finetune[...]' would fetch an unrelated PyPI project
    return ImportError(f"{package} is not installed; install it with: pip install {package} (the [{extra}] extra "
                       "of an isage-finetune checkout: pip install -e '.[" + extra + "]')")


def is_main_process(trainer: Any) -> bool:
    state = getattr(getattr(trainer, "hf_trainer", None), "state", None)
    if state is not None:
        return bool(state.is_world_process_zero)
    return int(os.environ.get("RANK", "0")) == 0


def numeric(logs: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def tagged(key: str) -> str:
    """``eval_loss`` -> ``eval/loss``; ``loss`` -> ``train/loss``."""
    return f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
