"""Our subclass of the HF Trainer: the training loop stays theirs; we observe it and compute the
same loss with less work (:mod:`..perf`).

Every place where this package touches a private part of ``transformers.Trainer`` is in this file:
``_save_checkpoint`` / ``_get_output_dir`` (the run identity goes into a checkpoint first),
``_track_num_input_tokens`` (real-token counting), ``_get_eval_sampler`` (evaluation in dataset order),
``_prepare_inputs`` / ``_get_num_items_in_batch``
(the loss-only evaluation step) and ``_tr_loss`` (:meth:`SFTTrainerCore.accumulated_loss`, read by the
non-finite guard). Upgrading transformers means checking these.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from transformers import Trainer

from ..perf import FastPaths
from ..perf.selective_logits import selective_causal_lm_loss
from ..perf.token_count import real_token_count

__all__ = ["SFTTrainerCore", "StepLosses"]

logger = logging.getLogger(__name__)


class StepLosses:
    """The micro-batch losses of the optimizer step in progress, for callbacks' ``on_step_end``."""

    def __init__(self) -> None:
        self._losses: list[float] = []

    def add(self, loss: float) -> None:
        self._losses.append(loss)

    def pop_mean(self) -> float | None:
        """Mean loss of the micro-batches of the step that just ended (None: none recorded)."""
        if not self._losses:
            return None
        loss = sum(self._losses) / len(self._losses)
        self._losses.clear()
        return loss


class SFTTrainerCore(Trainer):
    """``transformers.Trainer`` that computes the causal LM loss through the run's fast paths
    (selective logits, chunked LM loss; decided by :func:`..perf.plan_fast_paths`), records each
    micro-batch loss in ``step_losses`` (when callbacks listen) and calls ``before_checkpoint(path)``
    before it writes ``checkpoint-N``."""

    def __init__(self, *args: Any, fast_paths: FastPaths | None = None, step_losses: StepLosses | None = None,
                 before_checkpoint: Callable[[str], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_paths = fast_paths or FastPaths()
        self.step_losses = step_losses
        self.before_checkpoint = before_checkpoint

    @property
    def selective_logits(self) -> bool:
        return self.fast_paths.selective_logits

    @property
    def doc_attention(self) -> bool:
        return self.fast_paths.doc_attention

    def get_decay_parameter_names(self, model) -> list[str]:
        # the project's one weight-decay rule (HF's minus DoRA magnitudes), shared with the strategies
        from ..methods.optim import decay_parameter_names

        return decay_parameter_names(model)

    # -- loss -----------------------------------------------------------------------------------
    def _selective_ok(self, inputs: dict[str, Any]) -> bool:
        """The selective path computes exactly the model's own loss; anything that needs the full
        logits or a different loss (label smoothing, a custom loss, context/sequence parallelism)
        takes the HF Trainer's path."""
        if not self.fast_paths.selective_logits or "labels" not in inputs or self.label_smoother is not None \
                or self.compute_loss_func is not None or getattr(self.args, "use_liger_kernel", False):
            return False
        pc = getattr(self.accelerator, "parallelism_config", None)
        return pc is None or not (getattr(pc, "cp_enabled", False) or getattr(pc, "sp_enabled", False))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self._selective_ok(inputs):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        loss = selective_causal_lm_loss(model, inputs, num_items_in_batch, chunked=self.fast_paths.chunked_lm_loss)
        # as Trainer.compute_loss: num_items_in_batch counts every rank's tokens and DDP averages
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs \
                and num_items_in_batch is not None:
            loss_scale = self.accelerator.num_processes // self.get_tp_size()
            loss = loss * (loss_scale if self.args.n_gpu <= 1 else self.args.n_gpu)
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not prediction_loss_only or not self._selective_ok(inputs):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        num_items_in_batch = self._get_num_items_in_batch([inputs], self.args.device)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        return loss.detach().mean(), None, None

    def accumulated_loss(self) -> Any:
        """The loss accumulated since the last logging step (a tensor), or None on a Trainer
        version without it."""
        return getattr(self, "_tr_loss", None)

    def _get_train_sampler(self, train_dataset=None):
        # Length grouping over whole global batches, ordered by (seed, epoch): N processes then train
        # on exactly the samples of a 1-process run with N-fold accumulation (data/sampling.py).
        sampler = super()._get_train_sampler(train_dataset)
        from transformers.trainer_pt_utils import LengthGroupedSampler

        if isinstance(sampler, LengthGroupedSampler):
            from ..data.sampling import GlobalLengthGroupedSampler, global_batch_size

            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return GlobalLengthGroupedSampler(sampler.lengths, global_batch_size(self.args), seed)
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        # The HF Trainer gives evaluation the length-grouped sampler when training uses it. Its
        # eval_loss is a mean of per-batch means, so regrouping the batches moves the number: an
        # evaluation must not depend on how training is sampled. Dataset order, as with "random".
        if self.args.train_sampling_strategy == "group_by_length" and eval_dataset is not None:
            from torch.utils.data import SequentialSampler
            from transformers.trainer_utils import has_length

            if not has_length(eval_dataset):
                return None
            return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None
        return super()._get_eval_sampler(eval_dataset)

    # -- checkpoints ----------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        import os

        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        if self.before_checkpoint is not None:  # the run's identity goes in before any of its files
            self.before_checkpoint(folder)
        super()._save_checkpoint(model, trial)
        if self.args.should_save:  # safetensors writes the weights 0600: the umask decides, as for every file
            from ..utils.io import follow_umask

            follow_umask(folder)

    # -- observation ----------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.step_losses is not None:  # a .item() per micro-batch syncs the device: only when someone listens
            scale = self.args.gradient_accumulation_steps if num_items_in_batch is None else 1
            self.step_losses.add(float(loss.detach()) * scale)
        return loss

    def _track_num_input_tokens(self, inputs):
        # Batches with position_ids and no attention_mask (packed or padding-free): count every
        # token but the padding tail. The HF count (input_ids != pad) misses real eos tokens when
        # the tokenizer pads with eos.
        if self.args.include_num_input_tokens_seen == "non_padding" and "attention_mask" not in inputs \
                and "position_ids" in inputs and "input_ids" in inputs:
            pad = getattr(self.processing_class, "pad_token_id", None)
            count = real_token_count(inputs["input_ids"], inputs["position_ids"], pad)
            count = torch.as_tensor(count, device=self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += self.accelerator.gather(count).sum().item()
            return
        super()._track_num_input_tokens(inputs)
