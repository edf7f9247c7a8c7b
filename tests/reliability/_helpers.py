"""Shared by the reliability tests: run configs, CLI subprocesses, output checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable


from .. import helpers
from ..paths import EXAMPLE_DATA  # noqa: F401 (used by the reliability tests)

# Pickle-format files the HF Trainer puts in checkpoint-N folders: optimizer, scheduler, AMP scaler and
# RNG state (loaded back with torch.load(weights_only=True)) and the pickled TrainingArguments (never
# loaded). Training state, not model weights: accepted, and only inside checkpoint-N folders.
TRAINING_STATE = {"optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "training_args.bin"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


# a small LoRA run on the chat example data, no dropout: two runs of it compare number for number
RELIABILITY_RUN = {
    "method": "lora",
    "training": {"max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 5e-3, "warmup_steps": 0,
                 "max_seq_length": 64, "logging_steps": 1, "save_strategy": "no", "disable_tqdm": True,
                 "weight_decay": 0.0},
    "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "data": {"train_file": str(EXAMPLE_DATA / "chat_train.jsonl"), "max_samples": 8},
}


def write_config(tmp_path: Path, model_dir: Path, name: str = "run.yaml", **sections) -> Path:
    """:data:`RELIABILITY_RUN`; ``sections`` update (or, with None, remove) sections (helpers.write_config)."""
    return helpers.write_config(tmp_path, model_dir, name, base=RELIABILITY_RUN, **sections)


def start_cli(args: list[str], log_dir: Path, runner: Path | None = None) -> subprocess.Popen:
    """``python -m sage_libs.sage_finetune.cli ARGS`` (or ``python RUNNER ARGS``) in its own session
    (so that a test can signal it alone), one torch thread, output to log_dir/stdout.txt and stderr.txt."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "stdout.txt").open("wb") as out, (log_dir / "stderr.txt").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, *([str(runner)] if runner else ["-m", "sage_libs.sage_finetune.cli"]), *map(str, args)],
            stdout=out, stderr=err,
            env=env, start_new_session=True,
            # a shell without job control starts background jobs with SIGINT ignored; Python would keep it so
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, log_dir: Path, timeout: float = 120) -> None:
    """Poll ``condition`` until it holds; fail with the process's stderr if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) first:\n{stderr_of(log_dir)[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s:\n{stderr_of(log_dir)[-3000:]}")
        time.sleep(0.01)


class SignalWhen(threading.Thread):
    """Sends ``signum`` to ``proc`` as soon as ``condition`` holds, from a background thread, so that
    the test can do other work meanwhile; ``sent`` tells whether it did, ``error`` why not."""

    def __init__(self, proc: subprocess.Popen, condition: Callable[[], bool], signum: int, log_dir: Path,
                 timeout: float = 180) -> None:
        super().__init__(daemon=True)
        self.proc, self.condition, self.signum, self.log_dir, self.timeout = proc, condition, signum, log_dir, timeout
        self.sent, self.error = False, ""

    def run(self) -> None:
        try:
            wait_for(self.condition, self.proc, self.log_dir, self.timeout)
            self.proc.send_signal(self.signum)
            self.sent = True
        except AssertionError as exc:
            self.error = str(exc)


def stop(proc: subprocess.Popen) -> None:
    """Make sure the subprocess (and anything it started) is gone."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def stderr_of(log_dir: Path) -> str:
    return (log_dir / "stderr.txt").read_text(encoding="utf-8", errors="replace")


def logged_steps(out: Path) -> list[int]:
    path = out / "trainer_log.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "loss" in entry:
            steps.append(entry["step"])
    return steps


def assert_weights_are_safetensors(root: Path) -> None:
    """No pickled weights anywhere under ``root``: every weight file is .safetensors, and the only
    pickle-format files are the HF Trainer's training state inside checkpoint-N folders."""
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.name.startswith(("model", "adapter_model", "pytorch_model")) and not path.name.endswith(
                (".safetensors", ".safetensors.index.json")):
            raise AssertionError(f"weights not in safetensors: {path}")
        if path.name.endswith(PICKLE_SUFFIXES):
            in_checkpoint = path.parent.name.startswith("checkpoint-")
            state = path.name in TRAINING_STATE or (path.name.startswith("rng_state") and path.suffix == ".pth")
            assert in_checkpoint and state, f"unexpected pickle file: {path}"
