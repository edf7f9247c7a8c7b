"""Allocator tuning: glibc hands every freed block over 32 MB back to the OS, so each training step
would pay the page faults of its activations again. :func:`tune_malloc` keeps freed memory in the
process instead. It is process-wide, so it is applied by the run's one explicit fast-path step
(:func:`..perf.install_fast_paths`), never by constructing an object."""

from __future__ import annotations

import os

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_malloc_tuned = False


def tune_malloc() -> bool:
    """Keep freed memory in this process (glibc only): ``M_MMAP_MAX=0`` (large blocks come from the
    heap, not from fresh mmaps) and a trim threshold that is never reached. Same effect as
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`` in the environment. Returns whether
    it applied; ``SAGE_FINETUNE_MALLOC_TUNING=0`` turns it off."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if os.environ.get("SAGE_FINETUNE_MALLOC_TUNING", "1").lower() in ("0", "false", "no", "off"):
        return False
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        gnu_get_libc_version = libc.gnu_get_libc_version  # absent on musl and other libcs
        gnu_get_libc_version.restype = ctypes.c_char_p
        gnu_get_libc_version()
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _malloc_tuned = ok
    return ok
