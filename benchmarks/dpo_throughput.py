"""DPO throughput on the CPU: isage-finetune against TRL's DPOTrainer, same model, same pairs, same run.

    pip install -e .[bench]                                   # adds trl
    python benchmarks/dpo_throughput.py                       # 64 pairs, each variant twice, alternated
    python benchmarks/dpo_throughput.py --pairs 16 --repeats 1 --out /tmp/dpo.json   # a quick look

Workload: the model, tokenizer and record lengths of ``sft_throughput.py`` (a Llama-architecture
model from config, hidden 512, 8 layers, ~32M parameters, fp32; an 8192-token BPE tokenizer; chat
records with 1-4 turns and heavy-tailed lengths, median ~150 tokens). A record becomes a pair: its
conversation up to the last assistant reply is the prompt, that reply is ``chosen``, and the same
words shuffled are ``rejected`` (the same length, so both sides have the benchmark's length
distribution). Training: DPO (sigmoid, beta 0.1), LoRA r=16, alpha=32, dropout 0 on every linear
projection, the reference = the base model (adapter disabled: no second copy, both trainers); max
length 1024; batch 8 pairs; one epoch; AdamW, lr 1e-3, linear decay, no warm-up, no weight decay; no
gradient checkpointing, no mixed precision.

Every variant runs in its own interpreter (so peak RSS is per run) with the same number of torch
threads; ours and TRL's alternate, and later repeats reverse the order. Columns:

* prep s: data preparation inside the run (ours: ``prepare_dataset``; TRL: building ``DPOTrainer``);
* train s: wall time from the first to the last training step (a TrainerCallback, same for both);
* real tok/s: non-padding tokens of the chosen and rejected sequences per second (the same count,
  from our tokenization, for every variant; TRL's own count differs by the template's trailing
  newline per sequence);
* computed/real: tokens the policy forward ran on (padding included) per real token;
* peak RSS: the run's maximum resident memory (ru_maxrss);
* reward accuracy: after training, on the training pairs, the share whose chosen reply gained more
  log-probability over the base model than the rejected one (``beta * log(policy / reference)``),
  computed the same way (batch 1, our tokenization, adapter on and off) for every variant.

Results are printed and written to benchmarks/results/dpo_throughput.json with the machine's load
average: on a shared machine, compare the ratios between variants of one run.
"""

from __future__ import annotations

import argparse
import json
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
sys.path.insert(0, str(HERE))

from sft_throughput import LORA, MODEL, _Counter, _timer_callback, make_records  # noqa: E402

TRAIN = dict(batch_size=8, max_length=1024, learning_rate=1e-3, seed=42, beta=0.1)
# TRL's DPOTrainer has no padding-free mode on the CPU in 1.16 (FlashAttention only, and disabled
# since its refactor), and its tokenized dataset has no input_ids column, so the HF Trainer's
# group_by_length sampler refuses it: its default (padded batches) is the one TRL variant.
VARIANTS = ("ours_default", "trl_default")
LABELS = {"ours_default": "ours default (padding-free)", "trl_default": "TRL DPOTrainer (padding)"}


# ------------------------------------------------------------------------------------------------
# Workload
# ------------------------------------------------------------------------------------------------
def make_pairs(n: int, seed: int) -> list[dict]:
    """``sft_throughput`` records as pairs: the last assistant reply is chosen, its words shuffled
    are rejected (TRL's conversational preference format; ours reads the same records)."""
    rng = random.Random(seed)
    pairs = []
    for record in make_records(n, seed):
        messages = record["messages"]
        reply = messages[-1]["content"]
        words = reply.split()
        shuffled = words[:]
        while shuffled == words and len(set(words)) > 1:
            rng.shuffle(shuffled)
        if shuffled == words:  # a one-word reply: reject another word
            shuffled = [words[0] + "s"]
        pairs.append({"prompt": messages[:-1], "chosen": [{"role": "assistant", "content": reply}],
                      "rejected": [{"role": "assistant", "content": " ".join(shuffled)}]})
    return pairs


def build_workload(work: Path, n_pairs: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sage_libs.sage_finetune.utils.tiny import train_tokenizer

    path = work / "pairs.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for pair in make_pairs(n_pairs, 1):
            fh.write(json.dumps(pair, ensure_ascii=False) + "\n")
    corpus = [m["content"] for r in make_records(3000, 0) for m in r["messages"]]  # as sft_throughput
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
    return {"model_dir": str(model_dir), "pairs": str(path), "parameters": sum(p.numel() for p in model.parameters())}


def tokenized_pairs(path: str, tokenizer) -> dict:
    from sage_libs.sage_finetune.data.preference import tokenize_preference_records
    from sage_libs.sage_finetune.loaders.jsonl import JSONLLoader

    cols, _ = tokenize_preference_records(JSONLLoader().load(path), tokenizer, max_seq_length=TRAIN["max_length"])
    return cols


# ------------------------------------------------------------------------------------------------
# Child processes
# ------------------------------------------------------------------------------------------------
def reward_accuracy(model, cols: dict) -> float:
    """Share of pairs with ``log(pi/ref)(chosen) > log(pi/ref)(rejected)``; ``model`` is a PEFT model
    (the reference: its adapter disabled)."""
    import torch

    def logp(ids, labels):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1].float()
        target = torch.tensor(labels[1:])
        keep = target != -100
        return torch.log_softmax(logits[keep], -1).gather(-1, target[keep, None]).sum().item()

    model.eval()
    wins = 0
    with torch.no_grad():
        for i in range(len(cols["chosen_input_ids"])):
            sides = [(cols[f"{s}_input_ids"][i], cols[f"{s}_labels"][i]) for s in ("chosen", "rejected")]
            policy = [logp(*side) for side in sides]
            with model.disable_adapter():
                ref = [logp(*side) for side in sides]
            wins += (policy[0] - ref[0]) > (policy[1] - ref[1])
    return wins / len(cols["chosen_input_ids"])


def child_train(variant: str, work: dict, threads: int, out_dir: Path) -> dict:
    import torch

    torch.set_num_threads(threads)
    timer = _timer_callback()
    prep = {}
    if variant.startswith("ours"):
        import datasets  # noqa: F401 - imported before timing, as in TRL's runs

        from sage_libs.sage_finetune import TrainingConfig, create_trainer
        from sage_libs.sage_finetune.data import preference  # noqa: F401

        tc = TrainingConfig(model_name_or_path=work["model_dir"], output_dir=str(out_dir / "run"), num_train_epochs=1,
                            per_device_train_batch_size=TRAIN["batch_size"], learning_rate=TRAIN["learning_rate"],
                            warmup_steps=0, weight_decay=0.0, lr_scheduler_type="linear",
                            max_seq_length=TRAIN["max_length"], logging_steps=1000, eval_strategy="no",
                            save_strategy="no", disable_tqdm=True, seed=TRAIN["seed"], model_dtype="float32",
                            use_cpu=True)
        trainer = create_trainer("dpo", method="lora", preference_config={"loss_type": "sigmoid", "beta": TRAIN["beta"]},
                                 training_config=tc, lora_config=dict(LORA),
                                 data_config={"cache_dir": str(out_dir / "cache")}, callbacks=[timer])
        inner = trainer.inner
        real_prepare, real_collator = inner.prepare_dataset, inner.data_collator
        counter = {}

        def timed_prepare(data, split="train"):
            t = time.perf_counter()
            out = real_prepare(data, split)
            prep[split] = time.perf_counter() - t
            return out

        def counting_collator():
            counter["c"] = _Counter(real_collator())
            return counter["c"]

        inner.prepare_dataset, inner.data_collator = timed_prepare, counting_collator
        trainer.train(work["pairs"])
        model, tokenizer = inner.model, inner.tokenizer
        computed = counter["c"].tokens
    else:
        import datasets
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        datasets.disable_progress_bars()
        tokenizer = AutoTokenizer.from_pretrained(work["model_dir"])
        torch.manual_seed(TRAIN["seed"])
        model = AutoModelForCausalLM.from_pretrained(work["model_dir"], dtype=torch.float32)
        args = DPOConfig(output_dir=str(out_dir / "run"), num_train_epochs=1,
                         per_device_train_batch_size=TRAIN["batch_size"], learning_rate=TRAIN["learning_rate"],
                         warmup_steps=0, weight_decay=0.0, lr_scheduler_type="linear", max_length=TRAIN["max_length"],
                         beta=TRAIN["beta"], loss_type=["sigmoid"], gradient_checkpointing=False, bf16=False,
                         fp16=False, use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no",
                         logging_steps=1000, disable_tqdm=True, seed=TRAIN["seed"])
        t = time.perf_counter()
        train_ds = datasets.load_dataset("json", data_files=work["pairs"], split="train",
                                         cache_dir=str(out_dir / "hf-datasets"))
        trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                             peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA), callbacks=[timer])
        prep["train"] = time.perf_counter() - t
        counter = _Counter(trainer.data_collator)
        trainer.data_collator = counter
        trainer.train()
        model = trainer.model
        computed = counter.tokens
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the (batch 1) accuracy pass
    cols = tokenized_pairs(work["pairs"], tokenizer)
    real = sum(len(ids) for ids in cols["chosen_input_ids"] + cols["rejected_input_ids"])
    return {"variant": variant, "prep_s": sum(prep.values()), "train_s": timer.wall, "train_cpu_s": timer.cpu,
            "train_loss": timer.loss, "real_tokens": real, "computed_tokens": computed, "peak_rss_mb": peak,
            "reward_accuracy": reward_accuracy(model, cols)}


def child_main(args) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    work = json.loads(Path(args.work, "workload.json").read_text())
    out_dir = Path(tempfile.mkdtemp(prefix=f"{args.child}-", dir=args.work))
    result = child_train(args.child, work, args.threads, out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------------------------------------
# Parent
# ------------------------------------------------------------------------------------------------
def run_child(name: str, args, work_dir: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "TOKENIZERS_PARALLELISM": "true", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for key in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "SAGE_FINETUNE_MALLOC_TUNING"):
        env.pop(key, None)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", name, "--work", str(work_dir),
                           "--threads", str(args.threads)], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{name}: the child process failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_s"] = time.perf_counter() - t
    result["loadavg_after"] = round(os.getloadavg()[0], 2)
    return result


def summarize(runs: list[dict]) -> dict:
    row = {k: statistics.median(r[k] for r in runs) for k in ("prep_s", "train_s", "train_cpu_s", "peak_rss_mb",
                                                              "reward_accuracy", "train_loss")}
    row.update(real_tokens=runs[0]["real_tokens"], computed_tokens=runs[0]["computed_tokens"], repeats=len(runs))
    row["real_tok_s"] = row["real_tokens"] / row["train_s"]
    row["real_tok_per_cpu_s"] = row["real_tokens"] / row["train_cpu_s"]
    row["computed_per_real"] = row["computed_tokens"] / row["real_tokens"]
    row["runs"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                    if k in ("train_s", "peak_rss_mb", "reward_accuracy", "loadavg_after")} for r in runs]
    return row


def print_table(result: dict) -> str:
    m, c = result["machine"], result["config"]
    lines = [f"DPO throughput, {c['pairs']} pairs, batch {TRAIN['batch_size']}, max length {TRAIN['max_length']}, "
             f"{m['threads']} torch threads, load average {m['loadavg_before']} -> {m['loadavg_after']}",
             "| variant | prep s | train s | real tok/s | computed/real | peak RSS MB | reward accuracy | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in result["variants"].items():
        lines.append(f"| {LABELS[name]} | {row['prep_s']:.2f} | {row['train_s']:.1f} | {row['real_tok_s']:.0f} "
                     f"| {row['computed_per_real']:.2f} | {row['peak_rss_mb']:.0f} | {row['reward_accuracy']:.3f} "
                     f"| {row['repeats']} |")
    for name, ratio in result["ratios"].items():
        lines.append(f"ours vs {LABELS[name]}: {ratio['tok_s']:.2f}x real tok/s (target >= 2), peak RSS "
                     f"{ratio['rss']:.2f}x (target <= 0.6); per repeat: {ratio['tok_s_per_repeat']}; tokens per "
                     f"CPU second: {ratio['tok_per_cpu_s']:.2f}x")
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64, help="training pairs (one epoch)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant (medians are reported)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count(), help="torch threads in every run (default: the usable cores)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one, removed after)")
    parser.add_argument("--out", default=str(HERE / "results" / "dpo_throughput.json"), help="JSON output")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in LABELS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; known: {', '.join(LABELS)}")
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("TRL is needed for the comparison: pip install -e .[bench]  (or pip install trl)")
    keep = args.work is not None
    work_dir = Path(args.work or tempfile.mkdtemp(prefix="dpo-bench-")).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "src"))
    print(f"building the workload in {work_dir} ...", flush=True)
    work = build_workload(work_dir, args.pairs)
    (work_dir / "workload.json").write_text(json.dumps(work))
    load_before = [round(x, 2) for x in os.getloadavg()]
    t_start = time.perf_counter()

    ours = [v for v in variants if v.startswith("ours")]
    theirs = [v for v in variants if v.startswith("trl")]
    order = []  # ours and TRL's alternate; the next repeat runs the reverse order
    for i in range(max(len(ours), len(theirs))):
        order += ours[i:i + 1] + theirs[i:i + 1]
    runs: dict[str, list] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for name in (order if rep % 2 == 0 else order[::-1]):
            r = run_child(name, args, work_dir)
            runs[name].append(r)
            print(f"  {name:22s} train {r['train_s']:7.1f} s  {r['real_tokens'] / r['train_s']:7.0f} real tok/s  peak RSS "
                  f"{r['peak_rss_mb']:5.0f} MB  reward accuracy {r['reward_accuracy']:.3f}  load {r['loadavg_after']}",
                  flush=True)
    import peft
    import torch
    import transformers

    result = {
        "benchmark": "dpo_throughput", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join([os.path.relpath(__file__, REPO), *sys.argv[1:]]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
                    "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "peft": peft.__version__, "trl": trl.__version__},
        "config": {"pairs": args.pairs, "model": MODEL, "parameters": work["parameters"], "lora": LORA, **TRAIN},
        "variants": {v: summarize(runs[v]) for v in variants if runs[v]},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    result["ratios"] = {}
    if ours:
        mine = result["variants"][ours[0]]
        for name in theirs:
            other = result["variants"][name]
            per_repeat = [round((mine["real_tokens"] / a["train_s"]) / (other["real_tokens"] / b["train_s"]), 2)
                          for a, b in zip(runs[ours[0]], runs[name])]
            result["ratios"][name] = {"tok_s": mine["real_tok_s"] / other["real_tok_s"],
                                      "rss": mine["peak_rss_mb"] / other["peak_rss_mb"],
                                      "tok_s_per_repeat": per_repeat,
                                      # CPU seconds: less sensitive than wall time to other processes' load
                                      "tok_per_cpu_s": mine["real_tok_per_cpu_s"] / other["real_tok_per_cpu_s"]}
    result["table"] = print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    if not keep:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
