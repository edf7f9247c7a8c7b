"""One live run per output folder: an advisory lock on ``OUTPUT_DIR/.sage-finetune.lock``.

Two runs writing into one folder crash each other (one deletes the checkpoints the other rotates)
or, worse, interleave their logs and leave a ``run_config.yaml`` that describes the other run. So
a run takes an exclusive ``flock`` on a lock file in its output folder before it writes anything
there, and a second run on the same folder stops at once with a message naming the holder (pid,
host, start time, command).

The kernel drops an ``flock`` when its holder dies, however it dies (``kill -9``, out of memory), so
a stale lock file never blocks a later run: the next run simply takes the lock again. The file is
removed when the lock is released; a run that opened the file just before that re-checks, after
locking, that the path still names the file it locked, and retries otherwise.

The lock is re-entrant within a process (the CLI holds it across ``train()`` and the adapter save
that follows, and ``train()`` takes it again). Only the main process of a distributed run locks.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import shutil
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

from ..errors import (
    OutputDirBusy,  # noqa: F401 (re-exported)
)

__all__ = ["LOCK_NAME", "OutputDirBusy", "run_lock", "lock_holder", "holds_lock", "lock_only",
           "remove_stale_temporaries"]

LOCK_NAME = ".sage-finetune.lock"

_held: dict[str, list[Any]] = {}  # resolved output dir -> [open file, depth]
_guard = threading.Lock()


def _key(path: Path) -> str:
    return str(path.expanduser().resolve())


def lock_holder(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What the lock file of ``output_dir`` says about its holder (None: no lock file or unreadable)."""
    try:
        return json.loads((Path(output_dir) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another run"
    started = holder.get("started", "?")
    command = holder.get("command")
    return (f"another run (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {started}"
            + (f": {command}" if command else "") + ")")


def _try_lock(path: Path) -> Any:
    """An open, exclusively locked file at ``path``, or None when another process holds it."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file between our open and our lock: take the new one


@contextlib.contextmanager
def run_lock(output_dir: str | os.PathLike, *, enabled: bool = True) -> Iterator[bool]:
    """Hold the lock of ``output_dir`` (created if missing) for the duration of the block.

    Raises :class:`OutputDirBusy` (a ConfigError: exit code 2) when another live process holds it.
    Yields True when this call took the lock, False when this process already held it (or
    ``enabled`` is false: non-main ranks of a distributed run)."""
    if not enabled:
        yield False
        return
    out = Path(output_dir).expanduser()
    key = _key(out)
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield False
        finally:
            with _guard:
                entry[1] -= 1
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = _try_lock(path)
    if fd is None:
        raise OutputDirBusy(f"training.output_dir: {out} is in use by {_describe(lock_holder(out))}; two runs in "
                            "one folder would overwrite each other's checkpoints and logs. Wait for it to finish, "
                            "or choose another output_dir")
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode())
    with _guard:
        _held[key] = [fd, 1]
    try:
        yield True
    finally:
        with _guard:
            _held.pop(key, None)
        with contextlib.suppress(OSError):
            os.unlink(path)  # before unlocking: a waiter that opened it re-checks and retries
        os.close(fd)


def holds_lock(output_dir: str | os.PathLike) -> bool:
    """Whether this process holds the lock of ``output_dir``."""
    return _key(Path(output_dir)) in _held


def lock_only(output_dir: str | os.PathLike) -> bool:
    """``output_dir`` holds nothing but the lock this process took (it was created for the lock)."""
    out = Path(output_dir)
    try:
        return holds_lock(out) and os.listdir(out) == [LOCK_NAME]
    except OSError:
        return False


# Temporary names our atomic writes use beside their target (utils.io, utils.plotting, the HF
# Trainer's own ``tmp-checkpoint-N``): left behind only by a process that was killed mid-write.
def _is_temporary(name: str) -> bool:
    return (name.startswith(".") and (name.endswith(".tmp") or ".tmp." in name or ".old-" in name)) \
        or name.startswith("tmp-checkpoint-")


def remove_stale_temporaries(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders a killed run left in ``output_dir`` (and in its
    ``checkpoint-N`` folders). Call it only while holding the lock: then no live writer owns them."""
    root = Path(output_dir)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    folders = [root, *(p for p in root.iterdir() if p.is_dir() and p.name.startswith("checkpoint-"))]
    for folder in folders:
        for path in folder.iterdir():
            if path.name == LOCK_NAME or not _is_temporary(path.name):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            removed.append(path)
    return removed


def hold_output_dir(trainer: Any) -> Any:
    """A context holding the lock of ``trainer``'s output_dir for its run: a second live run on the
    folder stops at once (:class:`OutputDirBusy`, exit code 2). Re-entrant; only the main process
    locks."""
    from ..trainers.preflight import check_output_dir
    from ..utils.processes import is_main_process

    check_output_dir(trainer.training_config.output_dir)
    return run_lock(trainer.training_config.output_dir, enabled=is_main_process())
