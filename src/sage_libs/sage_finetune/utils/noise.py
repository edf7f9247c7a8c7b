"""Third-party messages that say nothing to our users, silenced by their exact text.

One place for these decisions: a filter matches a logger name and the start of a message, never a
whole module or category, so a correctness warning from the same library still reaches the user.
Installing the filters imports nothing (a logger can be configured before its module exists).
"""

from __future__ import annotations

import logging

__all__ = ["install_log_filters", "NOISE", "WARNINGS", "CONSOLE_LOGGERS", "ConsoleLoggers"]

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


class ConsoleLoggers(logging.Filter):
    """A handler filter: records of :data:`CONSOLE_LOGGERS` (and their children) pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".", 1)[0] in CONSOLE_LOGGERS


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def install_log_filters() -> None:
    """Attach the filters (idempotent)."""
    import warnings

    for name, prefixes in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            logger.addFilter(_DropPrefixes(prefixes))
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
