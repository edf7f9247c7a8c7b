"""Atomic file and directory writes: a reader never sees a half-written output."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_write_text", "atomic_write_json", "atomic_dir", "normal_mode", "follow_umask", "tree_state",
           "is_out_of_space", "disk_full_message"]


def normal_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a temporary file or folder the permissions a plain ``open()`` / ``mkdir()`` would have
    given it under the current umask: mkstemp/mkdtemp make them private (0600/0700), which would
    keep a serving process running as another user from reading the model."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def follow_umask(root: str | os.PathLike, *, written_since: dict[str, tuple[int, int]] | None = None) -> None:
    """Give the files and folders under ``root`` (and ``root`` itself) the permissions of a plain
    ``open()`` / ``mkdir()`` under the current umask. Writers we do not own create private files:
    safetensors' ``save_file`` writes ``*.safetensors`` as 0600 whatever the umask, so without this
    a serving process in the same group could not read the weights.

    ``written_since``: a :func:`tree_state` taken before writing into a folder that may hold other
    files: only what was created or rewritten since is changed (a user's own files keep their modes).
    Symbolic links are never followed."""
    root = Path(root)
    if root.is_symlink() or not root.exists():
        return
    if root.is_file():
        normal_mode(root)
        return

    def ours(path: str) -> bool:
        return written_since is None or written_since.get(path) != _stamp(path)

    if written_since is None:  # a folder we made (a new one from mkdir already follows the umask)
        normal_mode(root, directory=True)
    for folder, dirs, files in os.walk(root):  # os.walk does not descend into linked folders
        for name in dirs:
            path = os.path.join(folder, name)
            if not os.path.islink(path) and ours(path):
                normal_mode(path, directory=True)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path) and ours(path):
                normal_mode(path)


def tree_state(root: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """``path -> (inode, mtime_ns)`` of everything under ``root`` now (for :func:`follow_umask`)."""
    state: dict[str, tuple[int, int]] = {}
    if not Path(root).is_dir():
        return state
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            stamp = _stamp(path)
            if stamp is not None:
                state[path] = stamp
    return state


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _umask() -> int:
    # /proc gives it without changing it (os.umask can only read it by setting it, which would briefly
    # affect files other threads create)
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        normal_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` (an existing
    directory there is swapped out and removed), on error it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    normal_mode(tmp, directory=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    follow_umask(tmp)  # what the writers inside created keeps their modes otherwise (see follow_umask)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# What a full disk looks like, depending on which writer hit it: OSError(ENOSPC) from Python's own
# files; "[enforce fail at inline_container.cc:...] unexpected pos" or "PytorchStreamWriter failed
# writing file" from torch.save; an IoError with StorageFull from safetensors; a quota (EDQUOT).
_NO_SPACE_TEXT = ("no space left on device", "storagefull", "disk quota exceeded", "quotaexceeded")
_TORCH_WRITE_TEXT = ("unexpected pos", "pytorchstreamwriter failed", "file write failed")
_LOW_SPACE = 64 << 20  # bytes: a torch writer failure with less free than this is taken as a full disk


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the file system of ``path`` (or of its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def is_out_of_space(exc: BaseException, path: str | os.PathLike) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a write that failed for lack of space
    on the file system of ``path``."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e).lower()
        if any(t in text for t in _NO_SPACE_TEXT):
            return True
        if any(t in text for t in _TORCH_WRITE_TEXT):
            free = free_bytes(path)
            return free is not None and free < _LOW_SPACE
    return False


def disk_full_message(exc: BaseException, path: str | os.PathLike) -> str | None:
    """``no space left on <mount point> (N MB free) while writing <file>`` for a write that failed
    for lack of space, else None."""
    if not is_out_of_space(exc, path):
        return None
    target = Path(path).absolute()
    mount = target
    while not mount.exists() and mount != mount.parent:
        mount = mount.parent
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    free = free_bytes(target)
    what = next((e.filename for e in _chain(exc) if isinstance(e, OSError) and getattr(e, "filename", None)), None)
    return (f"no space left on {mount} (the file system of {target}"
            + (f", {free / 2**20:.1f} MiB free" if free is not None else "") + ")"
            + (f" while writing {what}" if what else ""))
