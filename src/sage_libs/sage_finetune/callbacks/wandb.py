"""``wandb``: log the run to Weights & Biases (``WANDB_MODE=offline`` works without network)."""

from __future__ import annotations

from typing import Any

from ..interface import TrainingCallback
from ._util import is_main_process, missing_extra, numeric, tagged

__all__ = ["WandbCallback"]


class WandbCallback(TrainingCallback):
    """Starts a W&B run when training starts (main process only), logs every numeric value with
    its step, puts the final training metrics in the run summary and finishes the run.

    Args:
        project: W&B project.  run_name: the run's name.  entity, tags, group: as in ``wandb.init``.
        mode: ``online``/``offline``/``disabled``; default: the ``WANDB_MODE`` environment variable.
        dir: where wandb writes its files; default: the run's output_dir.
    """

    def __init__(self, project: str = "isage-finetune", run_name: str | None = None, entity: str | None = None,
                 tags: list[str] | None = None, group: str | None = None, mode: str | None = None,
                 dir: str | None = None) -> None:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise missing_extra("wandb", "wandb") from None
        self.init_kwargs: dict[str, Any] = {"project": project, "name": run_name, "entity": entity, "tags": tags,
                                            "group": group, "mode": mode, "dir": dir}
        self.run: Any = None

    def on_train_begin(self, trainer: Any, **kwargs: Any) -> None:
        if self.run is not None or not is_main_process(trainer):
            return
        import wandb

        init = {k: v for k, v in self.init_kwargs.items() if v is not None}
        init.setdefault("dir", trainer.training_config.output_dir)
        config = trainer.resolved_config() if hasattr(trainer, "resolved_config") else {}
        self.run = wandb.init(config=config, reinit="finish_previous", **init)

    def on_log(self, trainer: Any, logs: dict[str, Any], step: int, **kwargs: Any) -> None:
        if self.run is not None:
            self.run.log({tagged(k): v for k, v in numeric(logs).items()}, step=step)

    def on_train_end(self, trainer: Any, **kwargs: Any) -> None:
        if self.run is None:
            return
        history = trainer.hf_trainer.state.log_history if getattr(trainer, "hf_trainer", None) else []
        final = next((e for e in reversed(history) if "train_loss" in e), {})
        for key, value in numeric(final).items():
            self.run.summary[key] = value
        self.run.finish()
        self.run = None
