"""The preference losses and the HF Trainer subclass that computes them (imports torch).

One forward per batch: the collator puts every pair's chosen sequence and then every pair's
rejected sequence in one batch (padded rows, or one padding-free row); a sequence's log-probability
is the sum of its scored tokens' log-probabilities (logits computed at those positions only, when
the model supports it). The reference log-probabilities come from, in this order: columns computed
once before training (``precompute_ref_log_probs``), a frozen copy (full fine-tuning), or the same
model with its adapter disabled (adapter methods: no second copy).

KTO (unpaired examples, :class:`..data.preference_collate.UnpairedPreferenceCollator` batches): one forward
with gradients over the examples, one without over the mismatched sequences of the KL estimate, and
the reference's forwards over both.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..data.render import IGNORE_INDEX
from .hf_core import SFTTrainerCore

__all__ = ["SequenceLogps", "sequence_logps", "preference_loss", "kto_kl_estimate", "kto_loss",
           "PreferenceTrainerCore", "NEEDS_REFERENCE"]

NEEDS_REFERENCE = {"sigmoid": True, "ipo": True, "orpo": False, "simpo": False, "kto": True}


class SequenceLogps(NamedTuple):
    """Per sequence: the summed log-probability of its scored tokens and their number; ``whole_*``:
    the same over every token of the sequence but the first (prompt included), for the sequences
    that asked for it (ORPO's NLL term), else None."""

    sums: torch.Tensor
    counts: torch.Tensor
    whole_sums: torch.Tensor | None = None
    whole_counts: torch.Tensor | None = None


def sequence_logps(model: Any, inputs: dict[str, Any], n_sequences: int, selective: bool = True,
                   whole_upto: int = 0, chunked: bool | None = False) -> SequenceLogps:
    """Log-probabilities of the ``n_sequences`` sequences of a :class:`..data.preference_collate.PreferenceCollator`
    batch. ``whole_upto`` > 0: sequences ``0 .. whole_upto-1`` are also scored over all their tokens
    (the logits at their prompt positions are computed too; the others' are not). ``chunked``
    (``training.chunked_lm_loss``, with ``selective``): the LM head runs in chunks of rows, so not
    even the kept positions' ``(tokens, vocab)`` logits exist at once."""
    ids, labels, owners_all = inputs["input_ids"], inputs["labels"], inputs["sequence_ids"]
    # position t is kept when it predicts token t+1 of the same sequence and that token is wanted
    scored = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    scored[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    keep = scored
    if whole_upto:
        nxt = owners_all[:, 1:]
        whole = torch.zeros_like(scored)
        whole[:, :-1] = (owners_all[:, :-1] == nxt) & (nxt >= 0) & (nxt < whole_upto)
        keep = scored | whole
    targets = ids[:, 1:][keep[:, :-1]]
    owners = owners_all[:, 1:][keep[:, :-1]]
    forward = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
    forward["use_cache"] = False
    token_logps = _kept_token_logps(model, forward, keep, targets, selective, chunked)

    def per_sequence(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(n_sequences, dtype=values.dtype, device=values.device)
        return out.index_add(0, owners[where], values[where])

    is_scored = scored[keep]
    ones = torch.ones_like(token_logps)
    sums, counts = per_sequence(token_logps, is_scored), per_sequence(ones, is_scored)
    if not whole_upto:
        return SequenceLogps(sums, counts)
    is_whole = whole[keep]
    return SequenceLogps(sums, counts, per_sequence(token_logps, is_whole), per_sequence(ones, is_whole))


def _kept_token_logps(model: Any, forward: dict[str, Any], keep: torch.Tensor, targets: torch.Tensor,
                      selective: bool, chunked: bool | None) -> torch.Tensor:
    """The log-probability (at least float32) of each kept position's target: from the LM head in
    chunks (:func:`..perf.chunked_ce.chunked_linear_token_logps`), from the kept positions' logits
    (``selective``), or from every position's logits (the plain path)."""
    from ..perf import chunked_ce
    from ..perf.selective_logits import head_to_chunk, kept_hidden_states

    head = head_to_chunk(model, targets.numel(), chunked) if selective else None
    if head is not None:
        hidden = kept_hidden_states(model, forward, keep, head)
        return chunked_ce.chunked_linear_token_logps(
            hidden, head.weight, targets, head.bias,
            chunk_rows=chunked_ce.chunk_rows_for(head.out_features, chunked_ce.CHUNK_BYTES))
    if selective:
        logits = model(**forward, logits_to_keep=keep).logits
        if logits.dim() != 2 or logits.shape[0] != targets.numel():
            raise RuntimeError(f"selective logits: expected ({targets.numel()}, vocab) logits, got "
                               f"{tuple(logits.shape)}; set training.selective_logits: false for this model")
    else:
        logits = model(**forward).logits[keep]
    logits = logits if logits.dtype == torch.float64 else logits.float()  # at least float32
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate on both sides of ``-log 2`` (Maechler 2012): near 0
    ``1 - exp(x)`` cancels, so ``expm1``; far below, ``exp(x)`` is tiny, so ``log1p``."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def preference_loss(loss_type: str, logps: torch.Tensor, counts: torch.Tensor, ref_logps: torch.Tensor | None, *,
                    beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.0,
                    chosen_nll: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, chosen_rewards, rejected_rewards)`` for ``2B`` sequences (chosen first).

    - ``sigmoid`` (DPO): ``-(1-e) log s(b D) - e log s(-b D)`` with ``D`` the chosen minus the rejected
      log-ratio to the reference; ``e = label_smoothing`` > 0 is conservative DPO (cDPO).
    - ``ipo``: ``(D' - 1/(2b))^2`` with ``D'`` the difference of per-token (length-averaged) log-ratios.
    - ``orpo``: ``chosen_nll - b * log s(log-odds ratio)`` of the per-token average log-probabilities;
      no reference. ``chosen_nll`` is the SFT term, the mean NLL over the chosen sequences' tokens
      (the trainer passes it over the whole sequence, prompt included, as TRL's ORPOTrainer and the
      ORPO authors' code do).
    - ``simpo``: ``-log s(b (avg_c - avg_r) - gamma)``, per-token averages; no reference.

    The loss is the mean over pairs. Rewards: ``b`` times the log-ratio (DPO, IPO) or times the
    per-token average log-probability (ORPO, SimPO)."""
    chosen, rejected = logps.chunk(2)
    n_chosen, n_rejected = counts.chunk(2)
    if loss_type in ("sigmoid", "ipo"):
        if ref_logps is None:
            raise ValueError(f"loss_type {loss_type!r} needs reference log-probabilities")
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
        if loss_type == "sigmoid":
            delta = beta * (chosen_ratio - rejected_ratio)
            losses = -(1 - label_smoothing) * F.logsigmoid(delta) - label_smoothing * F.logsigmoid(-delta)
        else:
            delta = chosen_ratio / n_chosen.clamp(min=1) - rejected_ratio / n_rejected.clamp(min=1)
            losses = (delta - 1 / (2 * beta)) ** 2
        return losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    avg_chosen, avg_rejected = chosen / n_chosen.clamp(min=1), rejected / n_rejected.clamp(min=1)
    if loss_type == "orpo":
        if chosen_nll is None:
            raise ValueError("loss_type 'orpo' needs chosen_nll, the mean NLL of the chosen sequences")
        # log odds(p) = log p - log(1 - p), p the per-token average probability of a reply
        log_odds = (avg_chosen - avg_rejected) - (log1mexp(avg_chosen) - log1mexp(avg_rejected))
        loss = chosen_nll - beta * F.logsigmoid(log_odds).mean()
    elif loss_type == "simpo":
        loss = -F.logsigmoid(beta * (avg_chosen - avg_rejected) - simpo_gamma).mean()
    else:
        raise ValueError(f"unknown preference loss_type {loss_type!r}; expected one of {', '.join(NEEDS_REFERENCE)}")
    return loss, beta * avg_chosen.detach(), beta * avg_rejected.detach()


def kto_kl_estimate(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point: the batch mean of ``log pi(y'|x) - log ref(y'|x)`` over the mismatched
    (prompt, completion) sequences; a constant of the loss (no gradient), as in the paper and TRL."""
    return (kl_logps - ref_kl_logps).mean().detach()


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, *,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, desirable_rewards, undesirable_rewards)`` for one sequence per example.

    With ``r = log pi(y|x) - log ref(y|x)`` and ``z = kl`` (clamped at 0 by the caller): a desirable
    example costs ``w_d (1 - s(b (r - z)))``, an undesirable one ``w_u (1 - s(b (z - r)))``. The loss is
    the mean over the batch's examples (the weights do not renormalise it, as in TRL). Rewards:
    ``b r`` of the desirable, then of the undesirable examples."""
    ratio = logps - ref_logps
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))))
    rewards = beta * ratio.detach()
    return losses.mean(), rewards[desirable], rewards[~desirable]


class PreferenceTrainerCore(SFTTrainerCore):
    """The HF Trainer with the preference loss in ``compute_loss``; logs ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen`` and
    ``logps/rejected`` (means over the pairs since the last log; ``eval_``-prefixed in evaluation).
    KTO: the same over desirable (chosen) and undesirable (rejected) examples, no accuracy (no
    pairs), margins of batch means, and ``kl``, the KL estimate."""

    def __init__(self, *args: Any, preference: Any, ref_model: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.preference = preference
        self.ref_model = ref_model
        if ref_model is not None:
            self.ref_model = ref_model.to(self.args.device)
        # the loss is a mean over pairs: the HF Trainer divides it by the accumulation steps
        self.model_accepts_loss_kwargs = False
        self.eval_before: dict[str, float] | None = None
        self._pref_metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    # -- log-probabilities --------------------------------------------------------------------------
    def _n_sequences(self, inputs: dict[str, Any]) -> int:
        return int(inputs["sequence_ids"].max()) + 1

    def _sequence_logps(self, model: Any, inputs: dict[str, Any], n: int, whole_upto: int = 0) -> SequenceLogps:
        """:func:`sequence_logps` with the run's fast paths (selective logits, chunked LM head)."""
        return sequence_logps(model, inputs, n, self.selective_logits, whole_upto=whole_upto,
                              chunked=self.fast_paths.chunked_lm_loss)

    def reference_logps(self, model: Any, inputs: dict[str, Any], n: int, initial: bool = False) -> torch.Tensor:
        """The reference's summed log-probabilities; ``initial``: ``model`` has not been trained yet, so
        without an adapter to disable it is the reference itself."""
        if "ref_chosen_logps" in inputs:
            return torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(self.args.device)
        with torch.no_grad():
            if self.ref_model is not None:
                return self._sequence_logps(self.ref_model, inputs, n)[0]
            unwrapped = self.accelerator.unwrap_model(model)
            if not hasattr(unwrapped, "disable_adapter"):
                if initial:
                    return self._sequence_logps(model, inputs, n)[0]
                raise RuntimeError("the preference trainer needs a reference: an adapter model (its adapter is "
                                   "disabled), a frozen copy, or precomputed reference log-probabilities")
            with unwrapped.disable_adapter():
                return self._sequence_logps(model, inputs, n)[0]

    @torch.no_grad()
    def precompute_reference(self, dataset: Any, batch_size: int) -> Any:
        """``dataset`` with ``ref_chosen_logps`` and ``ref_rejected_logps`` columns, computed now (before
        any training step) by the reference."""
        from ..data.preference_collate import PreferenceCollator

        if dataset is None or "ref_chosen_logps" in dataset.column_names:
            return dataset
        # the run's own batch layout (padding-free or padded): the same kernels as the evaluation that
        # compares against these numbers, so an untrained policy scores rewards of exactly 0
        collate = PreferenceCollator(pad_token_id=self.data_collator.pad_token_id,
                                     flatten=getattr(self.data_collator, "flatten", False))
        model = self.model.to(self.args.device)
        was_training = model.training
        model.eval()
        chosen, rejected = [], []
        try:
            for start in range(0, len(dataset), batch_size):
                batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
                batch = {k: v.to(self.args.device) for k, v in batch.items()}
                ref = self.reference_logps(model, batch, self._n_sequences(batch), initial=True).float().cpu()
                c, r = ref.chunk(2)
                chosen += c.tolist()
                rejected += r.tolist()
        finally:
            model.train(was_training)
        return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

    # -- loss -------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pc = self.preference
        if pc.loss_type == "kto":
            return self._kto_loss(model, inputs, return_outputs)
        n = self._n_sequences(inputs)
        orpo = pc.loss_type == "orpo"
        logps, counts, whole_sums, whole_counts = self._sequence_logps(model, inputs, n,
                                                                       whole_upto=n // 2 if orpo else 0)
        ref = self.reference_logps(model, inputs, n) if NEEDS_REFERENCE[pc.loss_type] else None
        chosen_nll = -whole_sums.sum() / whole_counts.sum().clamp(min=1) if orpo else None
        loss, chosen_rewards, rejected_rewards = preference_loss(
            pc.loss_type, logps, counts, ref, beta=pc.beta, label_smoothing=pc.label_smoothing,
            simpo_gamma=pc.simpo_gamma, chosen_nll=chosen_nll)
        mode = "train" if model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        chosen_logps, rejected_logps = logps.detach().chunk(2)
        record = self._pref_metrics[mode]
        record["rewards/chosen"] += gather(chosen_rewards).tolist()
        record["rewards/rejected"] += gather(rejected_rewards).tolist()
        record["rewards/margins"] += gather(chosen_rewards - rejected_rewards).tolist()
        record["rewards/accuracies"] += gather((chosen_rewards > rejected_rewards).float()).tolist()
        record["logps/chosen"] += gather(chosen_logps).tolist()
        record["logps/rejected"] += gather(rejected_logps).tolist()
        return (loss, {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}) \
            if return_outputs else loss

    def _kto_loss(self, model, inputs, return_outputs=False):
        pc = self.preference
        desirable = inputs["kto_label"].bool()
        n = desirable.numel()
        kl_inputs = {key[3:]: value for key, value in inputs.items() if key.startswith("kl_")}
        logps = self._sequence_logps(model, inputs, n).sums
        with torch.no_grad():  # the KL estimate is a constant of the loss: no activations kept for it
            kl_logps = self._sequence_logps(model, kl_inputs, n).sums
        ref = self.reference_logps(model, inputs, n)
        ref_kl = self.reference_logps(model, kl_inputs, n)
        # one estimate over every rank's batch, as TRL does
        kl = self.accelerator.gather(kto_kl_estimate(kl_logps, ref_kl).reshape(1)).mean().clamp(min=0)
        loss, chosen_rewards, rejected_rewards = kto_loss(
            logps, ref, desirable, kl, beta=pc.beta, desirable_weight=pc.desirable_weight,
            undesirable_weight=pc.undesirable_weight)
        record = self._pref_metrics["train" if model.training else "eval"]
        every_chosen, every_rejected = self._gather_ragged(chosen_rewards), self._gather_ragged(rejected_rewards)
        record["rewards/chosen"] += every_chosen
        record["rewards/rejected"] += every_rejected
        if every_chosen and every_rejected:  # unpaired: the margin of the batch means
            record["rewards/margins"].append(sum(every_chosen) / len(every_chosen)
                                             - sum(every_rejected) / len(every_rejected))
        record["logps/chosen"] += self._gather_ragged(logps.detach()[desirable])
        record["logps/rejected"] += self._gather_ragged(logps.detach()[~desirable])
        record["kl"].append(kl.item())
        return (loss, {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}) \
            if return_outputs else loss

    def _gather_ragged(self, values: torch.Tensor) -> list[float]:
        """Every rank's values, whose number differs between ranks (desirable or undesirable
        examples of a batch): padded with NaN to one length for the gather, the padding dropped."""
        padded = self.accelerator.pad_across_processes(values, pad_index=float("nan"))
        every = self.accelerator.gather(padded)
        return every[~torch.isnan(every)].tolist()

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        record = self._pref_metrics[mode]
        if record and (mode == "eval" or "loss" in logs):
            prefix = "eval_" if mode == "eval" else ""
            logs.update({f"{prefix}{k}": sum(v) / len(v) for k, v in record.items() if v})
            record.clear()
        if mode == "eval" and self.state.global_step == 0:
            self.eval_before = dict(logs)  # train() starts a new log history; keep the evaluation before it
        super().log(logs, start_time)
