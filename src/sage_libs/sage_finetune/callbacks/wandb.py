"""``wandb``: log the run to Weights & Biases (``WANDB_MODE=offline`` works without network),
through transformers' own integration (what ``training.report_to: [wandb]`` uses)."""

from __future__ import annotations

import functools
import os
from typing import Any

from ..interface import TrainingCallback
from ._util import missing_extra

__all__ = ["WandbCallback"]


class WandbCallback(TrainingCallback):
    """Starts a W&B run at the first event of the main process (an evaluation before training
    included: it is the point at ``train/global_step`` 0), logs every value the HF Trainer logs
    against ``train/global_step``, keeps the final training metrics in the run summary and finishes
    the run when training (and its final evaluation) is over.

    This is ``transformers.integrations.WandbCallback`` with our options: creating one gives an object
    that is both this class (registered as ``wandb``) and an HF ``TrainerCallback``. The run's config
    holds the HF arguments, the model and PEFT configs, and our ``run_config.yaml``.
    ``training.report_to: [wandb]`` uses this callback (once, also when it is listed in ``callbacks``).

    Args:
        project: W&B project; default: the ``WANDB_PROJECT`` environment variable, else isage-finetune.
        run_name: the run's name; default: ``training.run_name``.
        entity, tags, group: as in ``wandb.init``.
        mode: ``online``/``offline``/``disabled``; default: the ``WANDB_MODE`` environment variable.
        dir: where wandb writes its files; default: the run's output_dir.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is WandbCallback:  # the HF-backed implementation (transformers is imported only now)
            cls = _implementation()
        return super().__new__(cls)

    def __init__(self, project: str | None = None, run_name: str | None = None, entity: str | None = None,
                 tags: list[str] | None = None, group: str | None = None, mode: str | None = None,
                 dir: str | None = None) -> None:
        project = project or os.environ.get("WANDB_PROJECT") or "isage-finetune"
        self.init_kwargs: dict[str, Any] = {"project": project, "name": run_name, "entity": entity, "tags": tags,
                                            "group": group, "mode": mode, "dir": dir}


def _run_config(output_dir: str) -> dict[str, Any]:
    """Our resolved run config (``OUTPUT_DIR/run_config.yaml``, written before training starts)."""
    path = os.path.join(output_dir, "run_config.yaml")
    if not os.path.isfile(path):
        return {}
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return {}
    return {"isage_finetune": config} if isinstance(config, dict) else {}


@functools.lru_cache(maxsize=None)
def _implementation() -> type:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise missing_extra("wandb", "wandb") from None
    from transformers.integrations import WandbCallback as HFWandbCallback

    class HFBackedWandbCallback(HFWandbCallback, WandbCallback):
        __doc__ = WandbCallback.__doc__

        def __init__(self, project: str | None = None, run_name: str | None = None, entity: str | None = None,
                     tags: list[str] | None = None, group: str | None = None, mode: str | None = None,
                     dir: str | None = None) -> None:
            HFWandbCallback.__init__(self)
            WandbCallback.__init__(self, project, run_name, entity, tags, group, mode, dir)
            self.run: Any = None
            self._finish_after_eval = False

        def setup(self, args, state, model, **kwargs):
            # our run first (HF's setup reuses an active run, and only knows WANDB_PROJECT and run_name)
            if state.is_world_process_zero and (self.run is None or self._wandb.run is not self.run):
                init = {k: v for k, v in self.init_kwargs.items() if v is not None}
                init.setdefault("name", args.run_name)
                init.setdefault("dir", args.output_dir)
                if init.get("dir"):
                    os.makedirs(init["dir"], exist_ok=True)
                self.run = self._wandb.init(config=_run_config(args.output_dir), reinit="finish_previous", **init)
            super().setup(args, state, model, **kwargs)

        def on_train_begin(self, args, state, control, **kwargs):
            self._finish_after_eval = False
            super().on_train_begin(args, state, control, **kwargs)

        def on_train_end(self, args, state, control, **kwargs):
            super().on_train_end(args, state, control, **kwargs)
            if self.run is None or not state.is_world_process_zero:
                return
            # the trainer evaluates once more after training unless the last step already did
            evaluated_last = any(e.get("step") == state.global_step and "eval_loss" in e for e in state.log_history)
            if args.eval_strategy != "no" and not evaluated_last:
                self._finish_after_eval = True
            else:
                self._finish()

        def on_log(self, args, state, control, logs=None, **kwargs):
            super().on_log(args, state, control, logs=logs, **kwargs)
            if self._finish_after_eval and logs and "eval_loss" in logs:
                self._finish()

        def _finish(self) -> None:
            self._finish_after_eval = False
            if self.run is not None:
                self.run.finish()
            self.run, self._initialized = None, False

    HFBackedWandbCallback.__name__ = HFBackedWandbCallback.__qualname__ = "WandbCallback"
    return HFBackedWandbCallback
