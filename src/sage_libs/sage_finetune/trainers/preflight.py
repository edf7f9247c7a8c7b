"""Everything that can be checked before the data is read and the model is loaded: paths, devices,
option combinations. A mistake then costs seconds, not a model load, and the run has written
nothing yet (:func:`check_run_inputs`, called first by ``train``)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["check_run_inputs", "check_output_dir", "check_data_file", "local_paths", "warn_about_schedule"]

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def check_run_inputs(trainer: Any, train_data: Any = None, eval_data: Any = None) -> None:
    """The checks of one run of ``trainer`` (a :class:`..base.BaseTrainer`) on this data."""
    from ..data.templates import check_chat_template
    from ..models.files import check_model_dir, gguf_source, max_positions, resolve_model
    from .hf_args import check_optimizer_name

    tc, dc = trainer.training_config, trainer.data_config
    check_output_dir(tc.output_dir)
    check_model_dir(tc.model_name_or_path, allow_pickle_weights=tc.allow_pickle_weights, gguf_file=tc.gguf_file)
    # a GGUF base: its config and tokenizer, converted once (seconds; the weights wait for the model load)
    model_dir = resolve_model(tc.model_name_or_path, tc.gguf_file, weights=False)
    gguf = gguf_source(tc.model_name_or_path, tc.gguf_file)
    limit, rope_scaled = max_positions(model_dir)
    if limit is not None and not rope_scaled and tc.max_seq_length > limit:
        what = "packed rows (data.packing)" if dc.packing else "samples"
        where = f"the context length of {gguf}" if gguf is not None else f"in {tc.model_name_or_path}/config.json"
        raise ConfigError(
            f"training.max_seq_length: {tc.max_seq_length} is more than the model's max_position_embeddings "
            f"({limit}, {where}); {what} that long would use positions the model "
            f"never learned; set max_seq_length to at most {limit}")
    for option, data in (("data.train_file", train_data), ("data.eval_file", eval_data)):
        check_data_argument("train(): " + ("train_dataset" if "train" in option else "eval_dataset"), data)
        for path in local_paths(data):
            check_data_file(option, path)
    template = dc.chat_template
    # a bare name may name one of the tokenizer's templates (checked when the tokenizer loads)
    looks_like_path = template and ("/" in template or os.sep in template or Path(template).suffix)
    if looks_like_path and "{" not in template and not os.path.isfile(template):
        raise ConfigError(f"data.chat_template: {template}: no such file; expected a Jinja template file or "
                          "the template text itself")
    check_chat_template(template)
    if trainer.lora_config is not None and trainer.uses_lora:
        check_lora_rank(trainer.lora_config.r, model_dir)
    if dc.tools_file and not os.path.isfile(dc.tools_file):
        raise ConfigError(f"data.tools_file: {dc.tools_file}: no such file; expected a JSON list of tool schemas")
    if tc.deepspeed:
        import importlib.util

        if isinstance(tc.deepspeed, str) and not os.path.isfile(tc.deepspeed):
            raise ConfigError(f"training.deepspeed: {tc.deepspeed}: no such file; expected a DeepSpeed JSON config")
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("training.deepspeed is set but the deepspeed package is not installed; "
                              "pip install deepspeed (the [deepspeed] extra)")
    check_optimizer_name(tc)
    # precision on this machine and HF's own checks of option combinations, now rather than after the model load
    trainer.training_arguments(eval_data is not None or dc.eval_split_ratio > 0)


def local_paths(data: Any) -> list[str]:
    """The file paths among a train()/evaluate() data argument (records and datasets are skipped)."""
    if isinstance(data, (str, os.PathLike)):
        return [os.fspath(data)]
    from ..data.sources import is_source_list

    if is_source_list(data):
        return [os.fspath(d["path"] if isinstance(d, dict) else d) for d in data]
    return []


def check_data_file(option: str, path: str) -> None:
    """A path with a data-file suffix must be a readable file (other strings may be hub ids or
    saved-dataset folders, which their loader checks)."""
    from ..models.files import looks_like_local_path

    p = Path(path)
    if p.suffix not in DATA_SUFFIXES:
        if not p.exists() and looks_like_local_path(path):
            raise ConfigError(f"{option}: {p}: no such file or directory")
        return
    if p.is_dir():
        raise ConfigError(f"{option}: {p} is a directory; expected a {', '.join(DATA_SUFFIXES)} file "
                          "(or a folder written by Dataset.save_to_disk, without a file suffix)")
    if not p.exists():
        raise ConfigError(f"{option}: {p}: no such file")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{option}: {p}: not readable (permission denied)")


def check_output_dir(path: str) -> None:
    from ..run.checkpoints import PREVIOUS_RUNS

    p = Path(path).expanduser()
    for link in (p, *p.parents):
        if link.is_symlink() and not link.exists():
            raise ConfigError(f"training.output_dir: {link} is a symbolic link to {os.readlink(link)}, which does not "
                              "exist (or loops); create that folder, or point output_dir elsewhere")
    aside = p / PREVIOUS_RUNS
    if (aside.exists() or aside.is_symlink()) and not aside.is_dir():
        raise ConfigError(f"training.output_dir: {aside} is not a folder; a fresh run moves an earlier run's files "
                          f"into {PREVIOUS_RUNS}/ there: rename or remove that file")
    if p.exists() and not p.is_dir():
        raise ConfigError(f"training.output_dir: {p} is an existing file; expected a directory (an existing one, "
                          "or a path to create)")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"training.output_dir: cannot create {p}: {parent} is a file, not a directory")
            target = p if p.exists() else parent
            if not os.access(target, os.W_OK | os.X_OK):
                raise ConfigError(f"training.output_dir: {target} is not writable")
            return


# HF schedules that have no warm-up phase: warmup_steps changes nothing with them
SCHEDULES_WITHOUT_WARMUP = ("constant", "reduce_lr_on_plateau")


def warn_about_schedule(tc: Any, n_samples: int) -> None:
    """A warm-up as long as the whole run is almost always a mistake (warmup_steps meant as a ratio,
    or SAGE's 500 in a short run); schedules without a warm-up phase are left alone."""
    if tc.lr_scheduler_type in SCHEDULES_WITHOUT_WARMUP:
        return
    per_step = tc.per_device_train_batch_size * tc.gradient_accumulation_steps
    steps = tc.max_steps if tc.max_steps > 0 else math.ceil(math.ceil(n_samples / per_step) * tc.num_train_epochs)
    if isinstance(tc.warmup_steps, int) and tc.warmup_steps >= steps:
        logger.warning("warmup_steps=%d >= the %d optimizer steps of this run: the learning rate never "
                       "reaches its peak; use fewer steps or a ratio such as 0.03", tc.warmup_steps, steps)


def check_data_argument(option: str, data: Any) -> None:
    """train()/evaluate() data must be a path, a list of paths, records or a dataset."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return
    if isinstance(data, (bytes, dict, int, float, bool)) or not (
            hasattr(data, "__iter__") or hasattr(data, "__getitem__")):
        raise ConfigError(f"{option}: expected a data file path, a list of paths, a list of records (dicts) or a "
                          f"datasets.Dataset; got {type(data).__name__}"
                          + (" (a single record: wrap it in a list)" if isinstance(data, dict) else ""))


def check_lora_rank(r: int, model_name_or_path: str) -> None:
    """``lora.r`` above the model's width (``hidden_size`` in its config.json) adds no capacity: every
    adapted layer has the width on one side, so its update's rank cannot exceed it; it only costs
    memory (r = 1,000,000 on a 64-wide model asks for gigabytes)."""
    config = Path(model_name_or_path).expanduser() / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    width = data.get("hidden_size") or data.get("text_config", {}).get("hidden_size") or data.get("d_model")
    if isinstance(width, int) and r > width:
        raise ConfigError(f"lora.r: {r} is more than the model's hidden_size ({width}, in {config}); the update of "
                          f"a layer of width {width} has rank at most {width}, so a higher rank adds only memory; use "
                          f"at most {width} (8 to 64 is typical)")
