"""``dpo``: preference optimization (DPO, conservative DPO, IPO, ORPO, SimPO, KTO) with any method underneath.

``create_trainer("dpo", method="lora", preference_config=PreferenceConfig(beta=0.1), training_config=...,
lora_config=...)`` trains the method's trainer (LoRA adapter, QLoRA loading, full fine-tuning, ...)
unchanged except for three things, a small delta over :class:`.base.BaseTrainer`:

- data: preference records (:mod:`..data.preference`) instead of SFT records: each pair becomes a
  chosen and a rejected sequence, rendered with the run's chat template, only the reply and its
  end-of-turn scored; with ``loss_type: kto``, unpaired records (prompt, completion, label) become
  one sequence each (KTO lives here rather than under its own trainer name because everything but
  the data and the loss, the method underneath and the reference policy, is shared);
- batches: :class:`..data.preference_collate.PreferenceCollator` (chosen and rejected in one forward,
  padding-free on the CPU like SFT);
- the loss: :class:`._preference_core.PreferenceTrainerCore`, a subclass of the SFT core whose
  ``compute_loss`` is the preference loss.

The reference policy: adapter methods disable the adapter (PEFT's ``disable_adapter()``: the same
weights, no copy); full and freeze keep a frozen copy of the initial model; with
``precompute_ref_log_probs`` the reference log-probabilities are computed once before training.
"""

from __future__ import annotations

import logging
from typing import Any

from ..data.rendering import refuse_for_preference
from ..errors import ConfigError
from .objective import ObjectiveTrainer

__all__ = ["PreferenceTrainer"]

logger = logging.getLogger(__name__)

_PREFERENCE_EVAL_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                         "logps/chosen", "logps/rejected", "kl")


def kto_weight_advice(n_desirable: int, n_undesirable: int, desirable_weight: float,
                      undesirable_weight: float) -> str | None:
    """A warning when unbalanced data is not compensated by the weights: KTO (Ethayarajh et al.
    2024, eq. 8) wants ``w_d n_d / (w_u n_u)`` in ``[1, 4/3]``. None when it is, or when one side is
    absent (no ratio to keep)."""
    if not n_desirable or not n_undesirable:
        return None
    ratio = desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    if 1.0 <= ratio <= 4 / 3 + 1e-9:
        return None
    low = n_undesirable * undesirable_weight / n_desirable  # the desirable_weight that gives a ratio of 1
    high = 4 / 3 * low
    return (f"KTO: {n_desirable} desirable and {n_undesirable} undesirable examples with desirable_weight "
            f"{desirable_weight:g} and undesirable_weight {undesirable_weight:g} give a weighted ratio of {ratio:.2f}; "
            f"KTO suggests 1 to 1.33, e.g. preference.desirable_weight between {low:.2f} and {high:.2f}")


class _PreferenceMixin:
    """Mixed in front of a method's trainer class (see :class:`PreferenceTrainer`)."""

    preference_config: Any = None

    # -- model --------------------------------------------------------------------------------------
    def setup(self) -> None:
        fresh = self.model is None
        super().setup()
        if fresh and self.preference_config.disable_dropout:
            import torch

            for module in self.model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0

    def load_model(self, model_path: Any) -> None:
        super().load_model(model_path)
        self._policy_is_trained = True  # a saved policy is not its own reference (see hf_trainer_core)

    def hf_trainer_core(self) -> tuple[type, dict[str, Any]]:
        from ._preference_core import NEEDS_REFERENCE, PreferenceTrainerCore

        pc = self.preference_config
        ref_model = None
        frozen_reference = NEEDS_REFERENCE[pc.loss_type] and not self.uses_lora
        if frozen_reference and getattr(self, "_policy_is_trained", False):
            # a saved full/freeze policy (load_model, e.g. `eval --adapter DIR`): the reference is the
            # run's base model, not a copy of the trained weights (which would score every reward 0)
            ref_model = self.load_base_model()
        elif frozen_reference and not pc.precompute_ref_log_probs:
            import copy

            ref_model = copy.deepcopy(self.model)  # the initial weights, frozen
        if ref_model is not None:
            ref_model.requires_grad_(False)
            ref_model.eval()
        return PreferenceTrainerCore, {"preference": pc, "ref_model": ref_model}

    def build_hf_trainer(self, train_dataset: Any = None, eval_dataset: Any = None) -> Any:
        from ._preference_core import NEEDS_REFERENCE

        trainer = super().build_hf_trainer(train_dataset, eval_dataset)
        pc, tc = self.preference_config, self.training_config
        if pc.precompute_ref_log_probs and NEEDS_REFERENCE[pc.loss_type]:
            trainer.train_dataset = trainer.precompute_reference(train_dataset, tc.per_device_eval_batch_size)
            trainer.eval_dataset = trainer.precompute_reference(eval_dataset, tc.per_device_eval_batch_size)
        return trainer

    # -- data ---------------------------------------------------------------------------------------
    def check_inputs(self, train_data: Any = None, eval_data: Any = None) -> None:
        dc = self.data_config
        if dc.packing:
            raise ConfigError("data.packing: preference training does not pack pairs; set data.packing: false "
                              "(data.padding_free puts a batch's sequences in one row without padding)")
        refuse_for_preference(train_on_prompt=dc.train_on_prompt, formatting_func=self.formatting_func)
        if self.preference_config.loss_type == "kto" and self.training_config.per_device_train_batch_size < 2:
            raise ConfigError("training.per_device_train_batch_size: KTO needs at least 2 examples per batch; its KL "
                              "estimate scores each prompt with another example's completion (with 1 it would be the "
                              "example's own reward)")
        super().check_inputs(train_data, eval_data)

    def prepare_dataset(self, data: Any, split: str = "train") -> Any:
        """Preference records (or a path) -> a ``datasets.Dataset`` with ``chosen_input_ids``,
        ``chosen_labels``, ``rejected_input_ids``, ``rejected_labels`` and ``length``."""
        from datasets import Dataset, concatenate_datasets

        from ..data.pipeline import record_location
        from ..data.preference import PREFERENCE_COLUMNS, tokenize_preference_records
        from ..data.unpaired import UNPAIRED_COLUMNS, tokenize_unpaired_records

        if data is None:
            return None
        kto = self.preference_config.loss_type == "kto"
        wanted, tokenize = (UNPAIRED_COLUMNS, tokenize_unpaired_records) if kto else \
            (PREFERENCE_COLUMNS, tokenize_preference_records)
        parts, totals, mixes, sources = [], {}, [], []
        for records in self._record_sets(data, split):
            mixes.append(getattr(records, "mix", None))
            sources.append(getattr(records, "source", None))
            names = getattr(records, "column_names", None)
            if names is not None and all(c in names for c in wanted):
                parts.append(records)  # already tokenized
                continue
            options = self.render_options()
            columns, stats = tokenize(records, self.tokenizer, locate=record_location, options=options)
            if (stats.examples if kto else stats.pairs) == 0:
                source = getattr(records, "source", None) or f"{split} data"
                what = "unpaired preference examples" if kto else "preference pairs"
                same = f", {stats.dropped_same_after_truncation} cut to identical replies"
                raise ConfigError(f"{source}: no {what} to train on ({stats.records} records, "
                                  f"{stats.skipped_invalid} invalid, {stats.dropped_no_scored_tokens} with every scored "
                                  f"token cut by max_seq_length{same})")
            for key, value in stats.to_dict().items():
                totals[key] = totals.get(key, 0) + value if not isinstance(value, list) else \
                    (totals.get(key, []) + value)[:5]
            parts.append(Dataset.from_dict(columns))
        self.data_stats[split] = totals
        if kto and split == "train" and "desirable" in totals:
            pc = self.preference_config
            advice = kto_weight_advice(totals["desirable"], totals["undesirable"], pc.desirable_weight,
                                       pc.undesirable_weight)
            if advice:
                logger.warning(advice)
        if split != "train":
            return parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        from ..data.datasets import mix_sources  # weighted data.train_file entries, as in SFT

        return mix_sources(parts, mixes, sources, self.training_config.seed, totals)

    def data_collator(self) -> Any:
        from ..data.preference_collate import PreferenceCollator, UnpairedPreferenceCollator

        flat = self.plan_fast_paths().padding_free
        if self.preference_config.loss_type == "kto":
            return UnpairedPreferenceCollator(pad_token_id=self.tokenizer.pad_token_id, flatten=flat,
                                              max_length=self.training_config.max_seq_length)
        return PreferenceCollator(pad_token_id=self.tokenizer.pad_token_id, flatten=flat)

    # -- outputs ------------------------------------------------------------------------------------
    def evaluate(self, eval_dataset: Any) -> dict[str, Any]:
        """``eval_loss`` (the preference loss) and the reward metrics on held-out pairs."""
        from ..callbacks.console import label_standalone_evaluation

        eval_ds = self.prepare_dataset(eval_dataset, "eval")
        if self.hf_trainer is None:
            self.build_hf_trainer(None, eval_ds)
        label_standalone_evaluation(self.hf_trainer)
        if self.preference_config.precompute_ref_log_probs:
            eval_ds = self.hf_trainer.precompute_reference(eval_ds, self.training_config.per_device_eval_batch_size)
        ev = self.hf_trainer.evaluate(eval_dataset=eval_ds)
        out = {"eval_loss": ev["eval_loss"], "eval_samples": len(eval_ds), "eval_runtime": ev.get("eval_runtime")}
        out.update({f"eval_{k}": ev[f"eval_{k}"] for k in _PREFERENCE_EVAL_KEYS if f"eval_{k}" in ev})
        return out

    def write_outputs(self, metrics: dict[str, Any]) -> None:
        metrics["method"] = f"dpo/{self.method}"
        metrics["loss_type"] = self.preference_config.loss_type
        for key in ("perplexity", "perplexity_before"):  # exp of a preference loss means nothing
            metrics.pop(key, None)
        history = self.hf_trainer.state.log_history if self.hf_trainer is not None else []
        evals = [e for e in history if "eval_rewards/chosen" in e or "eval_rewards/rejected" in e]
        before = getattr(self.hf_trainer, "eval_before", None)
        if before and "eval_loss_before" in metrics:
            metrics.update({f"eval_{k}_before": before[f"eval_{k}"] for k in _PREFERENCE_EVAL_KEYS
                            if f"eval_{k}" in before})
        if evals:
            metrics.update({f"eval_{k}": evals[-1][f"eval_{k}"] for k in _PREFERENCE_EVAL_KEYS
                            if f"eval_{k}" in evals[-1]})
        super().write_outputs(metrics)


class PreferenceTrainer(ObjectiveTrainer):
    """Preference optimization; ``method`` (or ``preference_config.method``) picks the fine-tuning
    method underneath (default ``lora``). Other keyword arguments go to that method's trainer."""

    method = "dpo"
    extra_section = "preference"

    def __init__(self, method: str | None = None, preference_config: Any = None, **kwargs: Any) -> None:
        from ..config import PreferenceConfig, coerce_config
        from ..registry import get_trainer_class
        from .base import BaseTrainer

        config = coerce_config(PreferenceConfig, preference_config, "preference_config") or PreferenceConfig()
        if method is not None:
            config = config.replace(method=method)
        self.preference_config = config
        base = get_trainer_class(config.method)
        if not (isinstance(base, type) and issubclass(base, BaseTrainer)):
            raise ConfigError(f"preference.method: {config.method!r} is not a fine-tuning method built on the trainer "
                              "base; use lora, qlora, dora, lora_plus, full or freeze")
        cls = type(f"Preference{base.__name__}", (_PreferenceMixin, base), {"__module__": __name__})
        self.inner = cls(**kwargs)
        self.inner.preference_config = config
        self.inner.run_config_extra.update(method="dpo", preference=config.to_dict())

