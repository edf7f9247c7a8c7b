"""Which run a checkpoint belongs to: a fingerprint of everything that shapes the training trajectory.

An output folder belongs to one run. At its start a run writes ``run_identity.json`` into
``output_dir`` and, before every checkpoint's files, into ``checkpoint-N/`` as well, so that a
checkpoint can be attributed to the config that wrote it. ``resume_from_checkpoint: true`` resumes
only a checkpoint of the same identity; one written by another config is never continued silently.

The fingerprint covers the method, the model (its name or path, and for a local folder its
``config.json`` and the sizes of its weight files; for a GGUF file its content), the data (every
option that changes what is trained on, and the content of the data files or in-memory records), the LoRA, quantization and
other method settings, and the training hyper-parameters (learning rate, schedule, steps, batch
size, seed, ...; the batch as the global number of samples per optimizer step, however it is split
over processes and accumulation). It leaves out what does not change the trajectory: where and how often outputs
are written and logged (``output_dir``, ``logging_steps``, ``save_*``, ``report_to``, ``run_name``,
evaluation settings), ``resume_from_checkpoint`` itself, and execution details (``use_cpu``,
``dataloader_num_workers``, ``attn_implementation``, ``selective_logits``, ``chunked_lm_loss``, ``malloc_tuning``, ...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..config import DataConfig, TrainingConfig
from ..utils.processes import world_size
from . import files as run_files

__all__ = ["IDENTITY_FILE", "RunIdentity", "read_identity", "write_identity", "identity_differences",
           "data_fingerprint", "model_fingerprint", "write_checkpoint_identity"]

_log = logging.getLogger("sage_libs.sage_finetune.trainers.base")

IDENTITY_FILE = run_files.RUN_IDENTITY

# The options that do not change what is trained (outputs, logging, execution details): each says so
# in its own metadata (``_opt(..., trajectory=False)`` in config.py).
def _not_trajectory(cls: type) -> frozenset[str]:
    import dataclasses

    return frozenset(f.name for f in dataclasses.fields(cls) if not f.metadata.get("trajectory", True))


_TRAINING_EXCLUDED = _not_trajectory(TrainingConfig)
_DATA_EXCLUDED = _not_trajectory(DataConfig)
_TOP_EXCLUDED = frozenset(("version", "callbacks"))

_FULL_HASH_LIMIT = 1 << 30  # data files up to 1 GiB are hashed whole; larger ones by size and samples


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:  # 64 evenly spaced 1 MiB samples and the size
            h.update(str(size).encode())
            for k in range(64):
                fh.seek(k * (size - (1 << 20)) // 63)
                h.update(fh.read(1 << 20))
    return h.hexdigest()


def _path_digest(path: str) -> str | None:
    p = Path(path)
    if p.is_file():
        return _file_digest(p)
    if p.is_dir():  # a saved dataset: its files' names and contents
        h = hashlib.sha256()
        for file in sorted(f for f in p.rglob("*") if f.is_file()):
            h.update(str(file.relative_to(p)).encode())
            h.update(_file_digest(file).encode())
        return h.hexdigest()
    return None  # a hub id: its name (and split) stand for it


def data_fingerprint(data: Any) -> Any:
    """A JSON-able description of a train() data argument: file contents for paths, a hash of the
    records for in-memory data (``"unhashable"`` when they cannot be serialised)."""
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        digest = _path_digest(path)
        return {"path": os.path.abspath(path) if digest else path, "sha256": digest}
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, os.PathLike)) for d in data):
        return [data_fingerprint(d) for d in data]
    if isinstance(data, list) and data and all(isinstance(d, list) for d in data):  # MultiSource
        return [data_fingerprint(d) for d in data]
    fingerprint = getattr(data, "_fingerprint", None)  # datasets.Dataset
    if isinstance(fingerprint, str):
        return {"dataset": fingerprint}
    from ..data.cache import records_fingerprint

    try:
        digest = records_fingerprint(data)
    except Exception:  # noqa: BLE001 - an exotic container: it cannot be told apart
        digest = None
    return {"records": digest or "unhashable"}


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "merges.txt")


def _weights_digest(path: Path, samples: int = 64, block: int = 1 << 16) -> str:
    """A fingerprint of a weight file's content: files up to 256 MiB hashed whole; larger ones by
    their size, a safetensors file's header (tensor names, dtypes, shapes, offsets) and ``samples``
    evenly spaced 64 KiB blocks (4 MiB read however large the file; retrained or replaced weights
    change every block)."""
    size = path.stat().st_size
    if size <= 256 << 20:
        return _file_digest(path)
    h = hashlib.sha256()
    h.update(str(size).encode())
    with path.open("rb") as fh:
        if path.suffix == ".safetensors":
            header = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(min(header, 100 << 20)))
        for k in range(samples):
            fh.seek(k * (size - block) // (samples - 1))
            h.update(fh.read(block))
    return h.hexdigest()


def model_fingerprint(name_or_path: str, gguf_file: str | None = None) -> dict[str, Any]:
    """The model of a run: a GGUF file by its content (the sha256 the conversion cache is keyed by);
    a local folder by its config.json, its tokenizer files (the chat template among them) and its
    weights' content (:func:`_weights_digest`); a hub id by its name."""
    from ..errors import ConfigError
    from ..models.files import gguf_source

    try:
        gguf = gguf_source(name_or_path, gguf_file)
    except ConfigError:  # a missing file is the preflight's to report; the name stands for it
        gguf = None
    if gguf is not None:
        from ..models.gguf import file_digest

        return {"path": str(gguf.resolve()), "sha256": file_digest(gguf)}
    p = Path(name_or_path).expanduser()
    if not p.is_dir():
        return {"name": name_or_path}
    out: dict[str, Any] = {"path": str(p.resolve())}
    config = p / "config.json"
    if config.is_file():
        out["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    out["tokenizer"] = {name: hashlib.sha256((p / name).read_bytes()).hexdigest() for name in _TOKENIZER_FILES
                        if (p / name).is_file()}
    out["weights"] = {f.name: _weights_digest(f) for f in sorted(p.iterdir())
                      if f.is_file() and f.name.endswith((".safetensors", ".bin"))}
    return out


class RunIdentity:
    """The fields of a run that shape its trajectory, and their fingerprint."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = json.loads(json.dumps(fields, sort_keys=True, default=str))  # plain JSON values
        canonical = json.dumps(self.fields, sort_keys=True, separators=(",", ":"))
        self.fingerprint = hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_resolved_config(cls, resolved: dict[str, Any], train_data: Any) -> "RunIdentity":
        fields: dict[str, Any] = {}
        for key, value in resolved.items():
            if key in _TOP_EXCLUDED:
                continue
            if key == "training":
                value = {k: v for k, v in value.items() if k not in _TRAINING_EXCLUDED}
                value["model_name_or_path"] = model_fingerprint(value["model_name_or_path"], value.get("gguf_file"))
                # How a global batch is split (processes x per-device batch x accumulation) does not
                # change which samples a step trains on (data/sampling.py): a run interrupted under 2
                # processes resumes under 1 with twice the accumulation.
                value["global_train_batch_size"] = (value.pop("per_device_train_batch_size", 1) or 1) \
                    * (value.pop("gradient_accumulation_steps", 1) or 1) * world_size()
            elif key == "data":
                value = {k: v for k, v in value.items() if k not in _DATA_EXCLUDED and k != "train_file"}
                for option in ("chat_template", "tools_file"):
                    if value.get(option) and os.path.isfile(value[option]):
                        value[option] = {"file": value[option], "sha256": _file_digest(Path(value[option]))}
                spec = value.get("formatting_func")
                if spec and os.path.isfile(spec.rpartition(":")[0]):
                    value["formatting_func"] = {"spec": spec, "sha256": _file_digest(Path(spec.rpartition(":")[0]))}
            fields[key] = value
        fields["train_data"] = data_fingerprint(train_data)
        return cls(fields)

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "fields": self.fields}


def read_identity(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``run_identity.json`` of an output or checkpoint folder (None: absent or unreadable)."""
    try:
        data = json.loads((Path(folder) / IDENTITY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("fingerprint"), str) else None


def write_identity(folder: str | os.PathLike, identity: RunIdentity) -> None:
    from ..utils.io import atomic_write_json

    atomic_write_json(Path(folder) / IDENTITY_FILE, identity.to_json())


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value and not {"sha256", "path"} >= set(value) \
            and not {"sha256", "file"} >= set(value) and not {"sha256", "spec"} >= set(value):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _short(value: Any) -> str:
    if isinstance(value, dict) and "sha256" in value:
        return f"{value.get('path') or value.get('file') or value.get('spec') or ''} (sha256 {str(value['sha256'])[:8]})"
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def identity_differences(old: dict[str, Any] | None, new: RunIdentity, limit: int = 4) -> str:
    """``training.learning_rate 0.001 -> 0.005, lora.r 8 -> 4`` (what changed between two identities)."""
    if not old or not isinstance(old.get("fields"), dict):
        return "written by an earlier version, without a record of its config"
    a, b = _flatten(old["fields"]), _flatten(new.fields)
    names = {"train_data": "the training data", "training.model_name_or_path": "the model"}
    global_batch = "training.global_train_batch_size"  # not an option: what the identity keys (see above)
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    parts = []
    model_parts = {"tokenizer": "the model's tokenizer", "weights": "the model's weights"}
    for key in changed[:limit]:
        label = next((v for k, v in names.items() if key == k or key.startswith(k + ".")), None)
        part, _, file = key.removeprefix("training.model_name_or_path.").partition(".")
        if label == "the model" and part in model_parts and file:
            label = f"{model_parts[part]} ({file})"
        if key == global_batch:
            parts.append(f"the global batch (per_device_train_batch_size x gradient_accumulation_steps x processes) "
                         f"{_short(a.get(key))} -> {_short(b.get(key))}")
            continue
        parts.append(f"{label} changed" if label else f"{key} {_short(a.get(key))} -> {_short(b.get(key))}")
    if len(changed) > limit:
        parts.append(f"and {len(changed) - limit} more")
    return ", ".join(dict.fromkeys(parts)) or "the same fields, another fingerprint"


def write_checkpoint_identity(trainer: Any, path: str) -> None:
    """Called by the HF Trainer core before it writes ``checkpoint-N``: the run's identity goes in
    first, so that every checkpoint can be attributed to the config that wrote it."""
    from ..utils.processes import is_main_process

    if getattr(trainer, "_identity", None) is not None and is_main_process():
        os.makedirs(path, exist_ok=True)
        write_identity(path, trainer._identity)
