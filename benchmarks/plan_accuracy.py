"""How right is the planner? Predicted vs measured peak RSS and time per step on this machine.

    python benchmarks/plan_accuracy.py                   # every configuration, ~15-20 min on 2 cores
    python benchmarks/plan_accuracy.py --configs small-lora-b8-256,large-full-b1-512 --repeats 1
    python benchmarks/plan_accuracy.py --list

Workload (built locally from config, seeded; nothing is downloaded): the throughput benchmark's
Llama (``benchmarks/sft_throughput.py``: hidden 512, 8 layers, 8/4 heads, intermediate 1408, vocab
8192, fp32, 32M parameters) and a larger one (hidden 1024, 12 layers, 16/8 heads, intermediate
2816, vocab 32000, untied, fp32, 207M parameters), the benchmark's BPE tokenizer, and chat records
whose assistant reply is longer than the sequence length, so that every sample is cut to exactly
``max_seq_length`` tokens and every batch is the largest batch (the plan's peak is that batch's).

For each configuration, each in its own interpreter, back to back:

1. ``plan``: the trainer's ``plan()`` with the ~2 s throughput probe (what ``sage-finetune plan``
   prints): predicted peak RSS and time per optimizer step;
2. ``run``: the same config trained for ``--steps`` optimizer steps (default 4) by the real
   trainer (data preparation, model load, HF Trainer); measured: the process's peak RSS (VmHWM
   at the end) and the median time of the steps after the first (callback timestamps).

``--repeats`` alternates plan and run again; medians are reported, with every value in the JSON
(``benchmarks/results/plan_accuracy.json``). The machine may be shared: the probe measures it as
it is when the plan is made, right before the run, and the load average is recorded.

``--threads 1 --clock cpu`` times the probe and the steps in CPU seconds of one thread
(``time.process_time``) instead of wall-clock seconds: what the cost model predicts, independent of
other jobs competing for the cores (on a busy machine the wall clock of a 2-thread step varies by
2-3x from one step to the next).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

MODELS = {
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=None),  # the tokenizer's 8192
    "large": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
                  num_key_value_heads=8, vocab_size=32000),
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")

# name: (model, method, batch, seq, gradient checkpointing, extra training options, extra lora options)
CONFIGS = {
    "small-lora-b8-256": ("small", "lora", 8, 256, False, {}, {"lora_dropout": 0.05}),
    "small-lora-b1-4096": ("small", "lora", 1, 4096, False, {}, {}),
    "small-lora-b16-256-gc": ("small", "lora", 16, 256, True, {}, {}),
    "small-qlora-b4-512": ("small", "qlora", 4, 512, False, {}, {}),
    "small-dora-b2-1024": ("small", "dora", 2, 1024, False, {}, {}),
    "small-full-b4-512": ("small", "full", 4, 512, False, {}, None),
    "small-full-b2-2048-gc": ("small", "full", 2, 2048, True, {}, None),
    "small-freeze-b8-1024": ("small", "freeze", 8, 1024, False, {}, None),
    "large-lora-b1-1024": ("large", "lora", 1, 1024, False, {}, {}),
    "large-lora-b4-512-gc": ("large", "lora", 4, 512, True, {}, {}),
    "large-qlora-b2-512": ("large", "qlora", 2, 512, False, {}, {}),
    "large-full-b1-512": ("large", "full", 1, 512, False, {}, None),
    "large-freeze-b4-256-gc": ("large", "freeze", 4, 256, True, {}, None),
}
SLOW_TEST_CONFIGS = ("small-lora-b8-256", "small-full-b4-512", "small-freeze-b8-1024", "small-lora-b16-256-gc")

RSS_TOLERANCE = 0.15
TIME_TOLERANCE = 0.25


# ------------------------------------------------------------------------------------------------
# Workload
# ------------------------------------------------------------------------------------------------
def _records(n: int, words: int, seed: int) -> list[dict]:
    sys.path.insert(0, str(HERE))
    from sft_throughput import _lexicon

    lexicon = _lexicon()
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": " ".join(rng.choice(lexicon) for _ in range(12))},
                          {"role": "assistant", "content": " ".join(rng.choice(lexicon) for _ in range(words))}]}
            for _ in range(n)]


def build_workload(work: Path, seqs: set[int], samples: int) -> dict:
    """Models (saved like hub models) and one data file per sequence length."""
    done = work / "workload.json"
    if done.is_file():
        w = json.loads(done.read_text())
        if all(str(s) in w["data"] for s in seqs):
            return w
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO / "src"))
    from sft_throughput import MODEL, make_records

    from sage_libs.sage_finetune.utils.tiny import train_tokenizer

    corpus = [m["content"] for r in make_records(3000, 0) for m in r["messages"]]
    tokenizer = train_tokenizer(corpus, vocab_size=MODEL["vocab_size"])
    out = {"models": {}, "data": {}}
    for name, shape in MODELS.items():
        path = work / name
        if not (path / "config.json").is_file():
            shape = dict(shape, vocab_size=shape["vocab_size"] or len(tokenizer))
            config = LlamaConfig(max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                 tie_word_embeddings=False, **shape)
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
            tokenizer.save_pretrained(path)
        out["models"][name] = str(path)
    for seq in sorted(seqs):
        path = work / f"data-{seq}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for record in _records(samples, int(seq * 0.9) + 24, seq):
                fh.write(json.dumps(record) + "\n")
        out["data"][str(seq)] = str(path)
    done.write_text(json.dumps(out))
    return out


def trainer_kwargs(name: str, work: dict, out_dir: str, steps: int) -> tuple[str, dict]:
    model, method, batch, seq, gc, extra_tc, extra_lora = CONFIGS[name]
    tc = dict(model_name_or_path=work["models"][model], output_dir=out_dir, max_steps=steps,
              per_device_train_batch_size=batch, max_seq_length=seq, gradient_checkpointing=gc, use_cpu=True,
              learning_rate=1e-4, warmup_steps=0, logging_steps=1000, eval_strategy="no", save_strategy="no",
              disable_tqdm=True, seed=42, **extra_tc)
    kwargs = {"training_config": tc, "data_config": {"cache_dir": str(Path(out_dir).parent / "cache")}}
    if extra_lora is not None:
        kwargs["lora_config"] = dict(LORA, **extra_lora)
    return method, kwargs


# ------------------------------------------------------------------------------------------------
# Children
# ------------------------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _setup_clock(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        from sage_libs.sage_finetune.planner import probe

        probe._clock = time.process_time


def child_plan(name: str, work: dict, out_dir: str, steps: int) -> dict:
    from sage_libs.sage_finetune import create_trainer

    method, kwargs = trainer_kwargs(name, work, out_dir, steps)
    trainer = create_trainer(method, **kwargs)
    data = work["data"][str(CONFIGS[name][3])]
    t = time.perf_counter()
    plan = trainer.plan(data)
    seconds = time.perf_counter() - t
    d = plan.to_dict()
    return {"peak_mb": plan.peak / 2**20, "step_s": plan.time.step_seconds if plan.time else None,
            "components_mb": {k: round(v / 2**20, 1) for k, v in plan.memory.components.items()},
            "phase": plan.memory.phase, "plan_s": seconds,
            "throughput": d.get("time", {}).get("throughput"), "tokens": plan.batch.tokens,
            "trained": plan.batch.trained}


def child_run(name: str, work: dict, out_dir: str, steps: int, clock=time.perf_counter) -> dict:
    from transformers import TrainerCallback

    from sage_libs.sage_finetune import create_trainer

    class Steps(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.rss_begin = None

        def on_train_begin(self, *args, **kwargs):
            self.rss_begin = _status_mb("VmRSS")

        def on_step_begin(self, *args, **kwargs):
            self.t0 = clock()

        def on_step_end(self, *args, **kwargs):
            self.times.append(clock() - self.t0)

    timer = Steps()
    method, kwargs = trainer_kwargs(name, work, out_dir, steps)
    trainer = create_trainer(method, callbacks=[timer], **kwargs)
    trainer.train(work["data"][str(CONFIGS[name][3])])
    steady = timer.times[1:] or timer.times
    return {"peak_rss_mb": _status_mb("VmHWM"), "rss_train_begin_mb": timer.rss_begin,
            "step_s": statistics.median(steady), "step_s_all": [round(t, 3) for t in timer.times]}


def child_main(args: argparse.Namespace) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    work = json.loads(Path(args.work, "workload.json").read_text())
    out_dir = tempfile.mkdtemp(prefix=f"{args.config}-", dir=args.work)
    _setup_clock(args)
    if args.child == "plan":
        result = child_plan(args.config, work, os.path.join(out_dir, "run"), args.steps)
    else:
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        result = child_run(args.config, work, os.path.join(out_dir, "run"), args.steps, clock)
    print("RESULT " + json.dumps(result))


def run_child(kind: str, name: str, args: argparse.Namespace, work_dir: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if getattr(args, "threads", None):
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", kind, "--config", name,
                           "--work", str(work_dir), "--steps", str(args.steps), "--clock", args.clock]
                          + (["--threads", str(args.threads)] if getattr(args, "threads", None) else []),
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{kind} {name}: the child process failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------------------------
# Parent
# ------------------------------------------------------------------------------------------------
def measure(names: list[str], *, steps: int = 4, repeats: int = 1, work: str | None = None,
            threads: int | None = None, clock: str = "wall", log=print) -> dict:
    """Plan and run each configuration ``repeats`` times (alternated); returns the result dict."""
    work_dir = Path(work or tempfile.mkdtemp(prefix="plan-accuracy-")).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    seqs = {CONFIGS[n][3] for n in names}
    samples = max(CONFIGS[n][2] * steps for n in names) + 8
    build_workload(work_dir, seqs, samples)
    args = argparse.Namespace(steps=steps, threads=threads, clock=clock)
    rows: dict[str, dict] = {n: {"plans": [], "runs": [], "load": []} for n in names}
    for rep in range(repeats):
        for name in (names if rep % 2 == 0 else names[::-1]):
            plan = run_child("plan", name, args, work_dir)
            result = run_child("run", name, args, work_dir)
            rows[name]["plans"].append(plan)
            rows[name]["runs"].append(result)
            rows[name]["load"].append(round(os.getloadavg()[0], 2))
            log(f"  {name:26s} RSS {plan['peak_mb']:7.0f} / {result['peak_rss_mb']:7.0f} MB   step "
                f"{plan['step_s'] or float('nan'):6.2f} / {result['step_s']:6.2f} s   load {os.getloadavg()[0]:.1f}")
    for name, row in rows.items():
        pred_rss = statistics.median(p["peak_mb"] for p in row["plans"])
        meas_rss = statistics.median(r["peak_rss_mb"] for r in row["runs"])
        pred_t = statistics.median(p["step_s"] for p in row["plans"] if p["step_s"] is not None)
        meas_t = statistics.median(r["step_s"] for r in row["runs"])
        row.update(pred_rss_mb=pred_rss, meas_rss_mb=meas_rss, rss_err=pred_rss / meas_rss - 1,
                   pred_step_s=pred_t, meas_step_s=meas_t, time_err=pred_t / meas_t - 1)
    return {"rows": rows, "work": str(work_dir), "steps": steps, "repeats": repeats, "threads": threads,
            "clock": clock}


def table(result: dict) -> str:
    unit = "CPU s" if result.get("clock") == "cpu" else "s"
    lines = ["| configuration | method | batch x seq | grad ckpt | RSS predicted MB | RSS measured MB | error | "
             f"step predicted {unit} | step measured {unit} | error |", "|" + "---|" * 10]
    for name, row in result["rows"].items():
        model, method, batch, seq, gc, *_ = CONFIGS[name]
        lines.append(f"| {name} | {method} | {batch} x {seq} | {'on' if gc else 'off'} | {row['pred_rss_mb']:.0f} | "
                     f"{row['meas_rss_mb']:.0f} | {100 * row['rss_err']:+.1f}% | {row['pred_step_s']:.2f} | "
                     f"{row['meas_step_s']:.2f} | {100 * row['time_err']:+.1f}% |")
    rss_ok = sum(abs(r["rss_err"]) <= RSS_TOLERANCE for r in result["rows"].values())
    t_ok = sum(abs(r["time_err"]) <= TIME_TOLERANCE for r in result["rows"].values())
    n = len(result["rows"])
    lines.append("")
    lines.append(f"within ±{RSS_TOLERANCE:.0%} RSS: {rss_ok}/{n}; within ±{TIME_TOLERANCE:.0%} step time: {t_ok}/{n}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configuration names")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is not timed)")
    ap.add_argument("--repeats", type=int, default=1, help="plan+run pairs per configuration (alternated)")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--out", default=str(HERE / "results" / "plan_accuracy.json"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the probe and the runs "
                                                                "(default: torch's, i.e. the cores)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="time steps and the probe in wall-clock seconds (default) or CPU seconds (with --threads 1)")
    ap.add_argument("--list", action="store_true", help="list the configurations and exit")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args)
    if args.list:
        for name, c in CONFIGS.items():
            print(name, c)
        return
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration {unknown[0]!r}; --list shows them")
    t0 = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    result = measure(names, steps=args.steps, repeats=args.repeats, work=args.work, threads=args.threads,
                     clock=args.clock)
    result.update(machine={"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
                  wall_s=round(time.perf_counter() - t0, 1), date=time.strftime("%Y-%m-%d %H:%M:%S"))
    text = table(result)
    print(text)
    result["table"] = text
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
