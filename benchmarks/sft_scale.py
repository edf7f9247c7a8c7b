"""Gradient checkpointing at long lengths: peak memory and step time of one training step with
checkpointing off, on every decoder layer, and on every n-th layer, on padding-free rows.

    python benchmarks/sft_scale.py                               # 2048 and 8192 tokens, 4 layers
    python benchmarks/sft_scale.py --layers 24 --seqs 2048       # the full depth (slow on 2 cores)

Workload (built locally from config, seeded; nothing is downloaded): a Qwen2-0.5B-shaped model
(hidden 896, 14 heads / 2 kv heads, intermediate 4864, vocab 129280 (DeepSeek-V3's), tied
embeddings, fp32) with ``--layers`` decoder layers (4; Qwen2-0.5B has 24), LoRA r=16 on every
linear projection, per-document attention installed as the trainer does. One padding-free row of
``seq`` tokens made of several documents (a long conversation at 8192: documents of 4096, 2048,
1024, 512, 512 tokens; at 2048: 1024, 512, 256, 256), the second half of every document trained
(assistant replies), AdamW over the LoRA parameters. The fast paths are decided and installed as
the trainer does (``perf.plan_fast_paths`` / ``install_fast_paths`` with default options: selective
logits, chunked LM loss by size, per-document attention, malloc tuning); ``--chunked-lm-loss off``
measures the unchunked head and loss instead (what this script measured before it asked the planner:
~4 float32 copies of the ``(trained tokens, vocab)`` logits, 8 GB of the 9.5 GB one layer added at
8192 tokens). Variants, each in its own interpreter (peak RSS = that run's VmHWM), alternated:

* ``none``: no checkpointing;
* ``full``: every decoder layer checkpointed (``training.gradient_checkpointing: true``:
  ``activation_checkpointing_enable(use_reentrant=False)``);
* ``every2``: every second layer (transformers' ``every_n_layers=2``).

A run whose RSS passes ``--rss-limit-gb`` (default: the memory available when it starts, less 1.5 GB)
is stopped and recorded as out of memory.

Per run: RSS before the first step, peak RSS, what the steps added, step time (median of
``--steps`` after one warm-up step) and the first loss (equal across variants).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VARIANTS = ("none", "full", "every2")
DOCS = {8192: (4096, 2048, 1024, 512, 512), 2048: (1024, 512, 256, 256)}


def _rss_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _mem_available_mb() -> float:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def start_rss_guard(limit_mb: float | None) -> float:
    """Stop this process (exit 99, printing ``OOM-GUARD``) when its RSS passes ``limit_mb``; None:
    what the machine has available now less 1.5 GB, plus what this process holds. On a shared
    machine a run that would exhaust memory is recorded as out of memory instead of waking the
    kernel's OOM killer (which might pick someone else's process)."""
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


def _docs(seq: int) -> tuple[int, ...]:
    if seq in DOCS:
        return DOCS[seq]
    return (seq // 2, seq // 4, seq - seq // 2 - seq // 4)


def run_one(variant: str, seq: int, layers: int, steps: int, threads: int, chunked: str = "auto") -> dict:
    from types import SimpleNamespace

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    from sage_libs.sage_finetune.data.collate import PackedCollator
    from sage_libs.sage_finetune.perf import install_fast_paths, plan_fast_paths
    from sage_libs.sage_finetune.perf.selective_logits import selective_causal_lm_loss

    torch.set_num_threads(threads)
    limit = start_rss_guard(float(os.environ["SAGE_BENCH_RSS_LIMIT_MB"]) if os.environ.get("SAGE_BENCH_RSS_LIMIT_MB")
                            else None)
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=layers, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=129280, max_position_embeddings=max(seq, 32768),
                         rope_theta=1e6, tie_word_embeddings=True, use_cache=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    # the trainer's one decision (default options, padding-free rows), installed as the trainer does
    training = SimpleNamespace(chunked_lm_loss={"auto": None, "on": True, "off": False}[chunked], use_cpu=True)
    paths = install_fast_paths(model, plan_fast_paths(model, training, SimpleNamespace(padding_free=True)))
    assert paths.selective_logits and paths.doc_attention and paths.padding_free, paths.describe()
    if variant != "none":
        every = 1 if variant == "full" else int(variant.removeprefix("every"))
        model.get_base_model().activation_checkpointing_enable({"use_reentrant": False}, every_n_layers=every)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    examples = []
    for n in _docs(seq):
        ids = torch.randint(0, 128000, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (n - n // 2) + ids[n - n // 2:]})
    batch = PackedCollator(pad_token_id=1, flatten=True)(examples)
    assert batch["input_ids"].shape == (1, seq)
    rss_before = _rss_mb("VmRSS")
    times, losses = [], []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = selective_causal_lm_loss(model, dict(batch), chunked=paths.chunked_lm_loss)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    peak = _rss_mb("VmHWM")
    return {"variant": variant, "seq": seq, "fast_paths": paths.describe(),
            "rss_before_mb": round(rss_before, 1), "peak_rss_mb": round(peak, 1),
            "step_added_mb": round(peak - rss_before, 1), "step_s_median": round(statistics.median(times[1:]), 3),
            "step_s_all": [round(t, 3) for t in times], "first_loss": losses[0],
            "loadavg": [round(x, 2) for x in os.getloadavg()], "rss_limit_mb": round(limit)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="2048,8192", help="row lengths (tokens), comma-separated")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--repeats", type=int, default=1, help="runs per variant (alternated); medians reported")
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--chunked-lm-loss", choices=("auto", "on", "off"), default="auto",
                    help="training.chunked_lm_loss (auto: null, the default: on by size)")
    ap.add_argument("--rss-limit-gb", type=float, default=None,
                    help="stop a run whose RSS passes this and record it as out of memory (default: what the "
                         "machine has available when the run starts, less 1.5 GB)")
    ap.add_argument("--out", default=str(HERE / "results" / "sft_scale_checkpointing.json"))
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_seq", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_one(args._child, args._seq, args.layers, args.steps, args.threads, args.chunked_lm_loss)))
        return
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               SAGE_BENCH_RSS_LIMIT_MB=str(args.rss_limit_gb * 1024) if args.rss_limit_gb else "",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    variants = [v for v in args.variants.split(",") if v]
    seqs = [int(s) for s in args.seqs.split(",") if s]
    runs: dict[str, dict[str, list[dict]]] = {str(s): {v: [] for v in variants} for s in seqs}
    load_before = [round(x, 2) for x in os.getloadavg()]
    for rep in range(args.repeats):
        for seq in seqs:
            for v in (variants if rep % 2 == 0 else variants[::-1]):
                cmd = [sys.executable, __file__, "--_child", v, "--_seq", str(seq), "--layers", str(args.layers),
                       "--steps", str(args.steps), "--threads", str(args.threads),
                       "--chunked-lm-loss", args.chunked_lm_loss]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                guard = [line for line in proc.stdout.splitlines() if line.startswith("OOM-GUARD")]
                if guard or proc.returncode in (-9, 137):
                    r = {"variant": v, "seq": seq, "failed": "out of memory",
                         "detail": guard[-1] if guard else f"killed (exit {proc.returncode})"}
                elif proc.returncode != 0:
                    r = {"variant": v, "seq": seq, "failed": f"exit {proc.returncode}", "stderr": proc.stderr[-2000:]}
                else:
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[str(seq)][v].append(r)
                print(json.dumps(r), flush=True)
    summary: dict[str, dict] = {}
    for seq, by_variant in runs.items():
        s = summary[seq] = {}
        for v, rs in by_variant.items():
            ok = [r for r in rs if "failed" not in r]
            if not ok:
                s[v] = {"failed": rs[0].get("failed") if rs else "not run"}
                continue
            s[v] = {k: statistics.median(r[k] for r in ok)
                    for k in ("rss_before_mb", "peak_rss_mb", "step_added_mb", "step_s_median")}
            s[v]["first_loss"] = ok[0]["first_loss"]
        base = s.get("none", {})
        for v in variants:
            if v != "none" and "peak_rss_mb" in s.get(v, {}) and "peak_rss_mb" in base:
                s[f"{v}_vs_none"] = {"peak_rss_ratio": round(s[v]["peak_rss_mb"] / base["peak_rss_mb"], 3),
                                     "step_added_ratio": round(s[v]["step_added_mb"] / base["step_added_mb"], 3),
                                     "step_time_ratio": round(s[v]["step_s_median"] / base["step_s_median"], 3)}
    result = {"benchmark": "sft_scale_checkpointing", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "python benchmarks/sft_scale.py " + " ".join(sys.argv[1:]),
              "workload": {"model": "Qwen2-0.5B shape from config: hidden 896, 14/2 heads, intermediate 4864, "
                                    "vocab 129280, tied, fp32, LoRA r=16 all-linear, per-document attention, "
                                    "one padding-free row, second half of each document trained",
                           "layers": args.layers, "seqs": seqs, "docs": {str(s): list(_docs(s)) for s in seqs},
                           "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                           "chunked_lm_loss": args.chunked_lm_loss},
              "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                          "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
              "summary": summary, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
