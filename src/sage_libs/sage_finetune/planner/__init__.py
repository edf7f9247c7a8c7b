"""Know before you run: peak memory and time of a training run, predicted without loading weights.

    sage-finetune plan run.yaml [--device cpu|cuda] [--memory 24GB] [--processes N]
    trainer.plan()            # the same from Python: a Plan (print it, or .to_dict())

The model's ``config.json`` gives its shapes (:mod:`.spec`), the run's own data preparation gives
the token lengths (:mod:`.batches`), and the arithmetic of :mod:`.memory` and :mod:`.timing`
turns them into bytes and seconds (:mod:`.memory` puts together :mod:`.shapes`, :mod:`.weights` and
:mod:`.activations`); :mod:`.probe` measures this machine's throughput in about two
seconds; :mod:`.suggest` finds what to change to fit a budget. Only the probe imports torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["plan_trainer", "Plan", "ModelSpec", "RunShape", "Batch", "plan_memory", "parse_memory"]


def __getattr__(name: str) -> Any:
    if name in ("plan_trainer", "Plan", "parse_memory", "plan_from_lengths", "run_shape"):
        from . import plan

        return getattr(plan, name)
    if name == "ModelSpec":
        from .spec import ModelSpec

        return ModelSpec
    if name in ("RunShape", "Batch", "plan_memory", "MemoryPlan"):
        from . import memory

        return getattr(memory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
