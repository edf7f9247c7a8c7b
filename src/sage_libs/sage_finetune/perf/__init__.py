"""Fast paths of the training loop. Each computes exactly what the plain path computes, less of what
it throws away; ``tests/perf/`` checks losses and gradients against the plain path.

==========================  =================================================  ==========================
path                        what it saves                                      option
==========================  =================================================  ==========================
selective logits            the LM head and loss at trained positions only      ``training.selective_logits``
chunked LM loss             no ``(tokens, vocab)`` logits at all (chunks)       ``training.chunked_lm_loss``
padding-free batches        no padding; one row per batch                       ``data.padding_free``
per-document attention      attention cost of each document, not of the row     (with padding-free / packing)
allocator tuning            page faults of each step's activations (glibc)      ``training.malloc_tuning``
                            (off by default with gradient checkpointing)
fused RMSNorm               passes over memory in norms (CPU)                   ``training.fused_norms``
fused LoRA branch           LoRA dropout's kept copies: 8 -> ~1 byte/element    ``training.fused_lora``
compiled decoder layers     non-matmul time (fused by inductor); off: compiles  ``training.compile_layers``
==========================  =================================================  ==========================

A run decides all of them once, after the model is loaded (:func:`plan_fast_paths`: options, the
model's probed capabilities, the device), installs what changes process or model state in one
explicit step (:func:`install_fast_paths`), and logs the decisions. The HF Trainer subclass
(:mod:`..trainers.hf_core`) only reads the resulting :class:`FastPaths`.
"""

from __future__ import annotations

from .constants import CHUNK_BYTES, GLIBC_MMAP_THRESHOLD_MAX, chunk_rows_for
from .decide import FastPaths, malloc_tuning_for, plan_fast_paths, resolve_group_by_length, widest_activation_bytes
from .install import install_fast_paths

__all__ = ["FastPaths", "plan_fast_paths", "resolve_group_by_length", "install_fast_paths", "malloc_tuning_for",
           "widest_activation_bytes", "GLIBC_MMAP_THRESHOLD_MAX", "CHUNK_BYTES", "chunk_rows_for"]
