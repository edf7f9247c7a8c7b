"""Which checkpoint a run resumes from (``training.resume_from_checkpoint``), checked before anything
is loaded: only a complete checkpoint of the same run identity (:mod:`.identity`) is continued
silently, and one that does not fit the model is refused."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .identity import RunIdentity, identity_differences, read_identity

__all__ = ["resume_checkpoint", "resolve_resume", "choose_checkpoint", "last_own_checkpoint", "checkpoint_shape_problems",
           "check_checkpoint_fits", "warn_if_written_by_another"]

_log = logging.getLogger("sage_libs.sage_finetune.trainers.base")


def _written_by(checkpoint: Path) -> dict[str, Any] | None:
    """The identity of the run that wrote ``checkpoint``: its own record, else its output folder's."""
    return read_identity(checkpoint) or read_identity(checkpoint.parent)


def choose_checkpoint(output_dir: str | os.PathLike, identity: RunIdentity, *, plain: bool = True) -> Path:
    """``resume_from_checkpoint: true``: the newest complete checkpoint of ``output_dir`` written by a
    run of this identity. Incomplete ones and another config's are passed over with a warning; a
    ConfigError (exit 2) when none is left, naming what differs."""
    from ..errors import ConfigError
    from .checkpoints import checkpoint_problems, find_checkpoints

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
        written_by = read_identity(path)  # its own record: the folder's says who started the folder, not this
        if written_by is None:
            raise ConfigError(
                f"training.resume_from_checkpoint: true, but {path} has no run_identity.json (deleted, or written by "
                "another tool), so nothing shows that this config wrote it; set resume_from_checkpoint to "
                f"{path} to continue it anyway, or to false for a fresh run")
        if written_by["fingerprint"] != identity.fingerprint:
            foreign.append((path, written_by))
            continue
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

    from .checkpoints import checkpoint_problems, find_checkpoints

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
    """An explicitly named checkpoint of another config, or of no known one, is resumed as asked,
    with a warning."""
    written_by = read_identity(checkpoint)
    if written_by is None:
        _log.warning("resuming %s as asked, although it has no run_identity.json: nothing shows which config "
                     "wrote it", checkpoint)
    elif written_by["fingerprint"] != identity.fingerprint:
        _log.warning("resuming %s as asked, although another config wrote it (%s): the run goes on with this "
                     "config", checkpoint, identity_differences(written_by, identity))


def resolve_resume(value: Any, output_dir: str | os.PathLike, identity: RunIdentity, *, plain: bool = True) -> str | None:
    """The checkpoint folder ``training.resume_from_checkpoint`` names, checked before anything is
    loaded (the HF Trainer would only fail after data preparation and model loading).

    ``true`` takes the newest complete checkpoint written by a run of the same ``identity``;
    checkpoints of another config are skipped with a warning, and when only such checkpoints exist
    it is an error. A path is resumed as asked, with a warning if another config wrote it.
    ``plain``: False under DeepSpeed/FSDP, whose sharded layouts are not checked file by file."""
    from ..errors import ConfigError
    from .checkpoints import checkpoint_problems

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


def resume_checkpoint(trainer: Any, identity: RunIdentity | None = None) -> str | None:
    """The checkpoint ``trainer``'s ``training.resume_from_checkpoint`` names (:func:`resolve_resume`;
    ``identity`` None: that of its config and ``data.train_file``)."""
    tc = trainer.training_config
    if not tc.resume_from_checkpoint:
        return None
    if identity is None:
        identity = RunIdentity.from_resolved_config(trainer.resolved_config(), trainer.data_config.train_file)
    # DeepSpeed and FSDP save weights and optimizer state in their own sharded layouts
    return resolve_resume(tc.resume_from_checkpoint, tc.output_dir, identity, plain=not (tc.deepspeed or tc.fsdp))
