"""A full disk: one message naming the file system, the last complete checkpoint and how to resume,
whichever writer hit it; nothing half-written left behind; the resumed run loses nothing.

The end-to-end test fills a real (small) tmpfs, mounted in a private user+mount namespace
(``unshare``); it is skipped where such namespaces are not allowed."""

from __future__ import annotations

import errno
import json
import logging
import shlex
import shutil
import subprocess
import sys

import pytest

from ._helpers import logged_steps, write_config

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune.cli import main  # noqa: E402
from sage_libs.sage_finetune.run.checkpoints import checkpoint_problems, find_checkpoints  # noqa: E402
from sage_libs.sage_finetune.utils.io import disk_full_message, is_out_of_space  # noqa: E402


def _namespaces_work(tmp_path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                               f"mount -t tmpfs -o size=64k tmpfs {probe}"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def adapter(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_disk_full_during_training_then_resume_loses_nothing(tiny_model_dir, tmp_path):
    if not _namespaces_work(tmp_path):
        pytest.skip("user and mount namespaces (unshare) are not available here")
    disk, result = tmp_path / "disk", tmp_path / "result"
    disk.mkdir()
    cfg = write_config(tmp_path, tiny_model_dir, training={
        "max_steps": 12, "save_strategy": "steps", "save_steps": 1, "save_total_limit": None,
        "output_dir": str(disk / "out"), "lr_scheduler_type": "cosine"}, lora={"lora_dropout": 0.1})
    cli = shlex.join([sys.executable, "-m", "sage_libs.sage_finetune.cli", "train", str(cfg)])
    # each checkpoint of the tiny run takes ~110 KiB: ~5 fit into 640 KiB
    script = f"""
        mount -t tmpfs -o size=640k tmpfs {disk}
        OMP_NUM_THREADS=1 {cli} 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.rc
        cp -r {disk}/out {tmp_path}/after-full
        mount -o remount,size=8m {disk}
        OMP_NUM_THREADS=1 {cli} training.resume_from_checkpoint=true 2> {tmp_path}/resume.err
        echo $? > {tmp_path}/resume.rc
        cp -r {disk}/out {result}
    """
    subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], timeout=600, check=True)
    err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "1", err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    after = tmp_path / "after-full"
    last = find_checkpoints(after)[0]  # newest: complete (the half-written one was removed)
    assert checkpoint_problems(last) == []
    assert (f"sage-finetune train: error: no space left on {disk} (the file system of {disk / 'out'}"
            in errors[0]), errors[0]
    assert f"(removed: it was incomplete); the last complete checkpoint is {disk / 'out' / last.name}; " \
           "free some space, then resume with training.resume_from_checkpoint=true" in errors[0]
    assert f"resume with: sage-finetune train {cfg} training.resume_from_checkpoint=true" in err
    assert not list(after.glob(".*tmp*")) and not (after / "adapter").exists()

    resume_err = (tmp_path / "resume.err").read_text()
    assert (tmp_path / "resume.rc").read_text().strip() == "0", resume_err
    assert json.loads((result / "metrics.json").read_text())["global_step"] == 12
    assert logged_steps(result) == list(range(1, 13))
    unbroken = tmp_path / "unbroken"
    assert main(["train", str(cfg), f"training.output_dir={unbroken}"]) == 0
    diff = max((a - b).abs().max().item() for a, b in zip(adapter(result / "adapter").values(),
                                                          adapter(unbroken / "adapter").values()))
    assert diff < 1e-6, diff


def test_disk_full_during_the_final_save(tiny_model_dir, tmp_path, capsys, monkeypatch, caplog):
    from sage_libs.sage_finetune.trainers.lora import LoRATrainer

    out = tmp_path / "out"
    real = LoRATrainer.write_weights

    def full(self, output_dir):
        real(self, output_dir)
        raise OSError(errno.ENOSPC, "No space left on device", str(output_dir) + "/adapter_model.safetensors")

    monkeypatch.setattr(LoRATrainer, "write_weights", full)
    cfg = write_config(tmp_path, tiny_model_dir, training={"max_steps": 2, "save_strategy": "steps", "save_steps": 2})
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "error: no space left on " in err and "while writing " in err and "adapter_model.safetensors" in err
    assert f"the last complete checkpoint is {out / 'checkpoint-2'}" in err
    assert not list(out.glob(".adapter*")) and not (out / "adapter").exists()
    monkeypatch.setattr(LoRATrainer, "write_weights", real)
    with caplog.at_level(logging.WARNING):
        assert main(["train", str(cfg), "training.resume_from_checkpoint=true"]) == 0  # writes it from checkpoint-2
    assert f"resuming from {out / 'checkpoint-2'}" in caplog.text
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("exc, free, full", [
    (OSError(errno.ENOSPC, "No space left on device"), 10 << 30, True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), 10 << 30, True),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 980"), 0, True),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 980"), 10 << 30, False),
    (Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left "
               "on device\" })"), 10 << 30, True),
    (OSError(errno.EACCES, "Permission denied"), 0, False),
    (ValueError("unrelated"), 0, False),
])
def test_what_counts_as_a_full_disk(exc, free, full, tmp_path, monkeypatch):
    from sage_libs.sage_finetune.utils import io

    monkeypatch.setattr(io, "free_bytes", lambda path: free)
    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = exc
    assert is_out_of_space(exc, tmp_path) is full
    assert is_out_of_space(wrapped, tmp_path) is full
    message = disk_full_message(exc, tmp_path / "out")
    assert (message is not None) is full
    if full:
        assert message.startswith("no space left on /")
