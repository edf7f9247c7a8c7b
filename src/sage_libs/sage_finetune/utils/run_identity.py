"""Which run a checkpoint belongs to: a fingerprint of everything that shapes the training trajectory.

An output folder belongs to one run. At its start a run writes ``run_identity.json`` into
``output_dir`` and, before every checkpoint's files, into ``checkpoint-N/`` as well, so that a
checkpoint can be attributed to the config that wrote it. ``resume_from_checkpoint: true`` resumes
only a checkpoint of the same identity; one written by another config is never continued silently.

The fingerprint covers the method, the model (its name or path, and for a local folder its
``config.json`` and the sizes of its weight files), the data (every option that changes what is
trained on, and the content of the data files or in-memory records), the LoRA, quantization and
other method settings, and the training hyper-parameters (learning rate, schedule, steps, batch
size, seed, ...; the batch as the global number of samples per optimizer step, however it is split
over processes and accumulation). It leaves out what does not change the trajectory: where and how often outputs
are written and logged (``output_dir``, ``logging_steps``, ``save_*``, ``report_to``, ``run_name``,
evaluation settings), ``resume_from_checkpoint`` itself, and execution details (``use_cpu``,
``dataloader_num_workers``, ``attn_implementation``, ``selective_logits``, ``chunked_lm_loss``, ``malloc_tuning``, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from .. import run_files
from .processes import world_size

__all__ = ["IDENTITY_FILE", "resolve_resume", "disk_full_guard", "RunIdentity", "read_identity", "write_identity", "identity_differences",
           "data_fingerprint", "checkpoint_shape_problems", "check_checkpoint_fits", "choose_checkpoint",
           "last_own_checkpoint", "warn_if_written_by_another", "disk_full_details"]

_log = logging.getLogger("sage_libs.sage_finetune.trainers.base")

IDENTITY_FILE = run_files.RUN_IDENTITY

# TrainingConfig fields that do not change what is trained (outputs, logging, execution details).
_TRAINING_EXCLUDED = frozenset((
    "output_dir", "resume_from_checkpoint", "logging_steps", "save_strategy", "save_steps", "save_total_limit",
    "report_to", "run_name", "disable_tqdm", "eval_strategy", "eval_steps", "eval_on_start",
    "per_device_eval_batch_size", "dataloader_num_workers", "use_cpu", "attn_implementation",
    "selective_logits", "chunked_lm_loss", "malloc_tuning", "compile_layers", "trust_remote_code", "allow_pickle_weights", "gradient_checkpointing",
    "deepspeed", "fsdp", "fsdp_config"))
_DATA_EXCLUDED = frozenset(("eval_file", "cache", "cache_dir", "loader"))
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


def model_fingerprint(name_or_path: str) -> dict[str, Any]:
    p = Path(name_or_path).expanduser()
    if not p.is_dir():
        return {"name": name_or_path}
    out: dict[str, Any] = {"path": str(p.resolve())}
    config = p / "config.json"
    if config.is_file():
        out["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    out["weights"] = {f.name: f.stat().st_size for f in sorted(p.iterdir())
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
                value["model_name_or_path"] = model_fingerprint(value["model_name_or_path"])
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
    from .io import atomic_write_json

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
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    parts = []
    for key in changed[:limit]:
        label = next((v for k, v in names.items() if key == k or key.startswith(k + ".")), None)
        parts.append(f"{label} changed" if label else f"{key} {_short(a.get(key))} -> {_short(b.get(key))}")
    if len(changed) > limit:
        parts.append(f"and {len(changed) - limit} more")
    return ", ".join(dict.fromkeys(parts)) or "the same fields, another fingerprint"


def _written_by(checkpoint: Path) -> dict[str, Any] | None:
    """The identity of the run that wrote ``checkpoint``: its own record, else its output folder's."""
    return read_identity(checkpoint) or read_identity(checkpoint.parent)


def choose_checkpoint(output_dir: str | os.PathLike, identity: RunIdentity, *, plain: bool = True) -> Path:
    """``resume_from_checkpoint: true``: the newest complete checkpoint of ``output_dir`` written by a
    run of this identity. Incomplete ones and another config's are passed over with a warning; a
    ConfigError (exit 2) when none is left, naming what differs."""
    from ..errors import ConfigError
    from .checkpoint import checkpoint_problems, find_checkpoints

    log = _log
    incomplete: list[tuple[Path, list[str]]] = []
    foreign: list[tuple[Path, dict[str, Any] | None]] = []
    for path in find_checkpoints(output_dir):
        problems = checkpoint_problems(path, training_state=plain, weights=plain)
        if problems:
            incomplete.append((path, problems))
            log.warning("not resuming from %s: %s (a save that was interrupted?); trying an older checkpoint",
                        path, "; ".join(problems))
            continue
        written_by = _written_by(path)
        if written_by is not None and written_by["fingerprint"] != identity.fingerprint:
            foreign.append((path, written_by))
            continue
        if written_by is None:
            log.warning("%s has no run_identity.json (written by an earlier version?): resuming it without being "
                        "able to check that this config wrote it", path)
        for other, by in foreign:
            log.warning("not resuming from %s: another config wrote it (%s)", other, identity_differences(by, identity))
        return path
    if foreign:
        path, by = foreign[0]
        raise ConfigError(
            f"training.resume_from_checkpoint: true, but the checkpoints in {output_dir} were written by another "
            f"run ({identity_differences(by, identity)}); resume with that run's config ({path.parent}/run_config.yaml"
            f"), or set resume_from_checkpoint to {path} to continue it with this config anyway, or to false for a "
            "fresh run")
    if incomplete:
        raise ConfigError(
            f"training.resume_from_checkpoint: true, but no checkpoint in {output_dir} is complete ("
            + "; ".join(f"{p.name}: {', '.join(probs)}" for p, probs in incomplete)
            + "); set it to false for a fresh run")
    raise ConfigError(f"training.resume_from_checkpoint: true, but {output_dir} holds no checkpoint-N folder to "
                      "resume from; set it to false for a fresh run, or to the path of a checkpoint")


def last_own_checkpoint(output_dir: str | os.PathLike, identity: RunIdentity | None, *, plain: bool = True,
                        removed: list[Path] | None = None) -> Path | None:
    """The newest complete checkpoint this run (``identity``) can resume from. With a ``removed``
    list, newer half-written ones (a save that failed, e.g. for lack of space) are deleted, which also
    gives back their space, and listed there."""
    import shutil

    from .checkpoint import checkpoint_problems, find_checkpoints

    for path in find_checkpoints(output_dir):
        if checkpoint_problems(path, training_state=plain, weights=plain):
            if removed is not None:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            continue
        written_by = _written_by(path)
        if identity is None or written_by is None or written_by["fingerprint"] == identity.fingerprint:
            return path
    return None


def checkpoint_shape_problems(checkpoint: str | os.PathLike, expected: dict[str, tuple[int, ...]]) -> list[str]:
    """Where the weights saved in ``checkpoint`` do not fit the model about to train: tensors whose
    shape differs (e.g. lora.r 8 -> 4) and tensors only one side has (other target modules). Reads
    only the safetensors headers."""
    from safetensors import safe_open

    files = sorted(Path(checkpoint).glob("*.safetensors"))
    if not files:
        return []
    saved: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                saved[name] = tuple(fh.get_slice(name).get_shape())
    problems = [f"{name} is {list(saved[name])} there, {list(shape)} here"
                for name, shape in expected.items() if name in saved and tuple(saved[name]) != tuple(shape)]
    missing = [n for n in expected if n not in saved]
    extra = [n for n in saved if n not in expected]
    if missing and (saved.keys() & expected.keys()):  # partially matching: another set of modules
        problems.append(f"{len(missing)} tensors of this model are not in it (first: {missing[0]})")
    if extra and (saved.keys() & expected.keys()):
        problems.append(f"{len(extra)} of its tensors are not in this model (first: {extra[0]})")
    if not (saved.keys() & expected.keys()):
        problems.append(f"none of its {len(saved)} tensors belongs to this model (first: {next(iter(saved))})")
    return problems


def check_checkpoint_fits(model: Any, checkpoint: str | os.PathLike) -> None:
    """A checkpoint whose tensors do not fit ``model`` (lora.r 8 -> 4, other target modules) is bad
    input: a ConfigError (exit 2), raised before anything in output_dir is rewritten."""
    from ..errors import ConfigError

    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    else:
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = checkpoint_shape_problems(checkpoint, expected)
    if problems:
        raise ConfigError(f"training.resume_from_checkpoint: {checkpoint} does not fit this model "
                          f"({'; '.join(problems[:2])}); it was written with another model or lora config: resume "
                          "it with the config that wrote it (its run_config.yaml), or start a fresh run")


def warn_if_written_by_another(checkpoint: str | os.PathLike, identity: RunIdentity) -> None:
    """An explicitly named checkpoint of another config is resumed as asked, with a warning."""
    written_by = _written_by(Path(checkpoint))
    if written_by is not None and written_by["fingerprint"] != identity.fingerprint:
        _log.warning("resuming %s as asked, although another config wrote it (%s): the run goes on with this "
                     "config", checkpoint, identity_differences(written_by, identity))


def disk_full_details(message: str, output_dir: str | os.PathLike, identity: RunIdentity | None, *,
                      plain: bool = True, remove_incomplete: bool = True) -> tuple[str, str | None]:
    """The full disk-full message (which checkpoint was being saved and was removed, the last complete
    one, how to resume) and that last checkpoint."""
    removed: list[Path] = []
    last = last_own_checkpoint(output_dir, identity, plain=plain, removed=removed if remove_incomplete else None)
    if removed and " while writing " not in message:
        message += f" while saving {removed[-1].name} (removed: it was incomplete)"
    kept = (f"the last complete checkpoint is {last}; free some space, then resume with "
            "training.resume_from_checkpoint=true" if last is not None
            else "no complete checkpoint was written; free some space and start the run again")
    return f"{message}; {kept}", None if last is None else str(last)


def resolve_resume(value: Any, output_dir: str | os.PathLike, identity: RunIdentity, *, plain: bool = True) -> str | None:
    """The checkpoint folder ``training.resume_from_checkpoint`` names, checked before anything is
    loaded (the HF Trainer would only fail after data preparation and model loading).

    ``true`` takes the newest complete checkpoint written by a run of the same ``identity``;
    checkpoints of another config are skipped with a warning, and when only such checkpoints exist
    it is an error. A path is resumed as asked, with a warning if another config wrote it.
    ``plain``: False under DeepSpeed/FSDP, whose sharded layouts are not checked file by file."""
    from ..errors import ConfigError
    from .checkpoint import checkpoint_problems

    if not value:
        return None
    if value is True:
        return str(choose_checkpoint(output_dir, identity, plain=plain))
    if not os.path.isfile(os.path.join(value, "trainer_state.json")) and not any(
            os.path.isfile(os.path.join(value, n)) for n in ("optimizer.pt", "adapter_model.safetensors",
                                                              "model.safetensors")):
        raise ConfigError(f"training.resume_from_checkpoint: {value!r} is not a checkpoint folder (one with "
                          "trainer_state.json, such as OUTPUT_DIR/checkpoint-500)")
    problems = checkpoint_problems(value, training_state=plain, weights=plain)
    if problems:
        raise ConfigError(f"training.resume_from_checkpoint: {value} is incomplete ({'; '.join(problems)}), "
                          "probably written by a run that was killed while saving; resume from an earlier "
                          "checkpoint, or use true to pick the newest complete one")
    warn_if_written_by_another(value, identity)
    return str(value)


@contextlib.contextmanager
def disk_full_guard(output_dir: str | os.PathLike, identity: RunIdentity | None, *, plain: bool = True,
                    main_process: bool = True) -> Iterator[None]:
    """Within the block, a write that fails for lack of space becomes one :class:`DiskFullError` line
    (:func:`disk_full_details`); the main process removes the incomplete checkpoint."""
    from ..errors import DiskFullError
    from .io import disk_full_message

    try:
        yield
    except DiskFullError:
        raise
    except BaseException as exc:
        message = disk_full_message(exc, output_dir)
        if message is None:
            raise
        text, last = disk_full_details(message, output_dir, identity, plain=plain, remove_incomplete=main_process)
        raise DiskFullError(text, checkpoint=last) from exc
