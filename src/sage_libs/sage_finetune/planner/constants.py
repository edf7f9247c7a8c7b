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
# With ``malloc_tuning`` (no mmap, no trim) memory freed during a step stays in the heap, and part of
# it cannot be reused while tensors saved for backward sit above it: the heap ends larger than the
# peak of what is in use. Measured with glibc's ``mallinfo2`` around real steps (heap size minus the
# peak in use, from the second step on) and expressed as a share of the bytes each kind of layer
# allocates and frees during its forward (:func:`.activations._layer_bytes`):
CPU_FRAG_ADAPTER = 0.48
"""Layers whose base is frozen and that carry adapters (LoRA, DoRA, QLoRA): 0.44-0.49 measured."""

CPU_FRAG_ADAPTER_GC = 0.41
"""The same with gradient checkpointing (forward without saving, then recomputed): 0.40-0.42."""

CPU_FRAG_TRAINED = 0.57
"""Layers whose weights train (full, freeze's last layers)."""

CPU_FRAG_TRAINED_GC = 1.0
"""The same with gradient checkpointing: the weight gradients, allocated layer by layer during
backward between recomputed activations, keep the heap growing for a few steps (0.8x after two,
1.1x after three steps)."""

CPU_FRAG_NOGRAD = 0.2
"""Layers below the first trained one (freeze): nothing is kept, but their freed blocks sit below
the trained layers' saved tensors."""

CPU_LOSS_BLOCKS_REGROWN = 1.0
"""With ``malloc_tuning`` the loss's large blocks (the logits at the trained positions and their
gradients, or the chunked loss's chunk and its gradient) are allocated again in every step, but the
holes the first step's left are partly taken by what was allocated meanwhile and lives on (weight
gradients, optimizer states): from the second step on the heap grows by about their size.
Measured with benchmarks/plan_validation.py --seed 1 (3 steps; peak RSS missing from the prediction
against the loss's transient blocks): #01 205 vs 188 MB, #06 333 vs 331, #07 345 vs 400, #12 120 vs
184. Untuned, blocks over :data:`RETURNED_BLOCK_BYTES` are mapped and returned instead. Since the
chunked loss reuses one buffer for every chunk, only what lives on can take the holes: the growth is
at most the weight gradients and optimizer states (a LoRA run of plan_validation --seed 13 #19 held
its step-1 peak, 1474 MB, through 4 steps with a 256 MiB loss buffer; a full fine-tune, #16, grew
from 1611 to 1905 MB in step 2)."""

CPU_OPTIMIZER_TEMPS_REGROWN = 1.0
"""The same for the optimizer step's temporaries (single-tensor AdamW: the square root and the
quotient of one weight, 2 x the largest trainable weight): in full fine-tuning with a large
vocabulary (a 128k x 1024 embedding and head: two 525 MB blocks) each step allocates them anew above
the previous step's, until glibc's trim threshold (2 GiB with the tuning) returns the top of the heap.
Measured with benchmarks/plan_validation.py --seed 2026 #05 over 10 steps: RSS at the optimizer
step 5.9, 6.4, 6.9, 7.9, 7.9, 6.9, 7.4, 7.4 GB with 3.4 GB of tensors before it and 4.4 GB during."""

CPU_FRAG_UNTUNED = 0.1
"""With ``malloc_tuning`` off freed blocks over :data:`RETURNED_BLOCK_BYTES` go back to the OS (a
fixed mmap threshold, perf.allocator). Used when the widest activation is above it; below it the
heap keeps freed blocks as the tuned one does. (Measured with glibc's dynamic threshold on the four
gradient-checkpointing rows of benchmarks/plan_accuracy.py, untuned: 2119/2124/3570/2152 MB against
2212/2133/3814/2215 tuned; not re-measured with the fixed one, which returns more.)"""

from ..perf import GLIBC_MMAP_THRESHOLD_MAX  # noqa: E402, F401 (one number, decided in perf)
from ..perf.allocator import RETURNED_BLOCK_BYTES  # noqa: E402, F401

CPU_DEQUANT_FRAGMENTATION = 0.5
"""QLoRA on the CPU: bitsandbytes dequantizes each 4-bit weight to float32 in forward and again in
backward; the heap grows by about one layer's dequantized weights per layer (measured: 1.0x on the
207M model, 2.3x on the 32M one, whose activations are larger than its weights)."""

# ---- fast paths: the chunked LM loss's own numbers (perf/__init__.py, which imports no torch) --
from ..perf import CHUNK_BYTES as CHUNK_LOGITS_BYTES  # noqa: E402, F401

# ---- time ---------------------------------------------------------------------------------------
STEP_OVERHEAD_SECONDS = 0.02
"""Per optimizer step, outside forward and backward: the HF Trainer's loop, the learning-rate
scheduler, the NaN check's device sync, callbacks."""

DEFAULT_BANDWIDTH = {"cpu": 10e9, "cuda": 2e12}
"""Elementwise bandwidth assumed with ``--tflops`` (no probe)."""

DEFAULT_OP_SECONDS = {"cpu": 8e-6, "cuda": 6e-6}
"""Cost of one small tensor operation assumed with ``--tflops`` (CPU: dispatch and autograd; CUDA:
a kernel launch)."""

CPU_RANDOM_SECONDS = 9e-9
"""One random number (a CPU dropout mask element) with ``--tflops``: 7-12 ns measured here."""

PROBE_NOMINAL_FLOPS = {"cpu": 175e9, "cuda": 100e12}
"""The rate that sizes the probe's mini step (about a tenth of its budget at this rate): the matmul
rate of the development machine's two cores in float32, and a round figure for a GPU."""

PROBE_MINI_STEP_EFFICIENCY = {1: 0.85, 2: 1.05}
"""The probe's one-layer step, measured against the cost model, divided by the same ratio for full
training steps, on the development machine: with one thread (CPU seconds) the mini step ran at
0.80-1.02 of the model (median 0.84) and full steps at 0.8-1.2 of it; with two or more threads (wall
clock, machine otherwise idle) the mini step ran at 0.80-1.0 and full steps at 0.76-0.95 (thread
synchronisation of a full step's many operations). The probe's efficiency factor is its mini
step's ratio divided by this reference (key: 1 thread, 2 or more)."""
