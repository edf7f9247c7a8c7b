"""Every fine-tuning method under ``dpo`` (and every loss over LoRA): a short run on the tiny model
trains exactly the method's parameters, keeps the reference fixed, and logs finite losses and the
reward metrics."""

from __future__ import annotations

import json
import math

import pytest

from ..paths import REPO
from .test_preference import PAIRS
from .test_preference_kto import RECORDS
from .test_trainers import LORA, METHODS, is_lora_matrix, weight_values

torch = pytest.importorskip("torch")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # see helpers.torch_threads


# name -> (method, preference options, trainer kwargs, training changes, which parameters train)
RUNS = {name: (name, {}, *METHODS[name]) for name in ("qlora", "dora", "lora_plus", "full", "freeze")}
RUNS.update({
    f"lora-{loss}": ("lora", {"loss_type": loss, **extra}, {"lora_config": dict(LORA, target_modules=["q_proj", "v_proj"])},
                     {}, is_lora_matrix)
    for loss, extra in (("ipo", {}), ("orpo", {}), ("simpo", {"beta": 2.0}), ("kto", {}))
})


@pytest.mark.parametrize("name", list(RUNS))
def test_method_trains_under_dpo(tiny_model_dir, tmp_path, name):
    from sage_libs.sage_finetune import create_trainer

    method, preference, kwargs, changes, should_train = RUNS[name]
    training = dict(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "run"), max_steps=3,
                    per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-2, warmup_steps=0,
                    weight_decay=0.0, max_seq_length=64, logging_steps=1, eval_on_start=True, save_strategy="no",
                    disable_tqdm=True, report_to=[], use_cpu=True)
    training.update(changes)
    trainer = create_trainer("dpo", method=method, preference_config=preference, training_config=training, **kwargs)
    inner = trainer.inner
    inner.setup()
    before = weight_values(inner.model)
    data = RECORDS if preference.get("loss_type") == "kto" else PAIRS
    metrics = trainer.train(data, data)

    assert metrics["method"] == f"dpo/{method}" and metrics["global_step"] == 3
    losses = [e["loss"] for e in trainer.hf_trainer.state.log_history if "loss" in e]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    assert math.isfinite(metrics["eval_loss"]) and math.isfinite(metrics["eval_loss_before"])
    paired = preference.get("loss_type") != "kto"
    logged = ("rewards/accuracies", "rewards/margins") if paired else ("kl", "rewards/margins")
    first = next(e for e in trainer.hf_trainer.state.log_history if "loss" in e)
    for key in logged:
        assert key in first and math.isfinite(first[key]), key
        assert f"eval_{key}" in metrics and f"eval_{key}_before" in metrics, key

    model = inner.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if should_train(n)}
    after = weight_values(model)
    for n in after:
        changed = not torch.equal(after[n], before[n])
        assert changed == (n in trainable), f"{n}: changed={changed}, trainable={n in trainable}"
    ref = trainer.hf_trainer.ref_model
    if method in ("full", "freeze"):  # a frozen copy of the initial weights is the reference
        for n, p in ref.named_parameters():
            assert torch.equal(p, before[n]) and not p.requires_grad, n
    else:  # adapters: the reference is the base model with the adapter disabled, no copy
        assert ref is None


def test_shipped_preference_data_is_regenerated_exactly_and_parses(tmp_path, tiny_tokenizer):
    import subprocess
    import sys

    from sage_libs.sage_finetune.data.preference import tokenize_preference_records
    from sage_libs.sage_finetune.data.unpaired import tokenize_unpaired_records
    from sage_libs.sage_finetune.loaders.jsonl import JSONLLoader

    shipped = REPO / "examples" / "preference"
    subprocess.run([sys.executable, str(shipped / "make_preference_data.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for name in ("pref_train.jsonl", "pref_eval.jsonl", "kto_train.jsonl"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
    train, held_out = (JSONLLoader().load(shipped / f"pref_{s}.jsonl") for s in ("train", "eval"))
    assert not {json.dumps(r["prompt"]) for r in train} & {json.dumps(r["prompt"]) for r in held_out}
    for records in (train, held_out):
        _, stats = tokenize_preference_records(records, tiny_tokenizer)
        assert stats.pairs == len(records) and stats.skipped_invalid == 0
    _, stats = tokenize_unpaired_records(JSONLLoader().load(shipped / "kto_train.jsonl"), tiny_tokenizer)
    assert stats.examples == len(train) and stats.desirable == stats.undesirable == len(train) // 2


def test_standalone_preference_evaluation_is_labelled_evaluation(tiny_model_dir, tmp_path, capsys):
    """`sage-finetune eval` of a DPO config printed its metrics as "before training"."""
    from sage_libs.sage_finetune import create_trainer

    training = dict(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "run"),
                    per_device_eval_batch_size=4, max_seq_length=64, disable_tqdm=True, report_to=[], use_cpu=True)
    trainer = create_trainer("dpo", method="lora", training_config=training,
                             lora_config=dict(LORA, target_modules=["q_proj", "v_proj"]))
    metrics = trainer.evaluate(PAIRS)
    err = capsys.readouterr().err
    assert f"evaluation  eval_loss {metrics['eval_loss']:.4f}" in err and "before training" not in err
