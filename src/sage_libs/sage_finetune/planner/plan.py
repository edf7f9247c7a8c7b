"""A trainer's configs and data -> a :class:`Plan`: peak memory, time per step and per epoch, and
what to change to fit a memory budget. No weights are loaded: the model's ``config.json`` gives
its shapes, the run's own data preparation (tokenizer only, through the tokenized-data cache)
gives the token lengths."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..perf import malloc_tuning_for, resolve_group_by_length, widest_activation_bytes
from ..perf.decide import fused_lora_for, fused_norms_for, padding_free_for
from ..models.files import gguf_source
from ..utils.processes import run_device
from . import constants as C
from .batches import Lengths, largest_batch, lengths_of
from .memory import plan_memory, smaller_first_loss_block
from .shapes import GIB, MIB, Batch, MemoryPlan, RunShape
from .spec import ModelSpec, dtype_bytes, weights_file_bytes
from .step_time import TimePlan, time_plan
from .suggest import Option, suggestions
from .timing import Throughput

__all__ = ["Plan", "TimePlan", "Option", "plan_trainer", "plan_from_lengths", "run_shape", "parse_memory",
           "available_memory", "format_bytes"]


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
_UNITS = {"": GIB, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": MIB, "mb": MIB, "mib": MIB,
          "g": GIB, "gb": GIB, "gib": GIB, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_memory(text: str | int | float) -> int:
    """``24GB``, ``24GiB``, ``24g``, ``512MB``, ``24`` (GiB) -> bytes. GB and GiB both mean 2**30 bytes
    (a "24GB" GPU holds 24 GiB)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        from ..config import ConfigError

        raise ConfigError(f"--memory {text!r}: expected a size such as 24GB, 80GiB or 512MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.0f} MiB"


def _cgroup_limit() -> int | None:
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(limit).read_text().strip()
            if raw == "max" or int(raw) > 2**60:
                return None
            used = int(Path(usage).read_text().strip())
            return max(int(raw) - used, 0)
        except (OSError, ValueError):
            continue
    return None


def available_memory(device: str) -> tuple[int | None, str]:
    """(bytes a new training process can use, where the number comes from)."""
    if device == "cuda":
        try:
            import torch

            free, total = torch.cuda.mem_get_info()
            return int(free), f"free on {torch.cuda.get_device_name()} ({format_bytes(total)} total)"
        except Exception:  # noqa: BLE001
            return None, "unknown (no CUDA device)"
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    cg = _cgroup_limit()
    if cg is not None and (avail is None or cg < avail):
        return cg, "cgroup memory limit"
    return avail, "MemAvailable" if avail is not None else "unknown"


# ------------------------------------------------------------------------------------------------
# Configs -> RunShape
# ------------------------------------------------------------------------------------------------
def _zero(deepspeed: Any) -> tuple[int, bool]:
    if not deepspeed:
        return 0, False
    cfg = deepspeed
    if isinstance(deepspeed, str):
        try:
            cfg = json.loads(Path(deepspeed).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0, False
    zero = (cfg or {}).get("zero_optimization", {}) or {}
    stage = zero.get("stage", 0)
    offload = (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
    return (int(stage) if str(stage).isdigit() else 0), offload


def _doc_attention_ok(spec: ModelSpec, config: dict | None) -> bool:
    """Mirror of ``perf.doc_attention.doc_attention_supported`` from config.json alone."""
    config = config or {}
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    if text is not config:
        return False
    if text.get("attention_chunk_size"):
        return False
    if text.get("sliding_window") and text.get("use_sliding_window", True):
        return False
    layer_types = text.get("layer_types")
    return not (layer_types and any(t != "full_attention" for t in layer_types))


def run_shape(trainer: Any, spec: ModelSpec, device: str, processes: int = 1,
              model_config: dict | None = None) -> RunShape:
    """The :class:`RunShape` of a trainer's configs on ``device``."""
    from ..models.precision import base_weights_dtype

    inner = getattr(trainer, "inner", trainer)
    tc, dc = inner.training_config, inner.data_config
    method = getattr(inner, "method", "lora")
    lc = getattr(inner, "lora_config", None)
    qc = getattr(inner, "quantization_config", None)
    fc = getattr(inner, "freeze_config", None)
    wdtype = base_weights_dtype(tc.model_dtype, bf16=tc.bf16, frozen_base=bool(getattr(inner, "frozen_base", False)))
    wdtype = spec.dtype if wdtype == "auto" else wdtype
    autocast = 2 if (tc.bf16 or tc.fp16) else None
    attn = tc.attn_implementation or "sdpa"
    padding_free = padding_free_for(dc, attn_implementation=attn, device=device,
                                    doc_attention_ok=attn == "sdpa" and _doc_attention_ok(spec, model_config))
    attention = attn
    if padding_free or dc.packing:
        if device == "cpu" and attn == "sdpa" and _doc_attention_ok(spec, model_config):
            attention = "doc"
    stage, offload = _zero(tc.deepspeed)
    sharded = stage == 3 or bool(getattr(tc, "fsdp", None))  # weights split over processes: no per-module fusion
    mmap = wdtype == spec.dtype and (Path(str(tc.model_name_or_path)).expanduser().is_dir()
                                     or gguf_source(str(tc.model_name_or_path), tc.gguf_file) is not None)
    run = RunShape(method=method, device=device, processes=max(int(processes), 1),
                   weight_bytes=dtype_bytes(wdtype), autocast_bytes=autocast,
                   gradient_checkpointing=tc.gradient_checkpointing, selective_logits=tc.selective_logits,
                   chunked_lm_loss=tc.chunked_lm_loss, attention=attention, padding_free=bool(padding_free),
                   packing=dc.packing, optim=tc.optim, zero_stage=stage, zero_offload=offload,
                   malloc_tuning=malloc_tuning_for(tc, widest_activation_bytes(tc, spec.hidden_size,
                                                                               spec.intermediate_size))
                   and os.environ.get("SAGE_FINETUNE_MALLOC_TUNING", "1").lower()
                   not in ("0", "false", "no", "off"),
                   lora_dropout_cpu=device == "cpu", mmap_weights=mmap,
                   fused_norms=fused_norms_for(tc, device=device, compile_layers=bool(tc.compile_layers),
                                               sharded=sharded))
    if method in ("lora", "qlora", "dora", "lora_plus") and lc is not None:
        run.lora_r, run.lora_targets, run.lora_dropout = lc.r, lc.resolved_target_modules, lc.lora_dropout
        run.use_dora = bool(lc.use_dora) or method == "dora"
        run.lora_layers = lc.layers_to_transform
        run.modules_to_save = list(lc.modules_to_save or [])
        run.lora_bias = lc.bias
        # perf/fused_lora switches plain LoRA linears (not DoRA, not a quantized base) outside autocast
        run.fused_lora = (fused_lora_for(tc, device=device, compile_layers=bool(tc.compile_layers), sharded=sharded)
                          and not run.use_dora and method != "qlora" and not run.autocast_bytes)
    if method == "qlora":
        qc = qc or __import__("sage_libs.sage_finetune.config", fromlist=["QuantizationConfig"]).QuantizationConfig()
        run.quant_bits = 8 if qc.load_in_8bit else 4
        run.double_quant = bool(qc.bnb_4bit_use_double_quant)
        compute = qc.bnb_4bit_compute_dtype or ("float32" if device == "cpu" else "bfloat16")
        run.autocast_bytes = run.autocast_bytes or (dtype_bytes(compute) if compute != "float32" else None)
        run.weight_bytes = 4 if device == "cpu" and run.weight_bytes == 4 else run.weight_bytes
    if method == "freeze" and fc is not None:
        run.freeze_layers, run.train_embeddings, run.train_lm_head = (fc.trainable_layers, fc.train_embeddings,
                                                                       fc.train_lm_head)
    return run


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    spec: ModelSpec
    run: RunShape
    lengths: Lengths
    batch: Batch
    memory: MemoryPlan
    time: TimePlan | None
    budget: int | None
    budget_source: str
    batch_size: int
    grad_accum: int
    max_seq_length: int
    model: str
    options: list[Option] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    preference: bool = False  # lengths are pairs: chosen + rejected, each cut at max_seq_length
    group_by_length: bool = False  # the sampler batches samples of similar length (perf.resolve_group_by_length)

    @property
    def peak(self) -> int:
        return self.memory.peak

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.memory.needed <= self.budget

    @property
    def overrides(self) -> list[str]:
        """The overrides of the first suggestion that fits (empty when the run fits as it is)."""
        if self.fits is not False:
            return []
        for option in self.options:
            if option.fits and option.overrides:
                return option.overrides
        return []

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "device": self.run.device, "processes": self.run.processes,
               "method": self.run.method, "peak_bytes": self.memory.peak, "phase": self.memory.phase,
               "components": self.memory.components, "details": self.memory.details,
               "budget_bytes": self.budget, "budget_source": self.budget_source, "fits": self.fits,
               "largest_batch": dataclasses.asdict(self.batch) | {"doc_lengths": None},
               "samples": len(self.lengths), "tokens": self.lengths.total_tokens,
               "options": [dataclasses.asdict(o) for o in self.options], "overrides": self.overrides,
               "notes": self.notes + self.memory.notes}
        if self.time is not None:
            t = self.time
            out["time"] = {"step_seconds": t.step_seconds, "largest_step_seconds": t.largest_step_seconds,
                           "epoch_seconds": t.epoch_seconds, "steps_per_epoch": t.steps_per_epoch,
                           "total_steps": t.total_steps, "total_seconds": t.total_seconds,
                           "epoch_flops": t.epoch_flops,
                           "throughput": dataclasses.asdict(t.throughput) if t.throughput else None}
        return out

    # -- text ------------------------------------------------------------------------------------
    def render(self) -> str:
        from .report import render_plan

        return render_plan(self)

    def __str__(self) -> str:
        return self.render()


def plan_from_lengths(spec: ModelSpec, run: RunShape, lengths: Lengths, *, batch_size: int, grad_accum: int = 1,
                      budget: int | None = None, budget_source: str = "given", throughput: Throughput | None = None,
                      epochs: float = 1.0, max_steps: int = -1, seed: int = 42, group_by_length: bool = False,
                      weights_file: int | None = None, model: str = "", max_seq_length: int | None = None,
                      baseline: int | None = None, suggest: bool = True, preference: bool = False) -> Plan:
    """The plan of ``run`` over data of these ``lengths`` (what :func:`plan_trainer` computes once
    the configs and the data are read)."""
    max_len = max_seq_length or lengths.max_seq_length
    batch = largest_batch(lengths, batch_size, padding_free=run.padding_free, max_seq_length=max_len)
    memory = plan_memory(spec, run, batch, weights_file=weights_file, baseline=baseline,
                         embedding_rows=lengths.distinct_tokens,
                         smaller_first_block=smaller_first_loss_block(
                             spec, run, lengths, batch_size, seed=seed, group_by_length=group_by_length,
                             max_seq_length=max_len))
    time = None
    if throughput is not None:
        time = time_plan(spec, run, lengths, batch_size=batch_size, grad_accum=grad_accum, tp=throughput,
                         epochs=epochs, max_steps=max_steps, seed=seed, group_by_length=group_by_length,
                         largest=batch, trainable=memory.details["trainable_params"], max_seq_length=max_len,
                         preference=preference)
    plan = Plan(spec=spec, run=run, lengths=lengths, batch=batch, memory=memory, time=time, budget=budget,
                budget_source=budget_source, batch_size=batch_size, grad_accum=grad_accum,
                max_seq_length=max_len, model=model, notes=list(spec.notes), preference=preference,
                group_by_length=group_by_length)
    if preference:
        plan.notes.append("preference pairs: chosen and rejected in one forward, plus the reference forward")
    if suggest:
        plan.options = suggestions(plan, weights_file=weights_file, baseline=baseline, epochs=epochs,
                                   max_steps=max_steps, seed=seed, group_by_length=group_by_length,
                                   preference=preference)
    return plan


def plan_trainer(trainer: Any, train_dataset: Any = None, *, device: str | None = None, memory: Any = None,
                 processes: int | None = None, probe: bool = True, throughput: Throughput | None = None,
                 tflops: float | None = None, suggest: bool = True, dataset: Any = None) -> Plan:
    """The plan of ``trainer``'s run on ``train_dataset`` (default ``data.train_file``), without
    loading any weight. ``device``: ``cpu`` or ``cuda`` (default: where training would run);
    ``memory``: the budget (``"24GB"`` or bytes; default: what is available now); ``processes``:
    data-parallel processes (default ``$WORLD_SIZE`` or 1); ``probe``: measure this machine's
    throughput (~2 s) for the time estimate; ``tflops``: use this matmul throughput instead;
    ``dataset``: the already prepared training dataset (skips data preparation)."""
    from ..config import ConfigError
    from ..models.files import check_local_path_exists, resolve_model
    from .probe import run_probe
    from .spec import read_model_config

    inner = getattr(trainer, "inner", trainer)
    tc, dc = inner.training_config, inner.data_config
    check_local_path_exists(tc.model_name_or_path)  # the message train gives for a missing model folder
    # a GGUF base: the config.json of its conversion (tokenizer and config only, unless converted already)
    model_dir = resolve_model(tc.model_name_or_path, tc.gguf_file, weights=False)
    try:
        config = read_model_config(model_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"plan: training.model_name_or_path: {exc}") from None
    spec = ModelSpec.from_config(config)
    if device is None:
        device = run_device(tc)
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"plan: --device {device!r}: expected cpu or cuda")
    processes = processes or int(os.environ.get("WORLD_SIZE", "1"))
    run = run_shape(trainer, spec, device, processes, config)
    if dataset is None:
        data = train_dataset if train_dataset is not None else dc.train_file
        if data is None:
            raise ConfigError("plan: no training data; set data.train_file or pass train_dataset")
        inner.setup_tokenizer()
        dataset = inner.prepare_dataset(data, "train")
    stats = (getattr(inner, "data_stats", {}) or {}).get("train", {})
    lengths = lengths_of(dataset, tc.max_seq_length, packed=dc.packing, stats=stats)
    if memory is None:
        budget, source = available_memory(device)
    else:
        budget, source = parse_memory(memory), "given"
    if throughput is None and tflops:
        bandwidth = C.DEFAULT_BANDWIDTH[device]
        throughput = Throughput(matmul_flops=tflops * 1e12, attention_flops=tflops * 0.25e12, bandwidth=bandwidth,
                                op_seconds=C.DEFAULT_OP_SECONDS[device],
                                random_seconds=8.0 / bandwidth if device == "cuda" else C.CPU_RANDOM_SECONDS,
                                source=f"given: {tflops} TFLOP/s")
    if throughput is None and probe:
        dtype = "bfloat16" if run.autocast_bytes == 2 and tc.bf16 else "float16" if tc.fp16 else (
            "float32" if run.weight_bytes == 4 else spec.dtype)
        try:
            docs = [d for row in lengths.doc_lengths for d in row] if lengths.doc_lengths else lengths.lengths
            median = sorted(docs)[len(docs) // 2] if docs else 512
            largest = largest_batch(lengths, tc.per_device_train_batch_size, padding_free=run.padding_free)
            throughput = run_probe(spec, run, doc_length=median, tokens=largest.tokens, dtype=dtype, device=device)
        except Exception as exc:  # noqa: BLE001 - no probe, no time estimate; the memory plan stands
            import logging

            logging.getLogger(__name__).warning(
                "plan: the throughput probe failed (%s); no time estimate (give the device's matmul throughput "
                "instead: --tflops N, or trainer.plan(tflops=N))", exc)
    preference = getattr(inner, "preference_config", None) is not None
    plan = plan_from_lengths(spec, run, lengths, batch_size=tc.per_device_train_batch_size,
                             grad_accum=tc.gradient_accumulation_steps, budget=budget, budget_source=source,
                             throughput=throughput, epochs=tc.num_train_epochs, max_steps=tc.max_steps,
                             seed=tc.seed, group_by_length=resolve_group_by_length(dc, run.padding_free),
                             weights_file=weights_file_bytes(model_dir), model=tc.model_name_or_path,
                             suggest=suggest, preference=preference)
    note = bf16_note(tc, run, plan.memory.components.get("base_weights", 0), bool(getattr(inner, "frozen_base", False)))
    if note:
        plan.notes.append(note)
    return plan


def bf16_note(tc: Any, run: RunShape, base_weight_bytes: int, frozen_base: bool) -> str | None:
    """The suggestion of ``training.bf16`` on a CPU with bfloat16 instructions, for a frozen float32
    base (:mod:`..models.precision`), or None."""
    from ..models.precision import cpu_native_bf16

    if run.device != "cpu" or tc.bf16 or tc.fp16 or not frozen_base or run.weight_bytes != 4 or run.quant_bits:
        return None
    native, flag = cpu_native_bf16()
    if not native:
        return None
    return (f"this CPU has {flag}: training.bf16: true (with use_cpu: true) holds the frozen base in bfloat16 "
            f"({base_weight_bytes / 2 / GIB:.2f} GiB less) and runs its matmuls in bfloat16 (see docs/performance.md)")


