"""What many tests share: a run config written as YAML, and one torch thread for the duration of a test."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Iterator

import yaml

from .paths import EXAMPLE_DATA

# A short LoRA run of the tiny model on the shipped example data; modules pass their own changes.
TINY_LORA = {
    "method": "lora",
    "training": {"max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 5e-3, "warmup_steps": 0,
                 "logging_steps": 1, "save_strategy": "no", "disable_tqdm": True},
    "lora": {"r": 4, "target_modules": "all-linear"},
    "data": {"train_file": str(EXAMPLE_DATA / "alpaca_train.jsonl"), "max_samples": 32},
}


def apply_sections(cfg: dict, sections: dict) -> dict:
    """``cfg`` changed in place by ``sections``: a mapping updates that section, None removes it,
    anything else (a method name, a callbacks list) replaces it."""
    for key, value in sections.items():
        if value is None:
            cfg.pop(key, None)
        elif isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def write_config(tmp_path: Path, model_dir: Any, name: str = "run.yaml", *, base: dict | None = None,
                 **sections: Any) -> Path:
    """``tmp_path/name``: ``base`` (default :data:`TINY_LORA`) for the model in ``model_dir`` writing to
    ``tmp_path/out``, then ``sections``: a mapping updates that section, None removes it, anything
    else (a method name, a callbacks list) replaces it."""
    cfg = copy.deepcopy(TINY_LORA if base is None else base)
    cfg.setdefault("training", {})
    cfg["training"] = {"model_name_or_path": str(model_dir), "output_dir": str(tmp_path / "out"), **cfg["training"]}
    apply_sections(cfg, sections)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` in the block and restored after: the tiny models gain
    nothing from more on a shared 2-core machine (threads spinning against other processes made 6
    QLoRA steps take 14 s instead of 0.4 s), and one reduction order keeps two runs comparable."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
