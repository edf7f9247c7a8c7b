"""Reference-free preference losses against TRL's own trainers (ORPO: ``trl.experimental.orpo``;
SimPO: ``trl.experimental.cpo`` with ``loss_type="simpo"``, ``cpo_alpha=0``), and KTO against
``trl.KTOTrainer``: the same tiny model, the same LoRA weights, the same tokens; the loss, the
rewards and the LoRA gradients of one step must agree."""

from __future__ import annotations

import pytest

from .test_preference import PAIRS, _grads, _ours

torch = pytest.importorskip("torch")


def _copy_lora(inner, trl_model):
    """Our LoRA weights into TRL's model (same names: both are PEFT models of the same base)."""
    mine, theirs = dict(inner.model.named_parameters()), dict(trl_model.named_parameters())
    lora = sorted(n for n in mine if "lora_" in n)
    assert lora and lora == sorted(n for n in theirs if "lora_" in n)
    for name in lora:
        theirs[name].data.copy_(mine[name].data)
    trl_model.train()
    return lora


def _peft_config(inner):
    from peft import LoraConfig

    ours = inner.model.peft_config["default"]
    return LoraConfig(r=ours.r, lora_alpha=ours.lora_alpha, lora_dropout=0.0, target_modules=sorted(ours.target_modules),
                      task_type="CAUSAL_LM")


def _pair_batch(dataset, rows):
    """Our tokens as the padded ``chosen_*`` / ``rejected_*`` batch of TRL's ORPO and CPO trainers
    (their collator's output: right padding, -100 labels on the prompt and the padding)."""
    out = {}
    for side in ("chosen", "rejected"):
        ids = [dataset[i][f"{side}_input_ids"] for i in rows]
        labels = [dataset[i][f"{side}_labels"] for i in rows]
        width = max(map(len, ids))
        out[f"{side}_input_ids"] = torch.tensor([s + [0] * (width - len(s)) for s in ids])
        out[f"{side}_attention_mask"] = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids])
        out[f"{side}_labels"] = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    return out


def _trl_reference_free(tiny_model_dir, tmp_path, inner, loss_type, beta, simpo_gamma):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = dict(output_dir=str(tmp_path / "trl"), beta=beta, use_cpu=True, bf16=False, report_to=[],
                  max_length=512, disable_dropout=True)
    if loss_type == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Trainer

        args = Config(**common)
    else:
        from trl.experimental.cpo import CPOConfig as Config
        from trl.experimental.cpo import CPOTrainer as Trainer

        args = Config(**common, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=simpo_gamma)
    trl = Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                  train_dataset=Dataset.from_list(PAIRS), processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
                  peft_config=_peft_config(inner))
    return trl, _copy_lora(inner, trl.model)


# Rewards here are beta times a per-token average log-probability (no reference subtracted), so
# float32 rounding of the sums is relative to the reward itself: rtol 1e-5 holds with a tiny atol.
@pytest.mark.parametrize("loss_type, beta, simpo_gamma, padding_free", [
    ("orpo", 0.1, 0.0, False),
    ("orpo", 0.25, 0.0, True),
    ("simpo", 2.0, 0.5, False),
    ("simpo", 2.5, 1.0, True),
])
def test_reference_free_loss_rewards_and_lora_grads_match_trl(tiny_model_dir, tmp_path, loss_type, beta, simpo_gamma,
                                                              padding_free):
    preference = {"loss_type": loss_type, "beta": beta, "simpo_gamma": simpo_gamma}
    inner, core, dataset = _ours(tiny_model_dir, tmp_path, preference, padding_free)
    trl, lora = _trl_reference_free(tiny_model_dir, tmp_path, inner, loss_type, beta, simpo_gamma)
    keys = ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected")
    for rows in [[i] for i in range(len(PAIRS))] + [list(range(len(PAIRS)))]:  # each pair, then the whole batch
        loss = core.compute_loss(inner.model, core.data_collator([dataset[i] for i in rows]))
        loss.backward()
        ref = trl.compute_loss(trl.model, _pair_batch(dataset, rows))
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)
        ours_m, trl_m = core._pref_metrics["train"], trl._stored_metrics["train"]
        for key in keys:
            # TRL stores batch means; we store per pair. Our logps/* are summed log-probs; TRL's ORPO
            # and SimPO store the per-token averages, so compare the rewards (beta * average) there.
            ours_value = sum(ours_m[key][-len(rows):]) / len(rows)
            if key.startswith("logps/"):
                side = key.split("/")[1]
                counts = [sum(t != -100 for t in dataset[i][f"{side}_labels"][1:]) for i in rows]
                ours_value = sum(v / c for v, c in zip(ours_m[key][-len(rows):], counts)) / len(rows)
            torch.testing.assert_close(torch.tensor(ours_value), torch.tensor(trl_m[key][-1]), rtol=1e-5, atol=1e-7)
        ours_g, trl_g = _grads(inner.model, lora), _grads(trl.model, lora)
        for n in lora:
            # atol: our chunked head (the default) and TRL's log_softmax round differently; against a
            # float64 oracle both are within ~1.3e-6 of the largest gradient
            torch.testing.assert_close(ours_g[n], trl_g[n], rtol=1e-4, atol=5e-7)
