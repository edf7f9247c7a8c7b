"""The fast paths' numbers, in a module that imports nothing, so that the planner and the paths read
the same values."""

from __future__ import annotations

__all__ = ["CHUNK_BYTES", "AUTO_LOGITS_BYTES", "GLIBC_MMAP_THRESHOLD_MAX", "DOC_ATTENTION"]

CHUNK_BYTES = 128 * 2**20
"""Budget of one chunk's float32 logits in the chunked LM loss (:mod:`.chunked_ce`): 128 MiB, i.e.
259 rows of a 129k vocabulary (1k of a 32k one). Every chunk streams the whole head weight through
two matmuls; on the CPU chunks of 64 rows (32 MiB) made the head ~30% slower than the plain path,
256 rows as fast (benchmarks/chunked_lm_loss.py)."""

AUTO_LOGITS_BYTES = 256 * 2**20
"""``chunked_lm_loss: null`` turns chunking on when all trained positions' float32 logits would
take more than this (e.g. 520 trained tokens of a 129k vocabulary)."""


GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20
"""glibc's dynamic mmap threshold starts at 128 KiB and rises to the size of each mmapped block that
is freed, up to 32 MiB on 64-bit systems: leaving glibc alone keeps every freed block under it in the
heap. With ``malloc_tuning`` off the threshold is fixed lower (:data:`.allocator.RETURNED_BLOCK_BYTES`),
which is what :func:`.decide.malloc_tuning_for` compares a checkpointed run's activations with."""

DOC_ATTENTION = "sage_doc_sdpa"
"""The attention implementation name per-document attention registers (:mod:`.doc_attention`)."""
