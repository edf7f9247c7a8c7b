"""Constants of the planner that were measured, not derived: on which machine, and how.

Measured on the development machine (2-core AMD EPYC VM, glibc 2.36, Python 3.11, torch 2.13.0+cpu,
transformers 5.24, peft 0.21) with ``benchmarks/plan_accuracy.py``; each is a physical quantity,
not a free fit of the whole prediction. ``sage-finetune plan`` measures the machine's matmul and
memory throughput afresh (the probe, :mod:`.probe`); these constants it cannot measure in two seconds.
"""

MIB = 2**20

# ---- process ------------------------------------------------------------------------------------
CPU_PROCESS_BASELINE = 520 * MIB
"""Resident memory of a CPU training process before the model: the interpreter, torch,
transformers, peft, datasets, accelerate and the HF Trainer imported (~350 MiB of libraries and
interpreter, outside the malloc heap), plus the heap in use once the tokenizer and the data are
ready and the Trainer is built (~170 MiB). Measured: VmRSS at ``on_train_begin`` minus the model's
resident pages."""

CUDA_CONTEXT = 500 * MIB
"""Device memory the CUDA context and kernels take outside torch's allocator (not counted by
``torch.cuda.max_memory_allocated``); typical for recent drivers."""

CUDA_RESERVED_OVER_ALLOCATED = 0.10
"""The caching allocator reserves more than it hands out (block rounding, fragmentation): reserved
is typically 5-20% over the allocated peak in training loops."""

# ---- glibc heap ---------------------------------------------------------------------------------
CPU_HEAP_FRAGMENTATION = 0.5
"""With ``malloc_tuning`` (no mmap, no trim), memory freed during the forward pass stays in the
heap, and part of it cannot be reused while tensors saved for backward sit above it. Measured with
glibc's ``mallinfo2`` around real steps: heap size minus the peak in use = 0.45-0.57 of the bytes
the recorded layers allocate and free during forward (LoRA, DoRA, QLoRA, full and freeze), in
steady state (second step on)."""

CPU_HEAP_FRAGMENTATION_GC = 0.4
"""The same with gradient checkpointing (forward runs twice, without and with saving)."""

CPU_DEQUANT_FRAGMENTATION = 1.0
"""QLoRA on the CPU: bitsandbytes dequantizes each 4-bit weight to float32 in forward and again in
backward; the heap grows by about one layer's dequantized weights per layer (measured: 1.0x on the
207M model, 2.3x on the 32M one, whose activations are larger than its weights)."""

CPU_HEAP_FRAGMENTATION_UNTUNED = 0.1
"""Without ``malloc_tuning`` glibc returns large freed blocks (mmap threshold) to the OS."""

# ---- fast paths: the chunked LM loss's own numbers (perf/__init__.py, which imports no torch) --
from ..perf import AUTO_LOGITS_BYTES as CHUNKED_AUTO_LOGITS_BYTES  # noqa: E402, F401
from ..perf import CHUNK_BYTES as CHUNK_LOGITS_BYTES  # noqa: E402, F401

# ---- time ---------------------------------------------------------------------------------------
STEP_OVERHEAD_SECONDS = 0.02
"""Per optimizer step, outside forward and backward: the HF Trainer's loop, the learning-rate
scheduler, the NaN check's device sync, callbacks."""

DEFAULT_BANDWIDTH = {"cpu": 10e9, "cuda": 2e12}
"""Elementwise bandwidth assumed with ``--tflops`` (no probe)."""
