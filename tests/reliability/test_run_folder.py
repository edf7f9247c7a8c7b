"""One output folder, one run: run identity, the lock, foreign checkpoints, finished runs, SIGTERM.

The tests run the real CLI in subprocesses and send real signals (kill -9, SIGTERM), or start two
runs on one folder at the same moment."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from ._helpers import SignalWhen, logged_steps, start_cli, stderr_of, stop, wait_for, write_config

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune.cli import main  # noqa: E402
from sage_libs.sage_finetune.run.checkpoints import PREVIOUS_RUNS, checkpoint_problems, find_checkpoints  # noqa: E402
from sage_libs.sage_finetune.run.identity import read_identity  # noqa: E402
from sage_libs.sage_finetune.run.lock import LOCK_NAME  # noqa: E402


def adapter(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def max_abs_diff(a, b):
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


def finish(proc, log_dir, timeout=180):
    try:
        return proc.wait(timeout=timeout)
    finally:
        stop(proc)


def error_lines(err):
    return [line for line in err.splitlines() if "error:" in line]


# --------------------------------------------------------------------------------------------
# 1. resume never continues another run's checkpoint silently
# --------------------------------------------------------------------------------------------
def test_resume_takes_its_own_checkpoint_never_another_runs(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "out"
    run_a = write_config(tmp_path, tiny_model_dir, "a.yaml", training={
        "max_steps": 4, "save_strategy": "steps", "save_steps": 2, "save_total_limit": None, "learning_rate": 1e-3})
    assert main(["train", str(run_a)]) == 0
    a_identity = read_identity(out)
    assert read_identity(out / "checkpoint-4")["fingerprint"] == a_identity["fingerprint"]

    # B: another learning rate, same folder; killed (kill -9) once it has a checkpoint
    run_b = write_config(tmp_path, tiny_model_dir, "b.yaml", training={
        "max_steps": 12, "save_strategy": "steps", "save_steps": 1, "save_total_limit": None, "learning_rate": 5e-3})
    proc = start_cli(["train", run_b], tmp_path / "b")
    try:
        wait_for(lambda: (out / "checkpoint-1" / "trainer_state.json").is_file(), proc, tmp_path / "b")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop(proc)
    # B's fresh start moved A's checkpoints aside (never mixed with B's, never resumed by B)
    assert "moved them to" in stderr_of(tmp_path / "b")
    [previous] = (out / PREVIOUS_RUNS).iterdir()
    assert sorted(p.name for p in previous.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (out / LOCK_NAME).exists()  # the killed run's lock file: stale, not blocking
    b_step = max(int(p.name.split("-")[1]) for p in find_checkpoints(out) if not checkpoint_problems(p))
    assert b_step < 12
    # the folder: A's (newer) checkpoint back beside B's own
    shutil.copytree(previous / "checkpoint-4", out / "checkpoint-40")
    (out / "checkpoint-40" / "trainer_state.json").write_text(
        (out / "checkpoint-40" / "trainer_state.json").read_text().replace('"global_step": 4', '"global_step": 40'))

    # a third config (lora.r changed) finds no checkpoint of its own: exit 2, one line, nothing rewritten
    run_config_before = (out / "run_config.yaml").read_text()
    assert main(["train", str(run_b), "training.resume_from_checkpoint=true", "lora.r=2"]) == 2
    assert (out / "run_config.yaml").read_text() == run_config_before

    # B resumed: its own checkpoint, not A's newer checkpoint-40
    with caplog.at_level(logging.WARNING):
        assert main(["train", str(run_b), "training.resume_from_checkpoint=true"]) == 0
    assert f"not resuming from {out / 'checkpoint-40'}: another config wrote it (training.learning_rate 0.001 " \
           "-> 0.005, training.max_steps 4 -> 12)" in caplog.text
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 12
    assert yaml.safe_load((out / "run_config.yaml").read_text())["training"]["learning_rate"] == 5e-3
    assert read_identity(out)["fingerprint"] != a_identity["fingerprint"]
    assert max_abs_diff(adapter(out / "adapter"), adapter(previous / "checkpoint-4")) > 1e-4
    assert logged_steps(out) == list(range(1, 13))
    assert not (out / LOCK_NAME).exists()


def test_resume_with_only_another_configs_checkpoints_is_bad_input(tiny_model_dir, tmp_path, capsys):
    """lora.r 8 -> 4 with resume true: exit 2, one line naming what differs, run_config.yaml untouched;
    naming the checkpoint explicitly is an override, but a shape that cannot load is still bad input."""
    out = tmp_path / "out"
    cfg = write_config(tmp_path, tiny_model_dir, training={"max_steps": 2, "save_strategy": "steps", "save_steps": 1},
                       lora={"r": 8})
    assert main(["train", str(cfg)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()

    assert main(["train", str(cfg), "lora.r=4", "training.resume_from_checkpoint=true"]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert "were written by another run (lora.r 8 -> 4)" in err and "checkpoint-2" in err

    assert main(["train", str(cfg), "lora.r=4", f"training.resume_from_checkpoint={out / 'checkpoint-1'}"]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert f"training.resume_from_checkpoint: {out / 'checkpoint-1'} does not fit this model" in err
    assert "lora_A.weight is [8, 64] there, [4, 64] here" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_explicit_checkpoint_of_another_config_is_resumed_with_a_warning(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "out"
    cfg = write_config(tmp_path, tiny_model_dir, training={"max_steps": 2, "save_strategy": "steps", "save_steps": 1})
    assert main(["train", str(cfg)]) == 0
    assert main(["train", str(cfg), "training.max_steps=3", "training.learning_rate=1e-3",
                 f"training.resume_from_checkpoint={out / 'checkpoint-2'}"]) == 0
    assert "resuming" in caplog.text and "as asked, although another config wrote it" in caplog.text
    assert "training.max_steps 2 -> 3" in caplog.text
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 3
    assert read_identity(out / "checkpoint-3")["fingerprint"] == read_identity(out)["fingerprint"]


# --------------------------------------------------------------------------------------------
# 2. two runs on one folder
# --------------------------------------------------------------------------------------------
def test_two_runs_started_at_once_on_one_folder(tiny_model_dir, tmp_path):
    """Both start at the same moment: one trains, the other stops at once with exit 2 and a message
    naming the holder; the folder then describes the winner only."""
    out = tmp_path / "out"
    cfgs = [write_config(tmp_path, tiny_model_dir, f"r{i}.yaml", training={
        "max_steps": 6, "save_strategy": "steps", "save_steps": 1, "save_total_limit": 2, "seed": i}) for i in (1, 2)]
    procs = [start_cli(["train", cfg], tmp_path / f"log{i}") for i, cfg in enumerate(cfgs)]
    codes = [finish(p, tmp_path / f"log{i}") for i, p in enumerate(procs)]
    assert sorted(codes) == [0, 2], [stderr_of(tmp_path / f"log{i}")[-2000:] for i in range(2)]
    winner, loser = codes.index(0), codes.index(2)
    err = stderr_of(tmp_path / f"log{loser}")
    assert len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert f"training.output_dir: {out} is in use by another run (pid {procs[winner].pid} on " in err
    assert f"train {cfgs[winner]}" in err  # the holder's command line
    assert yaml.safe_load((out / "run_config.yaml").read_text())["training"]["seed"] == winner + 1
    assert logged_steps(out) == list(range(1, 7))
    assert [c.name for c in find_checkpoints(out)] == ["checkpoint-6", "checkpoint-5"]
    assert not list(out.glob(".*tmp*")) and not (out / LOCK_NAME).exists()


# --------------------------------------------------------------------------------------------
# 5. resuming a finished run trains nothing
# --------------------------------------------------------------------------------------------
def test_resuming_a_finished_run_changes_nothing(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(tmp_path, tiny_model_dir, training={"max_steps": 4, "save_strategy": "steps", "save_steps": 2})
    assert main(["train", str(cfg)]) == 0
    weights = adapter(out / "adapter")
    proc = start_cli(["train", cfg, "training.resume_from_checkpoint=true"], tmp_path / "again")
    assert finish(proc, tmp_path / "again") == 0, stderr_of(tmp_path / "again")
    assert "is the end of this run (step 4 of 4): nothing left to train" in stderr_of(tmp_path / "again")
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 4
    assert max_abs_diff(adapter(out / "adapter"), weights) == 0.0
    assert [c.name for c in find_checkpoints(out)] == ["checkpoint-4", "checkpoint-2"]
    assert logged_steps(out) == [1, 2, 3, 4]


# --------------------------------------------------------------------------------------------
# 9. kill -9 during the final save; SIGTERM
# --------------------------------------------------------------------------------------------
SLOW_SAVE = '''
import os, sys, time
from sage_libs.sage_finetune.trainers.lora import LoRATrainer
real = LoRATrainer.write_weights
def write_weights(self, output_dir):
    real(self, output_dir)
    open(os.environ["SAVE_MARK"], "w").close()
    time.sleep(300)  # killed here, with the adapter half-written in its temporary folder
LoRATrainer.write_weights = write_weights
from sage_libs.sage_finetune.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_kill_9_during_the_final_save_leaves_nothing_behind(tiny_model_dir, tmp_path, monkeypatch, caplog):
    out, mark = tmp_path / "out", tmp_path / "saving"
    runner = tmp_path / "runner.py"
    runner.write_text(SLOW_SAVE)
    monkeypatch.setenv("SAVE_MARK", str(mark))
    cfg = write_config(tmp_path, tiny_model_dir, training={"max_steps": 3, "save_strategy": "steps", "save_steps": 3})
    proc = start_cli(["train", cfg], tmp_path / "killed", runner=runner)
    try:
        wait_for(mark.exists, proc, tmp_path / "killed")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop(proc)
    [tmp] = out.glob(".adapter.*.tmp")
    assert (tmp / "adapter_model.safetensors").is_file() and not (out / "adapter").exists()
    # the next run on the folder removes it; resuming the finished run writes the adapter from its checkpoint
    with caplog.at_level(logging.WARNING):
        assert main(["train", str(cfg), "training.resume_from_checkpoint=true"]) == 0
    assert f"removed {tmp}, left behind by a run that was killed" in caplog.text
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_NAME).exists()
    assert max_abs_diff(adapter(out / "adapter"), adapter(out / "checkpoint-3")) == 0.0


def test_sigterm_saves_a_checkpoint_and_exits_143(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(tmp_path, tiny_model_dir, training={"max_steps": 40, "save_strategy": "no",
                                                           "lr_scheduler_type": "cosine"})
    proc = start_cli(["train", cfg], tmp_path / "log")
    term = SignalWhen(proc, lambda: len(logged_steps(out)) >= 2, signal.SIGTERM, tmp_path / "log")
    term.start()
    unbroken = tmp_path / "unbroken"
    try:
        assert main(["train", str(cfg), f"training.output_dir={unbroken}"]) == 0
        term.join(timeout=180)
        assert term.sent, term.error
        assert proc.wait(timeout=60) == 143, stderr_of(tmp_path / "log")
    finally:
        stop(proc)
    err = stderr_of(tmp_path / "log")
    assert "Traceback" not in err and "SIGTERM received: finishing this step and saving a checkpoint" in err
    [checkpoint] = find_checkpoints(out)
    step = int(checkpoint.name.split("-")[1])
    assert checkpoint_problems(checkpoint) == [] and 2 <= step < 40
    assert f"training terminated (SIGTERM) at step {step} of 40; checkpoint saved: {checkpoint}" in err
    assert f"resume with: sage-finetune train {cfg} training.resume_from_checkpoint=true" in err
    assert not (out / "adapter").exists() and not (out / LOCK_NAME).exists()
    assert main(["train", str(cfg), "training.resume_from_checkpoint=true"]) == 0
    assert max_abs_diff(adapter(out / "adapter"), adapter(unbroken / "adapter")) < 1e-6
    assert logged_steps(out) == list(range(1, 41))


def test_stale_temporaries_and_plot_names(tmp_path):
    """Unit level: what counts as a killed writer's leftover, and unique temporary plot names."""
    from sage_libs.sage_finetune.utils.plotting import plot_loss
    from sage_libs.sage_finetune.run.lock import remove_stale_temporaries

    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    leftovers = [out / ".adapter.k2j3.tmp", out / ".metrics.json.abc.tmp", out / ".adapter.old-123",
                 out / ".loss.png.x1.tmp.png", out / "checkpoint-2" / ".rng.tmp"]
    keep = [out / "notes.txt", out / ".hidden", out / "checkpoint-2" / "optimizer.pt"]
    leftovers[0].mkdir()
    for path in [*leftovers[1:], *keep]:
        path.write_text("x")
    assert sorted(remove_stale_temporaries(out)) == sorted(leftovers)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in leftovers)
    log = [{"step": i, "loss": 1.0 / i} for i in range(1, 5)]
    plot_loss(log, out / "loss.png")
    assert (out / "loss.png").is_file() and not list(out.glob(".loss.png*"))


def test_lock_is_exclusive_between_processes_and_reentrant_within_one(tmp_path):
    import sys

    from sage_libs.sage_finetune.run.lock import OutputDirBusy, run_lock

    out = tmp_path / "out"
    probe = ("import sys\nfrom sage_libs.sage_finetune.run.lock import run_lock, OutputDirBusy\n"
             "try:\n    with run_lock(sys.argv[1]): print('took it')\nexcept OutputDirBusy as e: print(e)\n")
    with run_lock(out) as took:
        assert took
        with run_lock(out) as again:
            assert not again  # re-entrant
        other = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, timeout=60)
        assert "is in use by another run (pid" in other.stdout, other
        holder = json.loads((out / LOCK_NAME).read_text())
        assert holder["pid"] == __import__("os").getpid()
    assert not (out / LOCK_NAME).exists()
    other = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "took it"
    # a holder killed with -9 leaves its file; the kernel dropped the lock, so it is taken again
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom sage_libs.sage_finetune.run.lock "
                               "import run_lock\nwith run_lock(sys.argv[1]):\n    print('in', flush=True)\n"
                               "    time.sleep(300)\n", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "in"
        with pytest.raises(OutputDirBusy):
            with run_lock(out):
                pass
        holder.kill()
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert (out / LOCK_NAME).exists()
    start = time.monotonic()
    with run_lock(out) as took:
        assert took and time.monotonic() - start < 5


def test_sigterm_before_training_stops_at_once_and_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """SIGTERM during data preparation (outside the training loop): exit 143 at once, no folder left."""
    import os

    from sage_libs.sage_finetune.trainers.base import BaseTrainer

    real = BaseTrainer.prepare_dataset

    def prepare_then_sigterm(self, data, split="train"):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, data, split)

    monkeypatch.setattr(BaseTrainer, "prepare_dataset", prepare_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    cfg = write_config(tmp_path, tiny_model_dir)
    assert main(["train", str(cfg)]) == 143
    assert "sage-finetune train: terminated (SIGTERM)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is restored


def test_sigterm_after_the_last_step_finishes_the_run_and_says_so(tiny_model_dir, tmp_path, capsys, caplog):
    """SIGTERM between the last optimizer step and the end of the loop: before, "saving a checkpoint" was
    printed and none was saved; now the run is complete, its outputs are written and it says so."""
    import os

    from transformers import TrainerCallback

    from sage_libs.sage_finetune.run_config import load_run_config, make_trainer

    class SigtermAfterLastStep(TrainerCallback):
        def on_log(self, args, state, control, **kwargs):
            if state.global_step == state.max_steps and not getattr(self, "sent", False):
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    trainer = make_trainer(load_run_config(str(write_config(tmp_path, tiny_model_dir))))
    trainer.callbacks.append(SigtermAfterLastStep())
    metrics = trainer.train()
    err = capsys.readouterr().err
    assert "SIGTERM received: after the last step: the run is complete, writing its outputs" in err
    assert "SIGTERM after the last step (4 of 4): the run is complete" in caplog.text
    assert metrics["global_step"] == 4 and (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_while_the_outputs_are_written_waits_for_them(tiny_model_dir, tmp_path, capsys, caplog):
    """SIGTERM between the end of the loop and the final save: before, exit 143 left metrics.json
    without adapter/ (a folder that looked finished); now the outputs are written first."""
    import os

    from sage_libs.sage_finetune.run_config import load_run_config, make_trainer

    before = signal.getsignal(signal.SIGTERM)
    trainer = make_trainer(load_run_config(str(write_config(tmp_path, tiny_model_dir))))
    real = trainer.write_outputs

    def write_outputs_after_sigterm(metrics):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(metrics)

    trainer.write_outputs = write_outputs_after_sigterm
    metrics = trainer.train()
    assert "SIGTERM received after the last step: writing the run's outputs first" in capsys.readouterr().err
    assert "SIGTERM after the last step (4 of 4): the run is complete and its outputs are written" in caplog.text
    out = tmp_path / "out"
    assert metrics["global_step"] == 4 and (out / "metrics.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert signal.getsignal(signal.SIGTERM) == before
