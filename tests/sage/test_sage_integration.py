"""SAGE ecosystem integration. The suite runs twice in CI (scripts/test.sh): without isage-common
(standalone tests) and with the real isage-common from PyPI (the rest)."""

import json
import subprocess
import sys
import textwrap

import pytest

from ..paths import EXAMPLE_DATA  # noqa: E402

try:
    import sage.libs.finetune  # noqa: F401

    HAVE_SAGE = True
except ImportError:
    HAVE_SAGE = False

needs_sage = pytest.mark.skipif(not HAVE_SAGE, reason="isage-common not installed "
                                "(scripts/test.sh installs it for a second run)")


def run_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """A fresh interpreter, so nothing imported by the test process leaks in."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                                "TOKENIZERS_PARALLELISM": "false"})


def test_standalone_without_sage():
    """With SAGE unimportable, our package imports, registers nothing there, and works."""
    result = run_python("""
        import sys
        sys.modules["sage"] = None  # make `import sage...` fail even if it is installed
        import sage_libs.sage_finetune as f
        from sage_libs.sage_finetune._register import register_with_sage
        assert register_with_sage() is False
        assert "lora" in f.registered_trainers() and "jsonl" in f.registered_loaders()
        import isage_finetune
        print("ok", isage_finetune.__version__)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("ok 0.1")


@needs_sage
def test_fresh_interpreter_sage_api_trains(tiny_model_dir, tmp_path):
    """The design's SAGE example, without importing our package: SAGE discovers us through
    ``isage_finetune`` and its own config dataclasses are accepted."""
    result = run_python(f"""
        import json, sys
        from sage.libs.finetune import create_trainer, create_loader, TrainingConfig, LoRAConfig, registered_trainers
        assert {{"lora", "qlora", "dora", "lora_plus", "full", "agent"}} <= set(registered_trainers()), registered_trainers()
        train = create_loader("jsonl").load({str(EXAMPLE_DATA / "alpaca_train.jsonl")!r}, max_samples=24)
        evald = create_loader("jsonl").load({str(EXAMPLE_DATA / "alpaca_eval.jsonl")!r}, max_samples=8)
        trainer = create_trainer("lora",
            training_config=TrainingConfig(model_name_or_path={str(tiny_model_dir)!r}, output_dir={str(tmp_path / "out")!r},
                                           num_train_epochs=1, learning_rate=1e-2, warmup_steps=0, logging_steps=1),
            lora_config=LoRAConfig(r=4))
        metrics = trainer.train(train, evald)
        trainer.save_model({str(tmp_path / "adapter")!r})
        print(json.dumps({{"eval_loss": metrics["eval_loss"], "perplexity": metrics["perplexity"],
                          "model": type(trainer.model).__name__}}))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["perplexity"] > 1 and out["model"] == "PeftModelForCausalLM"
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


@needs_sage
def test_registration_is_idempotent_and_tolerates_foreign_names():
    result = run_python("""
        from sage.libs.finetune import interface as sage

        class Foreign(sage.FineTuner):
            def train(self, *a, **k): return {}
            def evaluate(self, *a, **k): return {}
            def save_model(self, *a): pass
            def load_model(self, *a): pass
            def generate(self, *a, **k): return ""

        sage.unregister_trainer("full")      # pretend another package owns "full"
        sage.register_trainer("full", Foreign)
        import importlib, isage_finetune
        from sage_libs.sage_finetune import _register
        _register._done = False
        assert _register.register_with_sage() is True     # again: no crash, nothing doubled
        importlib.reload(isage_finetune)
        assert sage.create_trainer.__module__.startswith("sage.")
        assert sage.factory._TRAINER_REGISTRY["full"] is Foreign
        from sage_libs.sage_finetune.trainers.lora import LoRATrainer
        assert sage.factory._TRAINER_REGISTRY["lora"] is LoRATrainer
        assert issubclass(LoRATrainer, sage.FineTuner)
        assert set(sage.registered_strategies()) >= {"lora", "dora", "rslora", "pissa", "lora_plus", "full"}
        assert {"tensorboard", "wandb", "early_stop"} <= set(sage.registered_callbacks())
        assert {"jsonl", "parquet", "huggingface", "instruction", "trajectory"} <= set(sage.registered_loaders())
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-3000:]


@needs_sage
def test_sage_callback_can_stop_our_training(tiny_model_dir, tmp_path):
    from sage.libs.finetune.interface import TrainingCallback as SageCallback

    from sage_libs.sage_finetune import LoRAConfig, TrainingConfig, create_loader, create_trainer

    class StopAfterTwo(SageCallback):
        def __init__(self):
            self.seen = []

        def on_step_end(self, trainer, step, loss, **kw):
            self.seen.append((step, round(loss, 3) > 0))
            return step >= 2

    cb = StopAfterTwo()
    trainer = create_trainer("lora", training_config=TrainingConfig(
        model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "o"), max_steps=10, warmup_steps=0,
        save_strategy="no", disable_tqdm=True), lora_config=LoRAConfig(r=4), callbacks=[cb])
    metrics = trainer.train(create_loader("jsonl").load(EXAMPLE_DATA / "alpaca_train.jsonl", max_samples=16))
    assert metrics["global_step"] == 2 and cb.seen == [(1, True), (2, True)]


@needs_sage
def test_strategy_on_a_model_we_do_not_own(tiny_model_dir):
    import torch
    from sage.libs.finetune.interface import create_strategy
    from transformers import AutoModelForCausalLM

    import isage_finetune  # noqa: F401  (registers, as SAGE's import would)

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    strategy = create_strategy("dora", r=4, target_modules=["q_proj", "v_proj"])
    peft_model = strategy.prepare_model(model)
    groups = strategy.get_optimizer_grouped_parameters(peft_model, weight_decay=0.1)
    names = {id(p): n for n, p in peft_model.named_parameters()}
    assert all("lora_" in names[id(p)] for g in groups for p in g["params"])
    assert any(g["weight_decay"] == 0.0 for g in groups)  # DoRA magnitudes are not decayed
    x = torch.tensor([[1, 2, 3]])
    merged = strategy.merge_and_unload(peft_model)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert merged(x).logits.shape[-1] == model.config.vocab_size


def test_sage_cli_plugin_entry_point(capsys):
    import argparse
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="sage.cli.plugins") if ep.name == "finetune"]
    assert eps and eps[0].value == "sage_libs.sage_finetune.cli.sage_plugin:register"
    parser = argparse.ArgumentParser(prog="sage")
    eps[0].load()(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["finetune", "data", "inspect", str(EXAMPLE_DATA / "chat_eval.jsonl")])
    assert args.func(args) == 2  # no tokenizer given: our one-line error, exit code 2
    assert "pass --tokenizer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["finetune", "--help"])
    assert exc.value.code == 0 and "tiny-model" in capsys.readouterr().out
