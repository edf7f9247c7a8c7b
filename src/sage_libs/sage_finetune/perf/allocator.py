"""The glibc allocator, set once per run for speed or for memory. It is process-wide, so it is
applied by the run's one explicit fast-path step (:func:`..perf.install_fast_paths`), never by
constructing an object.

* :func:`tune_malloc` (``malloc_tuning`` on, for speed): freed memory stays in the process, so a
  step does not pay the page faults of its activations again.
* :func:`return_freed_memory` (``malloc_tuning`` off, for memory): blocks over
  :data:`RETURNED_BLOCK_BYTES` are mmapped and handed back to the OS when freed. glibc's default
  does this only above a *dynamic* threshold that rises to 32 MiB as blocks are freed, after which
  every smaller block (at 8192 tokens a hidden-size activation is 29 MiB) stays in the heap: 6
  decoder layers of the 0.5B benchmark model at 8192 tokens under gradient checkpointing peaked at
  5.3 GB with the default and 2.7 GB with the threshold fixed (~10% slower backward).
"""

from __future__ import annotations

import os

__all__ = ["tune_malloc", "return_freed_memory", "restore_allocator", "RETURNED_BLOCK_BYTES"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_MMAP_MAX_DEFAULT = 65536
_GLIBC_TRIM_THRESHOLD_DEFAULT = 128 * 1024
RETURNED_BLOCK_BYTES = 4 * 2**20
"""With ``malloc_tuning`` off, freed blocks larger than this go back to the OS (a fixed mmap threshold,
which also stops glibc from raising it)."""

_mode: str | None = None  # "speed" or "memory", once applied in this process


def _mallopt():
    """glibc's ``mallopt``, or None (another libc, another OS, or SAGE_FINETUNE_MALLOC_TUNING=0)."""
    if os.environ.get("SAGE_FINETUNE_MALLOC_TUNING", "1").lower() in ("0", "false", "no", "off"):
        return None
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        gnu_get_libc_version = libc.gnu_get_libc_version  # absent on musl and other libcs
        gnu_get_libc_version.restype = ctypes.c_char_p
        gnu_get_libc_version()
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        return mallopt
    except (OSError, AttributeError):
        return None


def _apply(mode: str, settings: list[tuple[int, int]]) -> bool:
    global _mode
    if _mode == mode:
        return True
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = all(mallopt(option, value) == 1 for option, value in settings)
    _mode = mode if ok else None
    return ok


def tune_malloc() -> bool:
    """Keep freed memory in this process (glibc only): ``M_MMAP_MAX=0`` (large blocks come from the
    heap, not from fresh mmaps) and a trim threshold that is never reached. Same effect as
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`` in the environment. Returns whether
    it applied; ``SAGE_FINETUNE_MALLOC_TUNING=0`` leaves the allocator alone."""
    return _apply("speed", [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)])


def return_freed_memory() -> bool:
    """Hand freed blocks over :data:`RETURNED_BLOCK_BYTES` back to the OS (glibc only): a fixed mmap
    threshold (as ``MALLOC_MMAP_THRESHOLD_=4194304``), mmaps allowed again and a trim threshold of
    twice that, glibc's own ratio. Returns whether it applied; ``SAGE_FINETUNE_MALLOC_TUNING=0``
    leaves the allocator alone."""
    return _apply("memory", [(_M_MMAP_MAX, _GLIBC_MMAP_MAX_DEFAULT), (_M_MMAP_THRESHOLD, RETURNED_BLOCK_BYTES),
                             (_M_TRIM_THRESHOLD, 2 * RETURNED_BLOCK_BYTES)])


def restore_allocator() -> bool:
    """At the end of a run: undo :func:`tune_malloc` (glibc's mmap count and trim threshold back to
    their defaults, and the heap trimmed), so that a process that goes on after ``train()`` does not
    keep every freed block. :func:`return_freed_memory` stays: it only returns memory, and glibc has
    no call that makes its mmap threshold dynamic again. Returns whether anything was undone."""
    global _mode
    if _mode != "speed":
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX_DEFAULT)
    mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD_DEFAULT)
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - mallopt exists, so malloc_trim does
        pass
    _mode = None
    return True
