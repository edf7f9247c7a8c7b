"""Every error this package raises on purpose, in one place.

Two families, matching the CLI's exit codes:

* bad input, found before training starts (exit code 2): :class:`ConfigError` and its kinds, and
  :class:`DataFormatError` for records that cannot be read;
* a run that started and cannot go on (exit code 1): :class:`TrainingError` and its kinds.

Interruptions are ``KeyboardInterrupt`` subclasses, so that code catching ``Exception`` never
swallows the user's Ctrl-C or a scheduler's SIGTERM. This module imports nothing.
"""

from __future__ import annotations

import signal

__all__ = [
    "ConfigError", "UsageError", "OutputDirBusy", "FineTuneRegistryError",
    "DataFormatError", "DataFileError", "MixedFormatError", "TemplateError", "MaskError",
    "TrainingError", "NonFiniteLossError", "DiskFullError",
    "TrainingInterrupted", "Terminated", "RunFinished", "did_you_mean",
]


# -- bad input (exit code 2) --------------------------------------------------------------------------
class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what is allowed."""


class UsageError(ConfigError):
    """A command-line mistake."""


class OutputDirBusy(ConfigError):
    """Another live run holds the output folder."""


class FineTuneRegistryError(KeyError):
    """An unknown name was asked for, or a name was registered twice."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class DataFormatError(ValueError):
    """A record cannot be read; the message starts with where it is (file:line or record N)."""


class DataFileError(DataFormatError):
    """A data file cannot be read (missing, empty, not UTF-8, malformed JSON)."""


class MixedFormatError(DataFormatError):
    """Records of one dataset come in different formats (never skipped by on_error=skip)."""


class TemplateError(DataFormatError):
    """The chat template cannot render a conversation, or renders it so that the trained tokens
    cannot be located exactly; the message names the record and the template behaviour."""


class MaskError(TemplateError):
    """The trained spans cannot be located exactly in a rendering (the text itself renders fine)."""


# -- a run that cannot go on (exit code 1) ------------------------------------------------------------
class TrainingError(RuntimeError):
    """Training started but cannot go on (the CLI exits with code 1; bad input before the start is a
    :class:`ConfigError`, code 2)."""


class NonFiniteLossError(TrainingError):
    """The loss (or a trained weight) became NaN or inf. ``step`` is the optimizer step it happened
    at; ``checkpoint`` the last good checkpoint on disk, if any (nothing is saved after it)."""

    def __init__(self, message: str, *, step: int | None = None, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


class DiskFullError(TrainingError):
    """A write failed for lack of space; ``checkpoint`` is the last complete checkpoint, if any."""

    def __init__(self, message: str, *, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


# -- interruptions -------------------------------------------------------------------------------------
class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM: ``signum``) stopped training after a checkpoint was saved at ``step``."""

    def __init__(self, message: str, *, step: int, checkpoint: str | None, signum: int = 2) -> None:
        super().__init__(message)
        self.step, self.checkpoint, self.signum = step, checkpoint, signum

    def __str__(self) -> str:
        return str(self.args[0])


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived outside the training loop (data preparation, model loading, the final save):
    the run stops at once, cleaning up what it was writing."""

    signum = signal.SIGTERM


class RunFinished(Exception):
    """Raised at the start of a training loop resumed from the final checkpoint of its run: there is
    no step left to train (the HF Trainer would train one more step). Caught by the trainer."""


def did_you_mean(word: object, candidates: object) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``candidates`` to ``word``, or ``""``: the one hint
    every "unknown name" message ends with."""
    import difflib

    names = [str(c) for c in candidates]  # type: ignore[union-attr]
    by_lower = {n.lower(): n for n in names}  # TRAIN -> train: case is the commonest slip
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
