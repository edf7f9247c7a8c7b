"""KTO: unpaired records -> exact masks, the in-batch KL pairs, the config checks, and the loss,
rewards and LoRA gradients against TRL's KTOTrainer."""

from __future__ import annotations

import json

import pytest

from sage_libs.sage_finetune.config import ConfigError, PreferenceConfig
from sage_libs.sage_finetune.data.conversation import DataFormatError
from sage_libs.sage_finetune.data.unpaired import to_unpaired_examples, tokenize_unpaired_records
from sage_libs.sage_finetune.data.preference_collate import UnpairedPreferenceCollator, kl_partners

from .test_preference import REWARD_ATOL, _grads, _tokens

RECORDS = [
    {"prompt": "What is 2+2?", "completion": "4", "label": True},
    {"prompt": "What is 3+5?", "completion": "It is 9, I think.", "label": False},
    {"prompt": "Name a colour.", "completion": "Blue.", "label": True},
    {"prompt": "What is 10-4?", "completion": "I do not know, maybe 14 or so.", "label": False},
]
PROMPT = ["<|im_start|>", "user", "\n", "What", " is", " 2", "+", "2", "?", "<|im_end|>", "\n",
          "<|im_start|>", "assistant", "\n"]


# -- data ---------------------------------------------------------------------------------------------
def test_unpaired_record_shapes_give_the_same_example():
    user, reply = {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}
    shapes = [
        {"prompt": "What is 2+2?", "completion": "4", "label": False},
        {"prompt": [user], "completion": [reply], "label": False},  # TRL's conversational unpaired format
        {"prompt": [user], "completion": [user, reply], "label": False},  # the whole conversation
        {"prompt": user, "completion": reply, "label": False},  # one message on its own
    ]
    for record in shapes:
        (ex,) = to_unpaired_examples(record)
        assert [m.to_dict() for m in ex.prompt] == [user] and ex.completion.to_dict() == reply and ex.label is False


def test_a_pair_counts_as_a_desirable_and_an_undesirable_example():
    chosen, rejected = to_unpaired_examples({"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
                                            system_prompt="Be brief.")
    assert (chosen.completion.content, chosen.label) == ("4", True)
    assert (rejected.completion.content, rejected.label) == ("5", False)
    assert [m.role for m in chosen.prompt] == ["system", "user"] and chosen.prompt == rejected.prompt


def test_masks_score_only_the_completion_and_its_end_of_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    cols, stats = tokenize_unpaired_records(RECORDS[:1] + [{"prompt": "What is 2+2?", "chosen": "4", "rejected": "22"}],
                                            tok)
    assert (stats.records, stats.examples, stats.desirable, stats.undesirable) == (2, 3, 2, 1)
    assert cols["label"] == [True, True, False]
    ids, labels = cols["completion_input_ids"], cols["completion_labels"]
    assert _tokens(tok, ids[0]) == PROMPT + ["4", "<|im_end|>"] and ids[1] == ids[0]
    assert labels[0] == [-100] * len(PROMPT) + ids[0][-2:]
    assert "".join(_tokens(tok, ids[2][len(PROMPT):])) == "22<|im_end|>"
    assert labels[2] == [-100] * len(PROMPT) + ids[2][len(PROMPT):]
    assert cols["length"] == [len(PROMPT) + 2, len(PROMPT) + 2, len(ids[2])]


@pytest.mark.parametrize("record, message", [
    ({"prompt": "Hi", "completion": "Hello"}, "missing field 'label'; an unpaired preference record"),
    ({"prompt": "Hi", "label": True}, "missing field 'completion'"),
    ({"completion": "Hello", "label": True}, "missing field 'prompt'"),
    ({"prompt": "Hi", "completion": "Hello", "label": 1}, r"field 'label' must be true or false, got 1 \(int\)"),
    ({"prompt": "Hi", "completion": "Hello", "label": "true"}, "must be true or false, got 'true' \\(str\\)"),
    ({"prompt": "Hi", "completion": "", "label": True}, "'completion' is empty"),
    ({"prompt": "Hi", "completion": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
      "label": True}, "'completion' must be one assistant message; got 2"),
    ({"prompt": "Hi", "completion": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "x"}],
      "label": True}, "not the prompt's"),
    ({"prompt": "Hi", "chosen": "a", "rejected": "a"}, "are identical"),
])
def test_bad_unpaired_records_fail_with_their_location(record, message):
    with pytest.raises(DataFormatError, match=message) as info:
        to_unpaired_examples(record, where="kto.jsonl:3")
    assert str(info.value).startswith("kto.jsonl:3: ")


def test_unpaired_errors_name_file_and_line_and_dpo_points_to_kto(tmp_path, tiny_tokenizer):
    from sage_libs.sage_finetune.data.pipeline import record_location
    from sage_libs.sage_finetune.data.preference import tokenize_preference_records
    from sage_libs.sage_finetune.loaders.jsonl import JSONLLoader

    path = tmp_path / "kto.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({**RECORDS[1], "label": 0}) + "\n")
    records = JSONLLoader().load(path)
    with pytest.raises(DataFormatError, match=rf"^{path}:2: field 'label' must be true or false"):
        tokenize_unpaired_records(records, tiny_tokenizer, locate=record_location)
    cols, stats = tokenize_unpaired_records(records, tiny_tokenizer, locate=record_location, on_error="skip")
    assert stats.examples == 1 and stats.skipped_invalid == 1 and stats.errors[0].startswith(f"{path}:2:")
    with pytest.raises(DataFormatError, match=rf"^{path}:1: missing field 'chosen'.*set preference.loss_type: kto"):
        tokenize_preference_records(records, tiny_tokenizer, locate=record_location)


def test_kl_pairs_are_the_batch_completions_rotated_by_one():
    assert kl_partners(1) == [0] and kl_partners(3) == [2, 0, 1]
    # literal token ids: prompt tokens (label -100), then the completion
    examples = [{"completion_input_ids": [1, 2, 3, 4], "completion_labels": [-100, -100, 3, 4], "label": True},
                {"completion_input_ids": [5, 6, 7], "completion_labels": [-100, 6, 7], "label": False},
                {"completion_input_ids": [8, 9], "completion_labels": [-100, 9], "label": True}]
    padded = UnpairedPreferenceCollator(pad_token_id=0)(examples)
    assert padded["kto_label"].tolist() == [True, False, True]
    assert padded["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 0], [8, 9, 0, 0]]
    # prompt 0 + completion 2, prompt 1 + completion 0, prompt 2 + completion 1
    assert padded["kl_input_ids"].tolist() == [[1, 2, 9], [5, 3, 4], [8, 6, 7]]
    assert padded["kl_labels"].tolist() == [[-100, -100, 9], [-100, 3, 4], [-100, 6, 7]]
    assert padded["kl_attention_mask"].tolist() == [[1, 1, 1]] * 3
    assert padded["kl_sequence_ids"].tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    flat = UnpairedPreferenceCollator(pad_token_id=0, flatten=True, max_length=2)(examples)
    assert flat["kl_input_ids"].tolist() == [[1, 2, 5, 3, 8, 6]]  # each KL sequence cut to max_length
    assert flat["kl_position_ids"].tolist() == [[0, 1, 0, 1, 0, 1]]
    assert flat["kl_sequence_ids"].tolist() == [[0, 0, 1, 1, 2, 2]]
    assert flat["kl_labels"].tolist() == [[-100, -100, -100, 3, -100, 6]]


# -- config ---------------------------------------------------------------------------------------------
def test_kto_config_checks(tiny_model_dir, tmp_path):
    from sage_libs.sage_finetune import create_trainer

    assert PreferenceConfig(loss_type="kto", desirable_weight=1.33).desirable_weight == 1.33
    with pytest.raises(ConfigError, match="desirable_weight / undesirable_weight apply to loss_type kto only"):
        PreferenceConfig(loss_type="sigmoid", undesirable_weight=2.0)
    with pytest.raises(ConfigError, match="desirable_weight"):
        PreferenceConfig(loss_type="kto", desirable_weight=0.0)
    with pytest.raises(ConfigError, match="precompute_ref_log_probs: not with loss_type kto"):
        PreferenceConfig(loss_type="kto", precompute_ref_log_probs=True)
    trainer = create_trainer("dpo", preference_config={"loss_type": "kto"},
                             training_config=dict(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path),
                                                  report_to=[], use_cpu=True, per_device_train_batch_size=1))
    with pytest.raises(ConfigError, match="per_device_train_batch_size: KTO needs at least 2 examples"):
        trainer.train(RECORDS)


def test_weight_advice_follows_the_kto_paper_range():
    from sage_libs.sage_finetune.trainers.preference import kto_weight_advice

    assert kto_weight_advice(10, 10, 1.0, 1.0) is None
    assert kto_weight_advice(10, 0, 1.0, 1.0) is None
    assert kto_weight_advice(4, 12, 3.0, 1.0) is None  # 3 * 4 / 12 = 1
    advice = kto_weight_advice(4, 12, 1.0, 1.0)
    assert "ratio of 0.33" in advice and "between 3.00 and 4.00" in advice


# -- the trainer against TRL's KTOTrainer ----------------------------------------------------------------
def _ours(tiny_model_dir, tmp_path, preference, padding_free, seed):
    import torch

    from sage_libs.sage_finetune import create_trainer

    trainer = create_trainer(
        "dpo", method="lora", preference_config=preference,
        training_config=dict(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "ours"), report_to=[],
                             use_cpu=True, per_device_train_batch_size=len(RECORDS)),
        lora_config=dict(r=8, lora_alpha=16, lora_dropout=0.0), data_config=dict(padding_free=padding_free))
    inner = trainer.inner
    inner.setup()
    dataset = inner.prepare_dataset(RECORDS)
    core = inner.build_hf_trainer(dataset)
    gen = torch.Generator().manual_seed(seed)
    for name, p in inner.model.named_parameters():  # B = 0 at init: make the adapter matter
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    inner.model.train()
    return inner, core, dataset


def _trl(tiny_model_dir, tmp_path, inner, pc):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    from .test_preference_oracles import _copy_lora, _peft_config

    args = KTOConfig(output_dir=str(tmp_path / "trl"), beta=pc["beta"], desirable_weight=pc["desirable_weight"],
                     undesirable_weight=pc["undesirable_weight"], use_cpu=True, bf16=False, report_to=[],
                     max_length=None, disable_dropout=True, per_device_train_batch_size=len(RECORDS))
    trl = KTOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                     train_dataset=Dataset.from_list(RECORDS),
                     processing_class=AutoTokenizer.from_pretrained(tiny_model_dir), peft_config=_peft_config(inner))
    return trl, _copy_lora(inner, trl.model)


def _trl_batch(dataset, rows):
    """Our token ids as TRL's prompt/completion ids, with TRL's own KL rotation (its dataset map)."""
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    examples = []
    for i in rows:
        ex = dataset[i]
        start = next(k for k, lab in enumerate(ex["completion_labels"]) if lab != -100)
        assert -100 not in ex["completion_labels"][start:]
        examples.append({"prompt_ids": ex["completion_input_ids"][:start],
                         "completion_ids": ex["completion_input_ids"][start:], "label": ex["label"]})
    completions = [ex["completion_ids"] for ex in examples]
    for ex, kl in zip(examples, [completions[-1]] + completions[:-1]):  # TRL's add_kl_completion_ids
        ex["KL_completion_ids"] = kl
    return DataCollatorForUnpairedPreference(pad_token_id=0)(examples)


# Rewards are beta * (log-prob - reference log-prob), as in DPO: see REWARD_ATOL in test_preference.py.
@pytest.mark.parametrize("beta, desirable_weight, undesirable_weight, padding_free, seed, kl_positive", [
    (0.1, 1.0, 1.0, False, 2, True),  # this seed's adapter puts the KL estimate above 0
    (0.1, 1.33, 1.0, True, 2, True),
    (0.5, 1.0, 0.75, True, 0, False),  # and this one below 0: clamped, as TRL does
])
def test_kto_loss_rewards_and_lora_grads_match_trl(tiny_model_dir, tmp_path, beta, desirable_weight,
                                                  undesirable_weight, padding_free, seed, kl_positive):
    import torch

    pc = {"loss_type": "kto", "beta": beta, "desirable_weight": desirable_weight,
          "undesirable_weight": undesirable_weight}
    inner, core, dataset = _ours(tiny_model_dir, tmp_path, pc, padding_free, seed)
    trl, lora = _trl(tiny_model_dir, tmp_path, inner, pc)
    if not padding_free:  # our KL sequences are TRL's, token for token
        ours_batch = core.data_collator([dataset[i] for i in range(len(RECORDS))])
        trl_batch = _trl_batch(dataset, range(len(RECORDS)))
        mask = ours_batch["kl_attention_mask"]
        assert torch.equal(mask, trl_batch["KL_attention_mask"])
        assert torch.equal(ours_batch["kl_input_ids"] * mask, trl_batch["KL_input_ids"] * mask)
        assert torch.equal(ours_batch["kl_labels"] != -100, trl_batch["KL_completion_mask"].bool())
    for rows in ([0, 1, 2, 3], [1, 2, 3], [0, 2]):  # the whole batch, an odd one, only desirable examples
        loss = core.compute_loss(inner.model, core.data_collator([dataset[i] for i in rows]))
        loss.backward()
        ref = trl.compute_loss(trl.model, _trl_batch(dataset, rows))
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)
        ours_m, trl_m = core._pref_metrics["train"], trl._metrics["train"]
        torch.testing.assert_close(torch.tensor(ours_m["kl"][-1]), torch.tensor(trl_m["kl"][-1]), rtol=1e-5,
                                   atol=REWARD_ATOL)
        if rows == [0, 1, 2, 3]:
            assert (ours_m["kl"][-1] > 0) == kl_positive
        labels = [dataset[i]["label"] for i in rows]
        for side, count in (("chosen", sum(labels)), ("rejected", len(labels) - sum(labels))):
            for key in (f"rewards/{side}", f"logps/{side}"):
                if not count:
                    continue
                ours_mean = sum(ours_m[key][-count:]) / count  # TRL stores the batch mean
                atol = REWARD_ATOL * beta if key.startswith("rewards/") else 1e-6
                torch.testing.assert_close(torch.tensor(ours_mean), torch.tensor(trl_m[key][-1]), rtol=1e-5, atol=atol)
        ours_g, trl_g = _grads(inner.model, lora), _grads(trl.model, lora)
        for n in lora:
            torch.testing.assert_close(ours_g[n], trl_g[n], rtol=1e-4, atol=1e-7)


def test_kto_run_writes_kl_and_reward_metrics(tiny_model_dir, tmp_path):
    from sage_libs.sage_finetune.run_config import load_run_config, make_trainer

    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    config = tmp_path / "kto.yaml"
    out = tmp_path / "run"
    config.write_text(f"method: dpo\ntraining: {{model_name_or_path: {tiny_model_dir}, output_dir: {out}, report_to: [], "
                      "use_cpu: true, max_steps: 2, per_device_train_batch_size: 4, save_strategy: 'no', "
                      "disable_tqdm: true, eval_on_start: true, learning_rate: 1.0e-3, warmup_steps: 0}\n"
                      "preference: {loss_type: kto, beta: 0.1, undesirable_weight: 1.2}\n")
    trainer = make_trainer(load_run_config(str(config)))
    trainer.train(str(path), str(path))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == "dpo/lora" and saved["loss_type"] == "kto"
    for key in ("eval_loss", "eval_kl", "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins",
                "eval_kl_before", "eval_rewards/margins_before"):
        assert key in saved, key
    assert "eval_rewards/accuracies" not in saved  # no pairs, no accuracy
    train_logs = [e for e in trainer.hf_trainer.state.log_history if "loss" in e]
    assert train_logs and all(k in train_logs[0] for k in ("kl", "rewards/chosen", "rewards/rejected"))
    assert trainer.data_stats["train"]["desirable"] == 2 and trainer.data_stats["train"]["undesirable"] == 2
