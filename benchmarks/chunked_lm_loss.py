"""Peak memory and time of one training step with a ~128k vocabulary: chunked LM loss on vs off.

    python benchmarks/chunked_lm_loss.py                 # ~3-5 min on 2 cores; writes benchmarks/results/chunked_lm_loss.json
    python benchmarks/chunked_lm_loss.py --seq 512 --steps 2     # quicker

Workload (built locally from config, seeded; nothing is downloaded): a Qwen2-shaped model with
hidden 896, ``--layers`` layers (2), 14 heads / 2 kv heads, intermediate 4864, vocab 129280
(DeepSeek-V3's), untied head, fp32 (~0.3B parameters, almost all in the embeddings and the head);
LoRA r=16 on every projection (the head frozen), one row of ``--seq`` tokens (2048), every
next-token label trained; AdamW over the LoRA parameters. Variants, each in its own interpreter
(so the peak RSS is that run's alone), runs alternated, same torch threads:

* ``hf``: the model's own forward with ``labels`` (logits at every position, transformers' loss);
* ``selective``: our selective path, ``training.chunked_lm_loss: false`` (logits at the trained
  positions only, all at once);
* ``chunked``: ``training.chunked_lm_loss: true`` (:mod:`sage_finetune.perf.chunked_ce`;
  gradients computed in the forward pass, Liger's schedule, the default);
* ``chunked_recompute``: the same with ``recompute=True`` (logits computed again in backward, Cut
  Cross-Entropy's schedule).

Per run: peak RSS of the process (``VmHWM``), the RSS before the first step (model and optimizer
built), their difference (what the steps added), the median step time over ``--steps`` steps after
one warm-up step (forward, backward, optimizer step), and the loss of the first step (equal across
variants). Compare ratios within one run of this script: the machine may be shared.
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
VARIANTS = ("hf", "selective", "chunked", "chunked_recompute")


def _rss_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(variant: str, seq: int, layers: int, steps: int, threads: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    from sage_libs.sage_finetune.perf import chunked_ce as _chunked_ce
    from sage_libs.sage_finetune.perf.allocator import tune_malloc
    from sage_libs.sage_finetune.perf.selective_logits import selective_causal_lm_loss

    if variant == "chunked_recompute":
        import functools

        _chunked_ce.chunked_linear_cross_entropy = functools.partial(_chunked_ce.chunked_linear_cross_entropy,
                                                                     recompute=True)

    torch.set_num_threads(threads)
    tune_malloc()  # as the trainer does by default
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=layers, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=129280, max_position_embeddings=max(seq, 4096),
                         tie_word_embeddings=False, use_cache=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (1, seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    rss_before = _rss_mb("VmRSS")
    times, losses = [], []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        if variant == "hf":
            loss = model(**batch).loss
        else:
            loss = selective_causal_lm_loss(model, dict(batch), chunked=variant.startswith("chunked"))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    peak = _rss_mb("VmHWM")
    return {"variant": variant, "rss_before_mb": round(rss_before, 1), "peak_rss_mb": round(peak, 1),
            "step_added_mb": round(peak - rss_before, 1), "step_s_median": round(statistics.median(times[1:]), 3),
            "step_s_all": [round(t, 3) for t in times], "first_loss": losses[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--repeats", type=int, default=1, help="runs per variant (alternated); medians reported")
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(HERE / "results" / "chunked_lm_loss.json"))
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_one(args._child, args.seq, args.layers, args.steps, args.threads)))
        return
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    runs: dict[str, list[dict]] = {v: [] for v in args.variants.split(",")}
    for _ in range(args.repeats):
        for v in runs:
            cmd = [sys.executable, __file__, "--_child", v, "--seq", str(args.seq), "--layers", str(args.layers),
                   "--steps", str(args.steps), "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            runs[v].append(r)
            print(json.dumps(r), flush=True)
    summary = {}
    for v, rs in runs.items():
        summary[v] = {k: statistics.median(r[k] for r in rs)
                      for k in ("rss_before_mb", "peak_rss_mb", "step_added_mb", "step_s_median")}
        summary[v]["first_loss"] = rs[0]["first_loss"]
    for v in ("chunked", "chunked_recompute"):
        if v in summary and "selective" in summary:
            c, s = summary[v], summary["selective"]
            summary[f"{v}_vs_selective"] = {"peak_rss_ratio": round(c["peak_rss_mb"] / s["peak_rss_mb"], 3),
                                            "step_added_ratio": round(c["step_added_mb"] / s["step_added_mb"], 3),
                                            "step_time_ratio": round(c["step_s_median"] / s["step_s_median"], 3)}
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    result = {"workload": {"model": "Qwen2 from config: hidden 896, 14/2 heads, intermediate 4864, vocab 129280, "
                                    "untied, fp32, LoRA r=16 all-linear (head frozen)",
                           "layers": args.layers, "seq": args.seq, "trained_tokens": args.seq - 1,
                           "steps": args.steps, "repeats": args.repeats, "threads": args.threads},
              "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                          "loadavg_end": load},
              "summary": summary, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
