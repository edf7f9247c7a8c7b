"""What a run writes into ``training.output_dir``, under which names, and how.

    OUTPUT_DIR/
      adapter/ or model/     the weights (:func:`weights_dir`: adapter methods write an adapter)
      merged/                the adapter merged into the base (``train --merge``)
      checkpoint-N/          the HF Trainer's checkpoints (+ run_identity.json)
      metrics.json           final metrics (:func:`write_metrics`)
      trainer_log.jsonl      one line per logging step / evaluation (callbacks.run_log)
      loss.png               the loss curve (:func:`write_outputs`)
      rewards.png            preference training: rewards, margins and accuracy (:func:`write_outputs`)
      run_config.yaml        the resolved config; itself a valid run config
      run_identity.json      which config and data wrote this folder (.identity)
      train.log              INFO-level log of every library (:func:`log_to_file`)
      previous-runs/         earlier runs' files, moved aside by a fresh run (.checkpoints)

Every file is written atomically (utils.io): a killed run never leaves a half-written one.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

from ..utils.io import atomic_dir, atomic_write_json, atomic_write_text, follow_umask, tree_state
from ..utils.processes import is_main_process

__all__ = ["ADAPTER", "MODEL", "MERGED", "METRICS", "TRAINER_LOG", "LOSS_PLOT", "REWARDS_PLOT", "RUN_CONFIG", "RUN_IDENTITY",
           "TRAIN_LOG", "RUN_OUTPUTS", "weights_dir", "written_files", "save_weights", "write_metrics", "write_run_config",
           "write_outputs", "log_to_file", "stop_log_file", "trim_log", "checkpoint_step", "tokens_seen", "perplexity"]

ADAPTER, MODEL, MERGED = "adapter", "model", "merged"
METRICS = "metrics.json"
TRAINER_LOG = "trainer_log.jsonl"
LOSS_PLOT = "loss.png"
REWARDS_PLOT = "rewards.png"
RUN_CONFIG = "run_config.yaml"
RUN_IDENTITY = "run_identity.json"
TRAIN_LOG = "train.log"
# everything a run writes besides checkpoint-N (moved aside together by a fresh run in the same folder)
RUN_OUTPUTS = (ADAPTER, MODEL, MERGED, METRICS, TRAINER_LOG, LOSS_PLOT, REWARDS_PLOT, RUN_CONFIG, RUN_IDENTITY,
               TRAIN_LOG)


def weights_dir(output_dir: str | os.PathLike, uses_lora: bool) -> Path:
    """Where the trained weights go: ``adapter/`` for adapter methods, ``model/`` otherwise."""
    return Path(output_dir) / (ADAPTER if uses_lora else MODEL)


def written_files(output_dir: str | os.PathLike, uses_lora: bool, merged: bool = False) -> list[Path]:
    """The files a finished ``train`` has written, in the order the CLI lists them."""
    out = Path(output_dir)
    files = [weights_dir(out, uses_lora), out / METRICS, out / TRAINER_LOG, out / LOSS_PLOT]
    files += [out / REWARDS_PLOT] if (out / REWARDS_PLOT).is_file() else []  # preference runs only
    files += [out / RUN_CONFIG, out / TRAIN_LOG]
    return files + ([out / MERGED] if merged else [])


def save_weights(output_dir: str | os.PathLike, write_weights: Callable[[str], None], tokenizer: Any,
                 hf_trainer: Any = None) -> str:
    """``write_weights(folder)`` and the tokenizer into ``output_dir``, atomically, by the main
    process. Under DeepSpeed ZeRO-3 or FSDP the weights are sharded across processes: every process
    calls this, the engine gathers them and its main process writes (in place, not atomically)."""
    if hf_trainer is not None and (hf_trainer.is_deepspeed_enabled or hf_trainer.is_fsdp_enabled):
        before = tree_state(output_dir) if is_main_process() else {}
        hf_trainer.save_model(str(output_dir))
        if is_main_process():
            tokenizer.save_pretrained(str(output_dir))
            follow_umask(output_dir, written_since=before)
        return str(output_dir)
    if is_main_process():
        with atomic_dir(output_dir) as tmp:
            write_weights(tmp)
            tokenizer.save_pretrained(tmp)
    return str(output_dir)


def write_metrics(output_dir: str | os.PathLike, metrics: dict[str, Any]) -> None:
    atomic_write_json(Path(output_dir) / METRICS, metrics)


def write_run_config(output_dir: str | os.PathLike, resolved: dict[str, Any]) -> None:
    import yaml

    atomic_write_text(Path(output_dir) / RUN_CONFIG, yaml.safe_dump(resolved, sort_keys=False))


def write_outputs(output_dir: str | os.PathLike, metrics: dict[str, Any], *, title: str) -> None:
    """metrics.json, loss.png and, when the log has preference rewards, rewards.png (from the run's
    trainer_log.jsonl)."""
    from ..callbacks.run_log import read_log
    from ..utils.plotting import plot_loss, plot_rewards

    out = Path(output_dir)
    write_metrics(out, metrics)
    log = list(read_log(out / TRAINER_LOG))
    plot_loss(log, out / LOSS_PLOT, title=title)
    plot_rewards(log, out / REWARDS_PLOT, title=title)


class _RunLogFile(logging.FileHandler):
    """OUTPUT_DIR/train.log: INFO and above from every library (the console shows warnings only)."""


def stop_log_file() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _RunLogFile)]:
        root.removeHandler(handler)
        handler.close()


def log_to_file(output_dir: str | os.PathLike, append: bool = False) -> None:
    """Send log records to OUTPUT_DIR/train.log until :func:`stop_log_file` (``append``: a resumed run
    continues the log of the run it resumes)."""
    ours = logging.getLogger("sage_libs.sage_finetune")
    stop_log_file()
    handler = _RunLogFile(Path(output_dir) / TRAIN_LOG, mode="a" if append else "w", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    from ..utils.noise import EarlyRecords

    EarlyRecords.drain_into(handler)  # what the command logged before the folder was this run's
    logging.getLogger().addHandler(handler)
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)  # our INFO records reach the file; the console handler still filters them


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The optimizer step a checkpoint folder was saved at (None: unreadable)."""
    try:
        return int(json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def tokens_seen(checkpoint: str | os.PathLike) -> int:
    """The tokens a run had trained on when it saved ``checkpoint`` (0: unknown)."""
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
        return int(state.get("num_input_tokens_seen") or 0)
    except (OSError, ValueError, TypeError):
        return 0


def trim_log(output_dir: str | os.PathLike, step: int | None) -> None:
    """A resumed run appends to trainer_log.jsonl; drop the entries the interrupted run logged after
    the checkpoint it resumes from, which the resumed run logs again."""
    path = Path(output_dir) / TRAINER_LOG
    if step is None or not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            entry_step = json.loads(line).get("step", 0)
        except ValueError:
            continue  # a line cut short by the kill
        if isinstance(entry_step, int) and entry_step <= step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")
