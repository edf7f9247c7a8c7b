"""Faults during training: kill -9 then resume, Ctrl-C, half-written checkpoints, a NaN loss.

The kill and Ctrl-C tests run the real CLI in a subprocess and send it real signals."""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal

import pytest

from ._helpers import (
    SignalWhen,
    assert_weights_are_safetensors,
    logged_steps,
    start_cli,
    stderr_of,
    stop,
    wait_for,
    write_config,
)

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune import ConfigError, LoRAConfig, TrainingConfig, create_loader, create_trainer  # noqa: E402
from sage_libs.sage_finetune.cli import main  # noqa: E402
from sage_libs.sage_finetune.run.checkpoints import checkpoint_problems, find_checkpoints  # noqa: E402
from sage_libs.sage_finetune.run.resume import resume_checkpoint  # noqa: E402

from ._helpers import EXAMPLE_DATA  # noqa: E402


def adapter_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def max_abs_diff(a, b):
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


# --------------------------------------------------------------------------------------------
# (a) kill -9, then resume_from_checkpoint: true
# --------------------------------------------------------------------------------------------
def test_kill_9_then_resume_matches_an_unbroken_run(tiny_model_dir, tmp_path):
    """SIGKILL a CLI run once it has checkpoints (save_steps=1: the kill usually lands in the middle of
    a save), resume with training.resume_from_checkpoint=true: the final adapter equals that of a run
    that was never interrupted. Dropout is on, the schedule is cosine with warm-up and the 30 steps cross
    several epochs, so optimizer, scheduler, RNG and data order must all resume exactly."""
    cfg = write_config(tmp_path, tiny_model_dir,
                       training={"max_steps": 30, "save_strategy": "steps", "save_steps": 1, "save_total_limit": 2,
                                 "lr_scheduler_type": "cosine", "warmup_steps": 2, "learning_rate": 2e-3},
                       lora={"lora_dropout": 0.1})
    broken, unbroken = tmp_path / "broken", tmp_path / "unbroken"
    proc = start_cli(["train", cfg, f"training.output_dir={broken}"], tmp_path / "killed")
    # once a checkpoint exists (save_total_limit rotates them, so not a fixed name)
    killer = SignalWhen(proc, lambda: any(broken.glob("checkpoint-*/trainer_state.json")), signal.SIGKILL,
                        tmp_path / "killed")
    killer.start()
    try:
        # meanwhile, the unbroken run in this process
        assert main(["train", str(cfg), f"training.output_dir={unbroken}"]) == 0
        killer.join(timeout=180)
        assert killer.sent, killer.error
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop(proc)
    assert not (broken / "metrics.json").exists() and not (broken / "adapter").exists()
    assert not (broken / "checkpoint-30").exists(), "the run finished before it was killed"

    assert main(["train", str(cfg), f"training.output_dir={broken}", "training.resume_from_checkpoint=true",
                 "--merge"]) == 0
    diff = max_abs_diff(adapter_weights(broken / "adapter"), adapter_weights(unbroken / "adapter"))
    assert diff < 1e-6, diff
    assert json.loads((broken / "metrics.json").read_text())["global_step"] == 30
    assert logged_steps(broken) == list(range(1, 31))  # steps logged after the checkpoint are not doubled
    # safe defaults: every weight file written by train, merge and the checkpoints is safetensors
    assert (broken / "merged" / "model.safetensors").is_file()
    assert_weights_are_safetensors(broken)


# --------------------------------------------------------------------------------------------
# (b) Ctrl-C
# --------------------------------------------------------------------------------------------
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tiny_model_dir, tmp_path):
    """SIGINT in the middle of training: the step finishes, a checkpoint is saved although
    save_strategy is 'no', the CLI exits with 130 and prints the command that resumes."""
    out = tmp_path / "out"
    cfg = write_config(tmp_path, tiny_model_dir, training={"max_steps": 2000, "save_strategy": "no"})
    proc = start_cli(["train", cfg, "training.seed=3"], tmp_path / "log")
    try:
        wait_for(lambda: len(logged_steps(out)) >= 2, proc, tmp_path / "log")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, stderr_of(tmp_path / "log")
    finally:
        stop(proc)
    err = stderr_of(tmp_path / "log")
    assert "Traceback" not in err
    checkpoints = find_checkpoints(out)
    assert len(checkpoints) == 1 and checkpoint_problems(checkpoints[0]) == []
    step = int(checkpoints[0].name.split("-")[1])
    assert 2 <= step < 2000
    assert f"training interrupted at step {step} of 2000; checkpoint saved: {checkpoints[0]}" in err
    assert f"resume with: sage-finetune train {cfg} training.seed=3 training.resume_from_checkpoint=true" in err
    assert not (out / "metrics.json").exists() and not (out / "adapter").exists()


# --------------------------------------------------------------------------------------------
# (c) resume never picks a half-written checkpoint
# --------------------------------------------------------------------------------------------
def same_run(model_dir, out, **changes):
    """A trainer with the config of the run in ``three_checkpoints`` (so that resume accepts its
    checkpoints), writing to ``out``."""
    tc = TrainingConfig(model_name_or_path=str(model_dir), output_dir=str(out), max_steps=3,
                        per_device_train_batch_size=2, learning_rate=1e-3, warmup_steps=0, max_seq_length=64,
                        save_strategy="steps", save_steps=1, save_total_limit=None, disable_tqdm=True)
    return create_trainer("lora", training_config=tc.replace(**changes), lora_config=LoRAConfig(r=4),
                          data_config={"train_file": str(EXAMPLE_DATA / "chat_train.jsonl"), "max_samples": 8})


@pytest.fixture(scope="module")
def three_checkpoints(tiny_model_dir, tmp_path_factory):
    """A 3-step run with a checkpoint after every step."""
    out = tmp_path_factory.mktemp("ckpts") / "out"
    same_run(tiny_model_dir, out).train()
    assert [p.name for p in find_checkpoints(out)] == ["checkpoint-3", "checkpoint-2", "checkpoint-1"]
    return out


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


HALF_WRITTEN = {
    "no trainer_state.json": (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json"),
    "truncated trainer_state.json": (lambda c: _truncate(c / "trainer_state.json"), "trainer_state.json is damaged"),
    "truncated adapter weights": (lambda c: _truncate(c / "adapter_model.safetensors"),
                                  "adapter_model.safetensors is damaged or truncated"),
    "no adapter weights": (lambda c: (c / "adapter_model.safetensors").unlink(), "no weights"),
    "truncated optimizer.pt": (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt is damaged or truncated"),
    "no scheduler.pt": (lambda c: (c / "scheduler.pt").unlink(), "no scheduler.pt"),
    "no rng_state.pth": (lambda c: (c / "rng_state.pth").unlink(), "no rng_state.pth"),
}


@pytest.mark.parametrize("damage", list(HALF_WRITTEN))
def test_resume_skips_a_half_written_newest_checkpoint(three_checkpoints, tiny_model_dir, tmp_path, caplog, damage):
    out = tmp_path / "out"
    shutil.copytree(three_checkpoints, out)
    corrupt, problem = HALF_WRITTEN[damage]
    corrupt(out / "checkpoint-3")
    trainer = same_run(tiny_model_dir, out, resume_from_checkpoint=True)
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(trainer) == str(out / "checkpoint-2")
    assert "not resuming from" in caplog.text and "checkpoint-3" in caplog.text and problem in caplog.text
    # naming the broken checkpoint explicitly is an error, not a silent fallback
    trainer = same_run(tiny_model_dir, out, resume_from_checkpoint=str(out / "checkpoint-3"))
    with pytest.raises(ConfigError, match=r"checkpoint-3 is incomplete \(.*" + re.escape(problem)):
        resume_checkpoint(trainer)


def test_resume_when_no_checkpoint_is_complete(three_checkpoints, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(three_checkpoints, out)
    for c in find_checkpoints(out):
        (c / "optimizer.pt").unlink()
    with pytest.raises(ConfigError, match=r"no checkpoint in .* is complete \(checkpoint-3: no optimizer.pt; "):
        resume_checkpoint(same_run(tiny_model_dir, out, resume_from_checkpoint=True))


def test_a_checkpoint_without_its_run_identity_is_resumed_only_when_named(three_checkpoints, tiny_model_dir,
                                                                          tmp_path, caplog):
    """Before: the output folder's run_identity.json stood in for the checkpoint's, so a checkpoint
    whose own record was deleted resumed without a word."""
    out = tmp_path / "out"
    shutil.copytree(three_checkpoints, out)
    (out / "checkpoint-3" / "run_identity.json").unlink()
    with pytest.raises(ConfigError, match=r"checkpoint-3 has no run_identity.json \(deleted, or written by another "
                                          r"tool\), so nothing shows that this config wrote it; set "
                                          r"resume_from_checkpoint to .*checkpoint-3 to continue it anyway"):
        resume_checkpoint(same_run(tiny_model_dir, out, resume_from_checkpoint=True))
    named = str(out / "checkpoint-3")
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(same_run(tiny_model_dir, out, resume_from_checkpoint=named)) == named
    assert "resuming " + named + " as asked, although it has no run_identity.json" in caplog.text


@pytest.mark.parametrize("change,expect", [
    ("tokenizer", "the model's tokenizer (tokenizer.json) changed"),
    ("template", "the model's tokenizer (chat_template.jinja) changed"),
    ("weights", "the model's weights (model.safetensors) changed"),
])
def test_the_run_identity_notices_a_replaced_tokenizer_or_retrained_weights(tiny_model_dir, tmp_path, change, expect):
    """Before: the identity covered config.json and the weight files' sizes only, so a run resumed
    silently onto another tokenizer or other weights of the same shapes."""
    from sage_libs.sage_finetune.run.identity import RunIdentity, identity_differences

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)

    def identity():
        trainer = same_run(model, tmp_path / "out")
        return RunIdentity.from_resolved_config(trainer.resolved_config(), trainer.data_config.train_file)

    before = identity()
    assert identity().fingerprint == before.fingerprint  # stable when nothing changes
    if change == "tokenizer":
        data = json.loads((model / "tokenizer.json").read_text())
        data["added_tokens"][0]["content"] = "<|other|>"
        (model / "tokenizer.json").write_text(json.dumps(data))
    elif change == "template":
        (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    else:  # the same shapes and size, other values: a byte in the middle of the tensor data
        weights = bytearray((model / "model.safetensors").read_bytes())
        weights[len(weights) // 2] ^= 0xFF
        (model / "model.safetensors").write_bytes(bytes(weights))
    after = identity()
    assert after.fingerprint != before.fingerprint
    assert identity_differences({"fields": before.fields}, after) == expect


def test_training_resumes_past_a_half_written_checkpoint(three_checkpoints, tiny_model_dir, tmp_path):
    """End to end: the newest checkpoint is cut short; resume takes the one before and finishes."""
    out = tmp_path / "out"
    shutil.copytree(three_checkpoints, out)
    _truncate(out / "checkpoint-3" / "adapter_model.safetensors")
    (out / "checkpoint-3" / "trainer_state.json").unlink()
    cfg = write_config(tmp_path, tiny_model_dir, training={  # the config of three_checkpoints' run
        "output_dir": str(out), "max_steps": 3, "learning_rate": 1e-3, "save_strategy": "steps", "save_steps": 1,
        "save_total_limit": None, "resume_from_checkpoint": True, "weight_decay": 0.01},
        lora={"lora_alpha": 16, "lora_dropout": 0.05, "target_modules": None})
    assert main(["train", str(cfg)]) == 0
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 3
    assert all(checkpoint_problems(c) == [] for c in find_checkpoints(out))  # checkpoint-3 rewritten whole


# --------------------------------------------------------------------------------------------
# (d) a non-finite loss
# --------------------------------------------------------------------------------------------
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path, capsys,
                                                                             monkeypatch):
    from sage_libs.sage_finetune.trainers.hf_core import SFTTrainerCore

    real = SFTTrainerCore.compute_loss

    def nan_at_step_4(self, model, inputs, *args, **kwargs):
        result = real(self, model, inputs, *args, **kwargs)
        if self.state.global_step == 3:  # computing optimizer step 4
            result = (result[0] * float("nan"), *result[1:]) if isinstance(result, tuple) else result * float("nan")
        return result

    monkeypatch.setattr(SFTTrainerCore, "compute_loss", nan_at_step_4)
    out = tmp_path / "out"
    cfg = write_config(tmp_path, tiny_model_dir, training={"max_steps": 6, "save_strategy": "steps", "save_steps": 1,
                                                           "save_total_limit": None})
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "training stopped at optimizer step 4" in err and "the training loss is nan" in err
    assert f"the last good checkpoint is {out / 'checkpoint-3'}" in err
    assert "lower training.learning_rate (now 0.005)" in err and "check the data" in err and "fp16" in err
    assert [c.name for c in find_checkpoints(out)] == ["checkpoint-3", "checkpoint-2", "checkpoint-1"]
    assert checkpoint_problems(out / "checkpoint-3") == []
    assert all(torch.isfinite(t).all() for t in adapter_weights(out / "checkpoint-3").values())
    assert not (out / "metrics.json").exists() and not (out / "adapter").exists()


def test_exploding_learning_rate_never_saves_non_finite_weights(tiny_model_dir, tmp_path):
    from sage_libs.sage_finetune.trainers.base import NonFiniteLossError

    out = tmp_path / "out"
    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(out), max_steps=8,
                        per_device_train_batch_size=2, learning_rate=1e30, warmup_steps=0, max_seq_length=64,
                        max_grad_norm=0.0, save_strategy="steps", save_steps=1, disable_tqdm=True)
    train = create_loader("jsonl").load(EXAMPLE_DATA / "chat_train.jsonl", max_samples=8)
    trainer = create_trainer("lora", training_config=tc, lora_config=LoRAConfig(r=4, lora_dropout=0.0))
    with pytest.raises(NonFiniteLossError, match=r"training stopped at optimizer step \d+") as info:
        trainer.train(train)
    assert info.value.step is not None and info.value.step < 8
    for checkpoint in find_checkpoints(out):
        for name, tensor in adapter_weights(checkpoint).items():
            assert torch.isfinite(tensor).all(), (checkpoint, name)
    assert not (out / "metrics.json").exists()


def test_a_resumed_runs_tokens_per_second_counts_its_own_tokens(three_checkpoints, tiny_model_dir, tmp_path):
    """train_tokens is the whole run's; train_tokens_per_second divides only the tokens this session
    trained by its time (it used to divide the whole run's tokens, restored from the checkpoint)."""
    import json

    out = tmp_path / "out"
    shutil.copytree(three_checkpoints, out)
    for name in ("checkpoint-3", "checkpoint-2"):
        shutil.rmtree(out / name)
    before = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["num_input_tokens_seen"]
    whole = json.loads((three_checkpoints / "metrics.json").read_text())
    metrics = same_run(tiny_model_dir, out, resume_from_checkpoint=True).train()
    assert metrics["global_step"] == 3 and metrics["train_tokens"] == whole["train_tokens"] > before > 0
    session = metrics["train_tokens"] - before
    assert metrics["train_tokens_per_second"] == pytest.approx(session / metrics["train_runtime"], rel=0.01)
