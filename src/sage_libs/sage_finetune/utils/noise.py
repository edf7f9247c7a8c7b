"""Third-party messages that say nothing to our users, silenced by their exact text.

One place for these decisions: a filter matches a logger name and the start of a message, never a
whole module or category, so a correctness warning from the same library still reaches the user.
Nothing is installed when the package is imported: a run and a command drop the noise while they
last (:func:`known_noise_dropped`); it imports nothing (a logger can be configured before its module
exists).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

__all__ = ["known_noise_dropped", "NOISE", "WARNINGS", "CONSOLE_LOGGERS", "ConsoleLoggers", "EarlyRecords"]

# logger name -> message prefixes to drop, each with the reason it is noise
NOISE: dict[str, tuple[str, ...]] = {
    # bitsandbytes >= 0.49 on CPUs with AVX-512 BF16, at import: an optional faster kernel from the
    # `kernels` hub package is missing; bitsandbytes falls back to its own, and we never use the
    # packed CPU path that kernel serves (see trainers/qlora.py).
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    # DeepSpeed, whenever it is imported on a machine without a GPU (transformers imports it when it
    # is installed): the CPU is what the user asked for.
    "DeepSpeed": ("Setting accelerator to CPU",),
}

# (category, regex matching the start of the message): Python warnings that are noise
WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # transformers 5 deprecates the attribute that peft and the Trainer still read; nothing to do for users
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # peft, saving an adapter (each checkpoint) on a GGUF base: it looks for the base's config.json beside
    # the .gguf file to tell a resized vocabulary; runs never resize it, and the final adapter's save
    # checks against the converted config instead (methods/lora.py)
    (UserWarning, r"Could not find a config file in .*\.gguf - will assume that the vocabulary was not modified"),
)


# Loggers whose warnings reach the command line's console: ours, the libraries a user configures
# through us (their warnings are about the user's model, data or options) and the user's own code
# (the root logger). Every other library logs to OUTPUT_DIR/train.log only: packages pulled in
# indirectly (``kernels``, ``httpx``, ``filelock``...) speak about their own plumbing, and a new
# release of one of them must not change what a user sees.
CONSOLE_LOGGERS: tuple[str, ...] = (
    "root", "__main__", "sage_libs", "sage", "transformers", "peft", "accelerate", "datasets", "torch", "trl",
    "bitsandbytes", "deepspeed", "DeepSpeed", "safetensors", "tokenizers", "py.warnings",
)


# a formatting_func file beside the config is imported as a module of this name (utils/user_code.py)
USER_CODE_PREFIX = "_sage_finetune_user_"


class ConsoleLoggers(logging.Filter):
    """A handler filter: records of :data:`CONSOLE_LOGGERS` (and their children) and of the user's
    own code pass. Python warnings (``py.warnings``, the command line captures them) pass when they
    come from one of those libraries or from outside installed packages (the user's code)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":
            package = warning_package(record.getMessage())
            return package is None or package in CONSOLE_LOGGERS
        return record.name.split(".", 1)[0] in CONSOLE_LOGGERS or record.name.startswith(USER_CODE_PREFIX)


def warning_package(text: str) -> str | None:
    """The installed package a formatted warning (``path:line: Category: message``) came from, or
    None when its file is not in site-packages / dist-packages."""
    path = text.split(":", 1)[0].replace("\\", "/")
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            first = path.split(marker, 1)[1].split("/", 1)[0]
            return first[:-3] if first.endswith(".py") else first
    return None


class EarlyRecords(logging.Handler):
    """Holds the log records of a command until its run opens OUTPUT_DIR/train.log (data and model
    are prepared before the output folder is touched), which then receives them first: a library's
    line that the console leaves out is in train.log even when it came before the folder existed."""

    LIMIT = 10_000  # records kept; a run that logs more before it starts loses the oldest

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if len(self.records) > self.LIMIT:
            del self.records[: len(self.records) - self.LIMIT]

    @classmethod
    def install(cls) -> None:
        """Start holding (a command's start: what an earlier command in this process held is dropped)."""
        root = logging.getLogger()
        for early in [h for h in root.handlers if isinstance(h, cls)]:
            root.removeHandler(early)
        root.addHandler(cls())

    @classmethod
    def drain_into(cls, handler: logging.Handler) -> None:
        """Hand the held records to ``handler`` and stop holding (idempotent)."""
        root = logging.getLogger()
        for early in [h for h in root.handlers if isinstance(h, cls)]:
            root.removeHandler(early)
            for record in early.records:
                if record.levelno >= handler.level:
                    handler.handle(record)
            early.records.clear()


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def known_noise_dropped() -> Iterator[None]:
    """Within the block (a run, a command), the known noise is dropped: :data:`NOISE`'s log records
    and :data:`WARNINGS`' Python warnings. Nothing is installed by importing the package, and the
    block leaves the logger filters and the warnings filters as they were (nested blocks too)."""
    import warnings

    added = []
    for name, prefixes in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            noise = _DropPrefixes(prefixes)
            logger.addFilter(noise)
            added.append((logger, noise))
    ours = []
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
        ours.append(warnings.filters[0])
    try:
        yield
    finally:
        for logger, noise in added:
            logger.removeFilter(noise)
        # only our entries: catch_warnings() would also drop the filters that libraries imported
        # during the block installed for themselves
        for entry in ours:
            if entry in warnings.filters:
                warnings.filters.remove(entry)
        mutated = getattr(warnings, "_filters_mutated", None)  # the warnings module's cache (CPython)
        if mutated is not None:
            mutated()
