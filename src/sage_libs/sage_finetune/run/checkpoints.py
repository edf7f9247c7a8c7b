"""Which ``checkpoint-N`` folders are complete enough to resume from.

The HF Trainer writes a checkpoint in place (``Trainer._save_checkpoint``: weights, then
``optimizer.pt``/``scheduler.pt``/``rng_state.pth``, then ``trainer_state.json``, then it deletes the
oldest checkpoints). A run killed in the middle (``kill -9``, out of memory, a pre-empted node) leaves
a newest folder that looks like a checkpoint but is not one; resuming from it fails after minutes of
data preparation and model loading, or worse, resumes from a truncated optimizer state. So resume
looks at the files instead of trusting the name: the newest folder whose files are all present and
intact wins, newer incomplete ones are skipped with a warning.

"Intact" is checked cheaply, without unpickling or reading the tensors: ``trainer_state.json``
parses and names the folder's step; every ``.safetensors`` file has a valid header that covers the
file (``safetensors.safe_open`` refuses a truncated file); the ``torch.save`` files
(``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``) are zip archives whose central directory,
written last, is present (a truncated one is not).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

from . import files as run_files

__all__ = ["CHECKPOINT_RE", "TRAINING_STATE_FILES", "checkpoint_problems", "find_checkpoints",
           "last_complete_checkpoint", "move_aside_previous_run", "PREVIOUS_RUNS", "RUN_OUTPUTS"]

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

# Files the HF Trainer writes into every checkpoint besides the weights: training state, saved with
# torch.save (pickle) and loaded back by the Trainer with torch.load(weights_only=True).
# training_args.bin (the pickled TrainingArguments) is written too but never read back on resume.
TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "training_args.bin")

_WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def find_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, newest (highest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def _safetensors_problem(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except Exception as exc:  # SafetensorError, OSError: truncated or unreadable
        return f"{path.name} is damaged or truncated ({exc})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as exc:
        return f"{path.name} is damaged or truncated ({exc})"
    return None


def checkpoint_problems(path: str | os.PathLike, *, training_state: bool = True, weights: bool = True) -> list[str]:
    """What is missing or broken in the checkpoint folder ``path`` (empty: it can be resumed from).

    ``weights=False`` skips the weight files and ``training_state=False`` the optimizer, scheduler
    and RNG files (DeepSpeed and FSDP checkpoints store both in their own sharded layouts).
    """
    p = Path(path)
    if not p.is_dir():
        return [f"{p} is not a directory"]
    problems: list[str] = []
    state_file = p / "trainer_state.json"
    if not state_file.is_file():
        problems.append("no trainer_state.json (it is written last, so the save did not finish)")
    else:
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
            step = state["global_step"]
        except (ValueError, KeyError, TypeError, OSError) as exc:
            problems.append(f"trainer_state.json is damaged or truncated ({type(exc).__name__})")
        else:
            m = CHECKPOINT_RE.match(p.name)
            if m and int(m.group(1)) != step:
                problems.append(f"trainer_state.json is for step {step}, not {m.group(1)}")
    if weights:
        if not any((p / name).is_file() for name in _WEIGHT_FILES):
            problems.append("no weights (" + ", ".join(_WEIGHT_FILES) + ")")
        index = p / "model.safetensors.index.json"
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (ValueError, KeyError, TypeError, AttributeError, OSError):
                problems.append("model.safetensors.index.json is damaged or truncated")
                shards = set()
            problems += [f"missing weight shard {s}" for s in sorted(shards) if not (p / s).is_file()]
        for file in sorted(p.glob("*.safetensors")):
            problem = _safetensors_problem(file)
            if problem:
                problems.append(problem)
    if training_state:
        for name in ("optimizer.pt", "scheduler.pt"):
            if not (p / name).is_file():
                problems.append(f"no {name}")
        if not any(p.glob("rng_state*.pth")):
            problems.append("no rng_state.pth")
        for file in sorted([*p.glob("*.pt"), *p.glob("rng_state*.pth")]):
            problem = _torch_file_problem(file)
            if problem:
                problems.append(problem)
    return problems


def last_complete_checkpoint(output_dir: str | os.PathLike, *, training_state: bool = True,
                             weights: bool = True) -> tuple[Path | None, list[tuple[Path, list[str]]]]:
    """The newest complete checkpoint of ``output_dir`` (or None) and the newer incomplete ones
    that were passed over, each with its problems."""
    skipped: list[tuple[Path, list[str]]] = []
    for path in find_checkpoints(output_dir):
        problems = checkpoint_problems(path, training_state=training_state, weights=weights)
        if not problems:
            return path, skipped
        skipped.append((path, problems))
    return None, skipped


PREVIOUS_RUNS = "previous-runs"
# What a run writes into output_dir (besides checkpoint-N): moved aside with its checkpoints
RUN_OUTPUTS = run_files.RUN_OUTPUTS


def move_aside_previous_run(output_dir: str | os.PathLike) -> Path | None:
    """Move what an earlier run left in ``output_dir`` (its ``checkpoint-N`` folders and the outputs
    in :data:`RUN_OUTPUTS`) into ``output_dir/previous-runs/<time>-<fingerprint>/``, so that a fresh
    run starts from an empty folder: its checkpoints never mix with another run's, resume can never
    pick one of those, and the folder never shows one run's adapter beside another run's config.
    Returns that folder (None: nothing to move). Renames only: nothing is copied or deleted."""
    import time

    root = Path(output_dir)
    checkpoints = find_checkpoints(root)
    outputs = [root / name for name in RUN_OUTPUTS if (root / name).exists()]
    if not checkpoints and not outputs:
        return None
    fingerprint = "unknown"
    for folder in (root, *checkpoints):
        try:
            fingerprint = json.loads((folder / run_files.RUN_IDENTITY).read_text(encoding="utf-8"))["fingerprint"][:8]
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = root / PREVIOUS_RUNS / f"{stamp}-{fingerprint}"
    n = 1
    while target.exists():
        n += 1
        target = root / PREVIOUS_RUNS / f"{stamp}-{fingerprint}-{n}"
    target.mkdir(parents=True)
    for path in [*checkpoints, *outputs]:
        os.replace(path, target / path.name)
    return target
