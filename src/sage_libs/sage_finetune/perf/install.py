"""The one step that applies a run's fast-path decisions (:mod:`.decide`) to the model and the
process, and logs what applied."""

from __future__ import annotations

import logging
from typing import Any

from .decide import FastPaths

__all__ = ["install_fast_paths"]

logger = logging.getLogger("sage_libs.sage_finetune.perf")


def install_fast_paths(model: Any, paths: FastPaths) -> FastPaths:
    """Apply what changes state: switch the model to per-document attention, tune the allocator
    (process-wide), fuse norms and LoRA branches, compile the decoder layers. Returns ``paths`` with what actually applied, and
    logs it."""
    from dataclasses import replace

    from .allocator import return_freed_memory, tune_malloc
    from .doc_attention import install_doc_attention

    if paths.doc_attention:
        paths = replace(paths, doc_attention=install_doc_attention(model))
    if paths.malloc_tuning:
        paths = replace(paths, malloc_tuning=tune_malloc())
    else:  # for memory: large freed blocks go back to the OS (see allocator)
        paths = replace(paths, returns_freed_memory=return_freed_memory())
    if paths.fused_norms:
        from .fused_norm import install_fused_norms

        paths = replace(paths, fused_norms=install_fused_norms(model) > 0)
    if paths.fused_lora:
        from .fused_lora import install_fused_lora

        paths = replace(paths, fused_lora=install_fused_lora(model) > 0)
    if paths.compile_layers:
        from .compiled_layers import compile_decoder_layers

        paths = replace(paths, compile_layers=compile_decoder_layers(model) > 0)
        if paths.compile_layers:  # nothing else is printed while torch.compile works
            logger.warning("training.compile_layers: the decoder layers are compiled during the first training and "
                           "evaluation steps (minutes on a small CPU; the console stays quiet meanwhile), and the "
                           "run's tokens/s includes that time")
    logger.info("fast paths: %s", paths.describe())
    return paths
