"""Our subclass of the HF Trainer: the training loop stays theirs; we observe it and compute the
same loss with less work (see :mod:`._fast`)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import Trainer

from ._fast import (
    install_doc_attention,
    real_token_count,
    selective_causal_lm_loss,
    supports_selective_logits,
    tune_malloc,
)

__all__ = ["SFTTrainerCore"]

logger = logging.getLogger(__name__)


class SFTTrainerCore(Trainer):
    """``transformers.Trainer`` that reports each micro-batch loss to its owner (so user callbacks
    receive ``on_step_end(trainer, step, loss)``), and by default:

    * computes the loss from logits at the trained positions only (``training.selective_logits``),
      in chunks without a ``(tokens, vocab)`` logits tensor when those are large
      (``training.chunked_lm_loss``);
    * runs per-document attention when batches are padding-free or packed rows (position_ids, no
      attention_mask) and the model uses sdpa;
    * keeps freed memory in the process between steps on glibc (``training.malloc_tuning``).
    """

    def __init__(self, *args: Any, owner: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner
        tc = getattr(owner, "training_config", None)
        self.selective_logits = bool(getattr(tc, "selective_logits", True)) and supports_selective_logits(self.model)
        # sharded weights (FSDP, DeepSpeed ZeRO-3) are gathered for the head's own forward/backward only
        self.chunked_lm_loss = getattr(tc, "chunked_lm_loss", None)
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            self.chunked_lm_loss = False
        if getattr(tc, "malloc_tuning", True):
            tune_malloc()
        self.doc_attention = False
        if getattr(self.data_collator, "emits_position_ids", False):
            self.doc_attention = install_doc_attention(self.model)

    # -- loss -----------------------------------------------------------------------------------
    def _selective_ok(self, inputs: dict[str, Any]) -> bool:
        """The selective path computes exactly the model's own loss; anything that needs the full
        logits or a different loss (label smoothing, a custom loss, context/sequence parallelism)
        takes the HF Trainer's path."""
        if not self.selective_logits or "labels" not in inputs or self.label_smoother is not None \
                or self.compute_loss_func is not None or getattr(self.args, "use_liger_kernel", False):
            return False
        pc = getattr(self.accelerator, "parallelism_config", None)
        return pc is None or not (getattr(pc, "cp_enabled", False) or getattr(pc, "sp_enabled", False))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self._selective_ok(inputs):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        loss = selective_causal_lm_loss(model, inputs, num_items_in_batch, chunked=self.chunked_lm_loss)
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

    # -- checkpoints ----------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        # the owner records which run wrote the checkpoint before any of its files
        hook = getattr(self.owner, "_before_checkpoint", None)
        if hook is not None:
            hook(os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}"))
        super()._save_checkpoint(model, trial)

    # -- observation ----------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.owner.callbacks:  # a .item() per micro-batch syncs the device: only when someone listens
            scale = self.args.gradient_accumulation_steps if num_items_in_batch is None else 1
            self.owner._step_losses.append(float(loss.detach()) * scale)
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
