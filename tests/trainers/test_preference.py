"""Preference data (records -> pairs -> exact masks) and the DPO trainer against TRL's DPOTrainer."""

from __future__ import annotations

import json

import pytest

from sage_libs.sage_finetune.data.conversation import DataFormatError
from sage_libs.sage_finetune.data.preference import to_preference_pair, tokenize_preference_records

from ..paths import EXAMPLE_DATA

PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "What is 3+5?", "chosen": "3+5 is 8.", "rejected": "It is 9, I think."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "The number seven."},
    {"prompt": "What is 10-4?", "chosen": "6", "rejected": "I do not know, maybe 14 or so."},
]


def _tokens(tok, ids):
    return [tok.decode([t]) for t in ids]


def _one(tok, record):
    cols, stats = tokenize_preference_records([record], tok)
    assert stats.pairs == 1
    return {k: v[0] for k, v in cols.items()}


# -- data ---------------------------------------------------------------------------------------------
def test_masks_score_only_the_reply_and_its_end_of_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = _one(tok, PAIRS[0])
    prompt = ["<|im_start|>", "user", "\n", "What", " is", " 2", "+", "2", "?", "<|im_end|>", "\n",
              "<|im_start|>", "assistant", "\n"]
    assert _tokens(tok, ex["chosen_input_ids"]) == prompt + ["4", "<|im_end|>"]
    assert _tokens(tok, ex["rejected_input_ids"]) == prompt + ["5", "<|im_end|>"]
    # -100 over the prompt; the reply token and <|im_end|> are scored; nothing after it is kept
    assert ex["chosen_labels"] == [-100] * len(prompt) + ex["chosen_input_ids"][-2:]
    assert ex["rejected_labels"] == [-100] * len(prompt) + ex["rejected_input_ids"][-2:]
    assert ex["length"] == 2 * (len(prompt) + 2)


def test_every_record_shape_gives_the_same_tokens(tiny_tokenizer):
    user = {"role": "user", "content": "What is 2+2?"}
    good, bad = {"role": "assistant", "content": "4"}, {"role": "assistant", "content": "5"}
    shapes = [
        {"prompt": [user], "chosen": [good], "rejected": [bad]},  # TRL conversational, explicit prompt
        {"chosen": [user, good], "rejected": [user, bad]},  # implicit prompt
        {"prompt": [user], "chosen": [user, good], "rejected": [user, bad]},  # full conversations + prompt
        {"prompt": "What is 2+2?", "chosen": [good], "rejected": "5"},
        {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5"},
    ]
    want = _one(tiny_tokenizer, PAIRS[0])
    for record in shapes:
        assert _one(tiny_tokenizer, record) == want, record


def test_multi_turn_implicit_prompt_scores_only_the_last_reply(tiny_tokenizer):
    tok = tiny_tokenizer
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
               {"role": "user", "content": "2+2?"}]
    ex = _one(tok, {"chosen": history + [{"role": "assistant", "content": "4"}],
                    "rejected": history + [{"role": "assistant", "content": "22"}]})
    scored = [t for t, lab in zip(ex["chosen_input_ids"], ex["chosen_labels"]) if lab != -100]
    assert _tokens(tok, scored) == ["4", "<|im_end|>"]  # "Hello" is prompt, not scored
    scored = [t for t, lab in zip(ex["rejected_input_ids"], ex["rejected_labels"]) if lab != -100]
    assert "".join(_tokens(tok, scored)) == "22<|im_end|>"


def test_truncation_keeps_the_start_and_drops_pairs_with_nothing_scored(tiny_tokenizer):
    long_prompt = {"prompt": "Please tell me what 2+2 is, and say nothing else at all.", "chosen": "4", "rejected": "5"}
    cols, stats = tokenize_preference_records([PAIRS[0], long_prompt], tiny_tokenizer, max_seq_length=15)
    assert stats.pairs == 1 and stats.dropped_no_scored_tokens == 1 and stats.truncated == 1
    assert len(cols["chosen_input_ids"][0]) == 15 and cols["chosen_labels"][0][-1] != -100


@pytest.mark.parametrize("record, message", [
    ({"prompt": "Hi", "chosen": "Hello"}, "missing field 'rejected'"),
    ({"prompt": "Hi", "chosen": "Hello", "rejected": "Hello"}, "are identical"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "are identical"),
    ({"prompt": [{"role": "user", "content": "Hi"}],
      "chosen": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "x"}],
      "rejected": [{"role": "assistant", "content": "y"}]}, "not a common prefix"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}, "share no prompt"),
    ({"chosen": "Hello", "rejected": "Bye"}, "give a 'prompt'"),
    ({"prompt": "Hi", "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
      "rejected": "c"}, "must be one assistant message"),
    ({"prompt": "Hi", "chosen": "", "rejected": "c"}, "'chosen' is empty"),
])
def test_bad_records_fail_with_their_location(record, message):
    with pytest.raises(DataFormatError, match=message) as info:
        to_preference_pair(record, where="prefs.jsonl:7")
    assert str(info.value).startswith("prefs.jsonl:7: ")


def test_errors_name_file_and_line(tmp_path, tiny_tokenizer):
    from sage_libs.sage_finetune.data.pipeline import record_location
    from sage_libs.sage_finetune.loaders.jsonl import JSONLLoader

    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps({"prompt": "x", "chosen": "y", "rejected": "y"}) + "\n")
    records = JSONLLoader().load(path)
    with pytest.raises(DataFormatError, match=rf"^{path}:3: 'chosen' and 'rejected' are identical"):
        tokenize_preference_records(records, tiny_tokenizer, locate=record_location)
    cols, stats = tokenize_preference_records(records, tiny_tokenizer, locate=record_location, on_error="skip")
    assert stats.pairs == 1 and stats.skipped_invalid == 1 and stats.errors[0].startswith(f"{path}:3:")


# -- the trainer against TRL's DPOTrainer ---------------------------------------------------------------
def _ours(tiny_model_dir, tmp_path, preference, padding_free):
    import torch

    from sage_libs.sage_finetune import create_trainer

    trainer = create_trainer(
        "dpo", method="lora", preference_config=preference,
        training_config=dict(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "ours"), report_to=[],
                             use_cpu=True, per_device_train_batch_size=len(PAIRS)),
        lora_config=dict(r=8, lora_alpha=16, lora_dropout=0.0), data_config=dict(padding_free=padding_free))
    inner = trainer.inner
    inner.setup()
    dataset = inner.prepare_dataset(PAIRS)
    core = inner.build_hf_trainer(dataset)
    gen = torch.Generator().manual_seed(0)
    for name, p in inner.model.named_parameters():  # B = 0 at init: make the adapter matter
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    inner.model.train()
    return inner, core, dataset


def _trl(tiny_model_dir, tmp_path, inner, loss_type, beta, label_smoothing=0.0):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    ours = inner.model.peft_config["default"]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), loss_type=[loss_type], beta=beta, label_smoothing=label_smoothing,
                     use_cpu=True, bf16=False, report_to=[], max_length=None, disable_dropout=True)
    trl = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                     train_dataset=Dataset.from_list(PAIRS), processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
                     peft_config=LoraConfig(r=ours.r, lora_alpha=ours.lora_alpha, lora_dropout=0.0,
                                            target_modules=sorted(ours.target_modules), task_type="CAUSAL_LM"))
    mine = dict(inner.model.named_parameters())
    theirs = dict(trl.model.named_parameters())
    lora = sorted(n for n in mine if "lora_" in n)
    assert lora and lora == sorted(n for n in theirs if "lora_" in n)
    for name in lora:
        theirs[name].data.copy_(mine[name].data)
    trl.model.train()
    return trl, lora


def _trl_batch(dataset, rows):
    """Our token ids as TRL's prompt/chosen/rejected ids (the prompt: up to the first scored token)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    examples = []
    for i in rows:
        ex = dataset[i]
        start = ex["chosen_labels"].index(next(t for t in ex["chosen_labels"] if t != -100))
        assert ex["chosen_input_ids"][:start] == ex["rejected_input_ids"][:start]
        assert all(t == -100 for t in ex["rejected_labels"][:start]) and ex["rejected_labels"][start] != -100
        assert -100 not in ex["chosen_labels"][start:] + ex["rejected_labels"][start:]
        examples.append({"prompt_ids": ex["chosen_input_ids"][:start], "chosen_ids": ex["chosen_input_ids"][start:],
                         "rejected_ids": ex["rejected_input_ids"][start:]})
    return DataCollatorForPreference(pad_token_id=0)(examples)


# Rewards are beta * (log-prob - reference log-prob): a small difference of two float32 sums near -20
# (one ulp: 2e-6). TRL's fused kernel computes them in float32 with a chunked log-sum-exp; against a
# float64 evaluation of the same model ours is off by 4e-8 and TRL's by 4e-7 (reward 0.014, beta 0.1),
# so the agreement is bounded by TRL's rounding: ten ulps of the log-prob, times beta.
REWARD_ATOL = 2e-5


def _grads(model, names):
    params = dict(model.named_parameters())
    out = {n: params[n].grad.detach().clone() for n in names}
    model.zero_grad()
    return out


@pytest.mark.parametrize("loss_type, trl_loss, beta, smoothing, padding_free", [
    ("sigmoid", "sigmoid", 0.1, 0.0, False),
    ("sigmoid", "sigmoid", 0.5, 0.0, True),
    ("ipo", "ipo", 0.1, 0.0, True),
    # conservative DPO: TRL's "aot" loss on a single pair is -(1-e) log s(bD) - e log s(-bD)
    ("sigmoid", "aot", 0.1, 0.2, True),
])
def test_loss_rewards_and_lora_grads_match_trl(tiny_model_dir, tmp_path, loss_type, trl_loss, beta, smoothing,
                                              padding_free):
    import torch

    preference = {"loss_type": loss_type, "beta": beta, "label_smoothing": smoothing}
    inner, core, dataset = _ours(tiny_model_dir, tmp_path, preference, padding_free)
    trl, lora = _trl(tiny_model_dir, tmp_path, inner, trl_loss, beta, smoothing)
    # one pair at a time (TRL's aot sorts over the batch, so pairs stay alone), then grads averaged
    ours_grads, trl_grads = {n: 0 for n in lora}, {n: 0 for n in lora}
    for i in range(len(PAIRS)):
        loss = core.compute_loss(inner.model, core.data_collator([dataset[i]]))
        (loss / len(PAIRS)).backward()
        for n, g in _grads(inner.model, lora).items():
            ours_grads[n] = ours_grads[n] + g
        ref = trl.compute_loss(trl.model, _trl_batch(dataset, [i]))
        (ref / len(PAIRS)).backward()
        for n, g in _grads(trl.model, lora).items():
            trl_grads[n] = trl_grads[n] + g
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)
        ours_m, trl_m = core._pref_metrics["train"], trl._metrics["train"]
        for key in ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected"):
            torch.testing.assert_close(torch.tensor(ours_m[key][-1]), torch.tensor(trl_m[key][-1]), rtol=1e-5,
                                       atol=REWARD_ATOL * beta)
    for n in lora:
        # atol: our chunked head (the default) and TRL's log_softmax round differently; against a
        # float64 oracle both are within ~1.3e-6 of the largest gradient
        torch.testing.assert_close(ours_grads[n], trl_grads[n], rtol=1e-4, atol=5e-7)
    if trl_loss != "aot":  # the whole batch in one forward: chosen and rejected concatenated
        loss = core.compute_loss(inner.model, core.data_collator([dataset[i] for i in range(len(PAIRS))]))
        loss.backward()
        ref = trl.compute_loss(trl.model, _trl_batch(dataset, range(len(PAIRS))))
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)
        for key in ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected"):
            ours_mean = sum(core._pref_metrics["train"][key][-len(PAIRS):]) / len(PAIRS)
            torch.testing.assert_close(torch.tensor(ours_mean), torch.tensor(trl._metrics["train"][key][-1]),
                                       rtol=1e-5, atol=REWARD_ATOL * beta)
        ours_g, trl_g = _grads(inner.model, lora), _grads(trl.model, lora)
        for n in lora:
            torch.testing.assert_close(ours_g[n], trl_g[n], rtol=1e-4, atol=5e-7)
            torch.testing.assert_close(ours_g[n], ours_grads[n], rtol=1e-4, atol=1e-7)


def test_reference_free_losses_follow_their_formulas():
    import math

    import torch

    from sage_libs.sage_finetune.trainers._preference_core import preference_loss

    logps, counts = torch.tensor([-4.0, -9.0, -6.0, -8.0]), torch.tensor([2.0, 3.0, 4.0, 2.0])
    avg_c, avg_r = [-2.0, -3.0], [-1.5, -4.0]
    loss, rc, rr = preference_loss("simpo", logps, counts, None, beta=2.0, simpo_gamma=0.5)
    want = sum(-math.log(1 / (1 + math.exp(-(2.0 * (c - r) - 0.5)))) for c, r in zip(avg_c, avg_r)) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6) and rc.tolist() == [-4.0, -6.0]

    def log_odds(a):
        return a - math.log(1 - math.exp(a))

    loss, _, _ = preference_loss("orpo", logps, counts, None, beta=0.1, chosen_nll=torch.tensor(13.0 / 5.0))
    nll = (4.0 + 9.0) / 5.0
    ratio = sum(math.log(1 / (1 + math.exp(-(log_odds(c) - log_odds(r))))) for c, r in zip(avg_c, avg_r)) / 2
    assert loss.item() == pytest.approx(nll - 0.1 * ratio, rel=1e-6)


def test_full_fine_tuning_reference_copy_equals_precomputed(tiny_model_dir, tmp_path):
    import torch

    from sage_libs.sage_finetune import create_trainer

    losses = []
    for precompute in (False, True):
        trainer = create_trainer(
            "dpo", method="full", preference_config={"precompute_ref_log_probs": precompute},
            training_config=dict(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / str(precompute)),
                                 report_to=[], use_cpu=True))
        inner = trainer.inner
        dataset = inner.prepare_dataset(PAIRS)
        core = inner.build_hf_trainer(dataset)
        assert (core.ref_model is None) == precompute and ("ref_chosen_logps" in core.train_dataset.column_names) == precompute
        with torch.no_grad():  # move the policy off the reference: the reference must not follow it
            for p in inner.model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        batch = core.data_collator([core.train_dataset[i] for i in range(len(PAIRS))])
        losses.append(core.compute_loss(inner.model, batch).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] != pytest.approx(0.6931, abs=1e-3)


def test_saved_full_policy_is_evaluated_against_its_base(tiny_model_dir, tmp_path):
    """A saved full-fine-tuning DPO policy, loaded for evaluation (what `eval --adapter DIR` does),
    is scored against the run's base model, not against a copy of itself (rewards all 0)."""
    from sage_libs.sage_finetune import create_trainer

    def trainer(out):
        return create_trainer(
            "dpo", method="full",
            training_config=dict(model_name_or_path=str(tiny_model_dir), output_dir=str(out), report_to=[],
                                 use_cpu=True, max_steps=3, per_device_train_batch_size=2, save_strategy="no",
                                 disable_tqdm=True, learning_rate=1e-3, warmup_steps=0))

    trained = trainer(tmp_path / "run")
    metrics = trained.train(PAIRS, PAIRS)
    assert metrics["eval_rewards/margins"] != pytest.approx(0.0, abs=1e-4)
    saved = trained.save_model(str(tmp_path / "policy"))
    reloaded = trainer(tmp_path / "eval")
    reloaded.load_model(saved)
    again = reloaded.evaluate(PAIRS)
    for key in ("eval_loss", "eval_rewards/chosen", "eval_rewards/margins", "eval_rewards/accuracies"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-6), key


def test_precomputed_reference_scores_an_untrained_policy_zero(tiny_model_dir, tmp_path):
    """Reference log-probs precomputed with the run's own batch layout: before training every reward
    is exactly 0, so the accuracy before training is 0, not float noise counted as wins."""
    from sage_libs.sage_finetune import create_trainer

    trainer = create_trainer(
        "dpo", preference_config={"precompute_ref_log_probs": True},
        training_config=dict(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "run"), report_to=[],
                             use_cpu=True, max_steps=1, per_device_train_batch_size=2, save_strategy="no",
                             disable_tqdm=True, eval_on_start=True, warmup_steps=0))
    held_out = str(EXAMPLE_DATA.parent / "preference" / "pref_eval.jsonl")  # 120 pairs of varied lengths
    before = trainer.inner.build_hf_trainer(trainer.inner.prepare_dataset(PAIRS),
                                            trainer.inner.prepare_dataset(held_out, "eval")).evaluate()
    assert before["eval_rewards/chosen"] == 0.0 and before["eval_rewards/rejected"] == 0.0
    assert before["eval_rewards/accuracies"] == 0.0


def test_dpo_run_writes_reward_metrics(tiny_model_dir, tmp_path):
    from sage_libs.sage_finetune import create_trainer

    out = tmp_path / "run"
    trainer = create_trainer(
        "dpo", preference_config={"loss_type": "sigmoid"},
        training_config=dict(model_name_or_path=str(tiny_model_dir), output_dir=str(out), report_to=[], use_cpu=True,
                             max_steps=2, per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True,
                             eval_on_start=True, learning_rate=1e-3, warmup_steps=0))
    metrics = trainer.train(PAIRS, PAIRS[:2])
    saved = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == saved["method"] == "dpo/lora"
    for key in ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/accuracies_before"):
        assert key in saved, key
    assert "rewards/accuracies" in trainer.hf_trainer.state.log_history[0]
    assert (out / "rewards.png").stat().st_size > 0 and (out / "loss.png").is_file()  # loss.png's companion
    import yaml

    run_config = yaml.safe_load((out / "run_config.yaml").read_text())
    assert run_config["method"] == "dpo" and run_config["preference"]["method"] == "lora"


def test_rewards_plot_only_for_logs_with_rewards(tmp_path):
    from sage_libs.sage_finetune.utils.plotting import plot_rewards

    sft = [{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.5}]
    assert plot_rewards(sft, tmp_path / "sft.png") is None and not (tmp_path / "sft.png").exists()
    dpo = [{"step": s, "loss": 0.69, "rewards/chosen": 0.01 * s, "rewards/rejected": -0.01 * s,
            "rewards/margins": 0.02 * s, "rewards/accuracies": 0.5 + 0.1 * s} for s in (1, 2, 3)]
    dpo.append({"step": 3, "eval_loss": 0.6, "eval_rewards/margins": 0.05, "eval_rewards/accuracies": 0.75})
    path = plot_rewards(dpo, tmp_path / "rewards.png", title="dpo")
    assert path == tmp_path / "rewards.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_preference_section(tmp_path, tiny_model_dir):
    from sage_libs.sage_finetune.config import ConfigError
    from sage_libs.sage_finetune.run_config import load_run_config, make_trainer

    config = tmp_path / "dpo.yaml"
    config.write_text(f"method: dpo\ntraining: {{model_name_or_path: {tiny_model_dir}, output_dir: {tmp_path / 'o'}}}\n"
                      "preference: {method: full, loss_type: ipo, beta: 0.2}\n")
    trainer = make_trainer(load_run_config(str(config)))
    assert trainer.preference_config.loss_type == "ipo" and trainer.inner.method == "full"
    assert trainer.resolved_config()["preference"]["beta"] == 0.2
    with pytest.raises(ConfigError, match="label_smoothing applies to loss_type sigmoid only"):
        load_run_config(str(config), ["preference.label_smoothing=0.1"])
