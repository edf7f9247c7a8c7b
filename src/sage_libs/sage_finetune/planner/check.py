"""The check ``train`` runs before it loads the model (``training.plan_check``): when the planner
predicts more memory than is available, a warning says by how much and what to change."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["check_before_load"]

logger = logging.getLogger("sage_libs.sage_finetune.planner")


def check_before_load(trainer: Any, train_dataset: Any) -> Any:
    """Plan ``trainer``'s run on the prepared ``train_dataset`` (memory only, no probe) and warn
    when it exceeds the memory available now. Returns the plan (None when it could not be made:
    planning never stops a run)."""
    from ..perf import resolve_group_by_length
    from .plan import plan_trainer
    from .shapes import GIB

    try:
        plan = plan_trainer(trainer, dataset=train_dataset, probe=False, suggest=False)
        if plan.fits is False:  # what to change: only worth computing when it does not fit
            from .suggest import suggestions

            inner = getattr(trainer, "inner", trainer)
            tc = inner.training_config
            plan.options = suggestions(plan, epochs=tc.num_train_epochs, max_steps=tc.max_steps, seed=tc.seed,
                                       group_by_length=resolve_group_by_length(inner.data_config,
                                                                               plan.run.padding_free),
                                       preference=False)
    except Exception as exc:  # noqa: BLE001 - an unknown architecture, an unreadable config: train anyway
        logger.debug("plan_check: no plan (%s)", exc)
        return None
    if plan.fits is False:
        fix = plan.overrides
        what = ("; to fit, set " + " ".join(fix)) if fix else (
            "; nothing the planner tried fits: use a smaller model, more memory, or more devices")
        logger.warning(
            "plan_check: this run is predicted to need %.2f GiB of %s at its peak (%s), but only %.2f GiB is "
            "available (%s)%s. `sage-finetune plan CONFIG` shows the breakdown; training.plan_check: false turns "
            "this check off.", plan.peak / GIB, "device memory" if plan.run.device == "cuda" else "RAM",
            plan.memory.phase, plan.budget / GIB, plan.budget_source, what)
    return plan
