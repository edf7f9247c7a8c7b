"""The shapes a memory plan is made of: the run's settings (:class:`RunShape`), one micro-batch
(:class:`Batch`) and the plan itself (:class:`MemoryPlan`). Pure data: no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["GIB", "MIB", "RunShape", "Batch", "MemoryPlan"]

GIB = 2**30
MIB = 2**20


@dataclass
class RunShape:
    """The settings of a run that change its memory and time (resolved from the configs by
    :func:`.plan.run_shape`)."""

    method: str = "lora"                 # lora, qlora, dora, lora_plus, full, freeze
    device: str = "cpu"                  # cpu or cuda
    processes: int = 1
    weight_bytes: int = 4                # bytes per base weight (the loaded dtype)
    autocast_bytes: int | None = None    # 2 under bf16/fp16 mixed precision
    quant_bits: int | None = None        # 4 or 8 (qlora)
    double_quant: bool = True
    lora_r: int = 8
    lora_targets: Any = ("q_proj", "v_proj")   # list of names or "all-linear"
    lora_dropout: float = 0.05
    use_dora: bool = False
    lora_layers: list[int] | None = None      # layers_to_transform
    modules_to_save: list[str] = field(default_factory=list)
    lora_bias: str = "none"
    freeze_layers: int = 2
    train_embeddings: bool = False
    train_lm_head: bool = False
    gradient_checkpointing: bool = False
    selective_logits: bool = True
    chunked_lm_loss: bool | None = None
    attention: str = "doc"               # doc (per-document sdpa), sdpa, eager, flash_attention_2
    padding_free: bool = True
    packing: bool = False
    optim: str = "adamw_torch"
    zero_stage: int = 0
    zero_offload: bool = False
    malloc_tuning: bool = True
    lora_dropout_cpu: bool = True        # CPU dropout keeps a float mask (GPU: a bool mask)
    fused_lora: bool = False             # perf/fused_lora: the adapted input kept once, a bool mask per module
    fused_norms: bool = False            # perf/fused_norm: RMSNorm's normalized input is its output (multiplied in place)
    mmap_weights: bool = True            # CPU: the checkpoint is read at its own dtype (memory-mapped)

    @property
    def is_lora(self) -> bool:
        return self.method in ("lora", "qlora", "dora", "lora_plus")

    @property
    def act_bytes(self) -> int:
        """Bytes of matmul outputs (activations)."""
        return self.autocast_bytes or self.weight_bytes

    @property
    def compute_weight_bytes(self) -> int:
        return self.autocast_bytes or self.weight_bytes


@dataclass
class Batch:
    """One micro-batch as the collator builds it: ``rows`` rows of ``row_len`` positions (padding
    included), the documents in it, and the positions whose next token is trained."""

    rows: int
    row_len: int
    doc_lengths: list[int]
    trained: int
    pairs: float | None = None   # attended (query, key) pairs, when given (an epoch's total)
    docs: int | None = None      # documents, when doc_lengths is not listed

    @property
    def tokens(self) -> int:
        return self.rows * self.row_len

    @property
    def n_docs(self) -> int:
        return self.docs if self.docs is not None else len(self.doc_lengths)

    @property
    def real_tokens(self) -> int:
        return sum(self.doc_lengths)


@dataclass
class MemoryPlan:
    """Bytes of each component; ``peak`` is what the run needs at its worst moment."""

    components: dict[str, int]
    peak: int
    device: str
    phase: str                       # where the peak falls: "loss", "backward", "optimizer", "load", "save"
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def needed(self) -> int:
        """The peak without what the kernel can reclaim (clean checkpoint pages QLoRA no longer reads)."""
        return self.peak - int(self.details.get("reclaimable", 0))

    def gib(self, key: str = "peak") -> float:
        return (self.peak if key == "peak" else self.components[key]) / GIB
