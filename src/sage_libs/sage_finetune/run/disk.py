"""A full disk during a run: one line saying what was removed, the last complete checkpoint and how
to resume (:class:`DiskFullError`), instead of a traceback from whichever writer hit it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from .identity import RunIdentity
from .resume import last_own_checkpoint

__all__ = ["disk_full_guard", "disk_full_details", "run_disk_guard"]


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


@contextlib.contextmanager
def disk_full_guard(output_dir: str | os.PathLike, identity: RunIdentity | None, *, plain: bool = True,
                    main_process: bool = True) -> Iterator[None]:
    """Within the block, a write that fails for lack of space becomes one :class:`DiskFullError` line
    (:func:`disk_full_details`); the main process removes the incomplete checkpoint."""
    from ..errors import DiskFullError
    from ..utils.io import disk_full_message

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


def run_disk_guard(trainer: Any) -> Any:
    """:func:`disk_full_guard` for ``trainer``'s run: what was removed, the last complete checkpoint of
    this run's identity, how to resume."""
    from ..utils.processes import is_main_process

    tc = trainer.training_config
    return disk_full_guard(tc.output_dir, getattr(trainer, "_identity", None), plain=not (tc.deepspeed or tc.fsdp),
                           main_process=is_main_process())
