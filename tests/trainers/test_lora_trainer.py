"""LoRA end to end on the tiny model: what trains, what is saved, what reloads."""

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune import LoRAConfig, TrainingConfig, create_loader, create_trainer  # noqa: E402

from ..paths import EXAMPLE_DATA  # noqa: E402


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-run")
    loader = create_loader("jsonl")
    train = loader.load(EXAMPLE_DATA / "chat_train.jsonl", max_samples=64)
    evald = loader.load(EXAMPLE_DATA / "chat_eval.jsonl", max_samples=16)
    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(out / "run"), max_steps=8,
                        per_device_train_batch_size=8, learning_rate=1e-2, warmup_steps=0, logging_steps=2,
                        eval_steps=4, eval_on_start=True, save_steps=100, disable_tqdm=True)
    lc = LoRAConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    trainer = create_trainer("lora", training_config=tc, lora_config=lc)
    trainer.setup()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.train(train, evald)
    return {"trainer": trainer, "metrics": metrics, "before": before, "out": out, "eval": evald,
            "model_dir": tiny_model_dir}


def batch(tokenizer):
    enc = tokenizer(["<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n",
                     "The capital of France is"], return_tensors="pt", padding=True)
    return enc


def logits(model, enc):
    model.eval()
    with torch.no_grad():
        return model(**enc).logits


def test_eval_loss_falls_and_metrics_complete(run):
    m = run["metrics"]
    assert m["eval_loss"] < m["eval_loss_before"]
    assert m["perplexity"] == pytest.approx(torch.tensor(m["eval_loss"]).exp().item(), rel=1e-5)
    for key in ("train_loss", "train_runtime", "train_tokens_per_second", "global_step"):
        assert m[key] is not None
    assert m["global_step"] == 8 and m["train_tokens_per_second"] > 0


def test_only_adapter_parameters_change(run):
    model = run["trainer"].model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".down_proj.lora_A" in n for n in trainable) and not any("k_proj.lora" in n for n in trainable)
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), run["before"][name])
        assert changed == (name in trainable), f"{name}: changed={changed}, trainable={name in trainable}"


def test_adapter_reloads_with_identical_logits(run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trainer = run["trainer"]
    trainer.save_model(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert not any(f.endswith(".bin") for f in files)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run["model_dir"]), tmp_path / "adapter")
    enc = batch(trainer.tokenizer)
    torch.testing.assert_close(logits(reloaded, enc), logits(trainer.model, enc), rtol=0, atol=1e-6)
    # and through our own load_model, in a fresh trainer
    fresh = create_trainer("lora", training_config=trainer.training_config, lora_config=trainer.lora_config)
    fresh.load_model(tmp_path / "adapter")
    torch.testing.assert_close(logits(fresh.model, enc), logits(trainer.model, enc), rtol=0, atol=1e-6)


def test_merged_model_matches_adapter(run, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = run["trainer"]
    trainer.merge_and_save(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    enc = batch(trainer.tokenizer)
    diff = (logits(merged, enc) - logits(trainer.model, enc)).abs().max().item()
    assert diff < 1e-4, diff
    # the live adapter model is untouched by merging
    assert any("lora_A" in n for n, _ in trainer.model.named_parameters())


def test_run_outputs(run):
    out = Path(run["trainer"].training_config.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(run["metrics"]["eval_loss"])
    log = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    train_steps = [e["step"] for e in log if "loss" in e]
    assert train_steps == [1, 2, 4, 6, 8]
    assert all("learning_rate" in e and "grad_norm" in e for e in log if "loss" in e)
    assert [e["step"] for e in log if "eval_loss" in e][:1] == [0]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import yaml

    cfg = yaml.safe_load((out / "run_config.yaml").read_text())
    assert cfg["method"] == "lora" and cfg["lora"]["r"] == 4 and cfg["training"]["max_steps"] == 8


def test_evaluate_and_generate(run):
    trainer = run["trainer"]
    ev = trainer.evaluate(run["eval"])
    assert ev["eval_loss"] == pytest.approx(run["metrics"]["eval_loss"], rel=1e-5)
    text = trainer.generate("What is 3 + 4?", max_new_tokens=8)
    assert isinstance(text, str)


def test_bad_target_module_lists_linear_layers(tiny_model_dir, tmp_path):
    from sage_libs.sage_finetune import ConfigError

    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "o"))
    trainer = create_trainer("lora", training_config=tc, lora_config=LoRAConfig(target_modules=["qproj"]))
    with pytest.raises(ConfigError) as err:
        trainer.setup()
    msg = str(err.value)
    assert "'qproj' matches no module" in msg
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in msg
    assert not (tmp_path / "o").exists()


def test_unknown_option_rejected(tiny_model_dir, tmp_path):
    from sage_libs.sage_finetune import ConfigError

    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"unknown option 'formating_func' \(did you mean"):
        create_trainer("lora", training_config=tc, formating_func=None)
