"""The fast paths' numbers, in a module that imports nothing, so that the planner and the paths read
the same values."""

from __future__ import annotations

__all__ = ["CHUNK_BYTES", "GLIBC_MMAP_THRESHOLD_MAX", "DOC_ATTENTION", "chunk_rows_for"]

CHUNK_BYTES = 256 * 2**20
"""Budget of one chunk's float32 logits in the chunked LM loss (:mod:`.chunked_ce`): 256 MiB, i.e.
519 rows of a 129k vocabulary (2k of a 32k one); fewer trained positions run as one chunk. The
chunk's buffer is the loss's only ``[rows x vocab]`` block (softmax and gradient are computed in
place in it). Every chunk streams the whole head weight through two matmuls; on the CPU chunks of
64 rows (32 MiB) made the head ~30% slower than the plain path, 256 rows as fast
(benchmarks/chunked_lm_loss.py)."""


def chunk_rows_for(vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that a chunk's float32 logits fit ``chunk_bytes`` (at least 1): what the
    loss runs (:mod:`.chunked_ce`) and what the planner counts."""
    return max(1, int(chunk_bytes) // (4 * max(int(vocab), 1)))


GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20
"""glibc's dynamic mmap threshold starts at 128 KiB and rises to the size of each mmapped block that
is freed, up to 32 MiB on 64-bit systems: leaving glibc alone keeps every freed block under it in the
heap. With ``malloc_tuning`` off the threshold is fixed lower (:data:`.allocator.RETURNED_BLOCK_BYTES`),
which is what :func:`.decide.malloc_tuning_for` compares a checkpointed run's activations with."""

DOC_ATTENTION = "sage_doc_sdpa"
"""The attention implementation name per-document attention registers (:mod:`.doc_attention`)."""
