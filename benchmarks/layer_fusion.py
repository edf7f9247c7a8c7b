"""Where a training step's time goes, and whether compiling the decoder layers (fusing the non-GEMM
work) pays on the CPU: issue #19, item 4.

    python benchmarks/layer_fusion.py                      # the 32M workload of sft_throughput.py
    python benchmarks/layer_fusion.py --workload qwen0.5b --layers 4 --batch-size 2

One process, the same batches for every variant (the trainer's own padding-free rows with
per-document attention, selective logits / chunked loss, LoRA r16 on every linear layer):

* profile: one eager forward+backward under ``torch.profiler``; self CPU time split into GEMM
  (``mm``/``addmm``/``bmm``), attention kernels, and everything else (norms, RoPE, SiLU*mul, LoRA
  scaling and dropout, copies, adds, the loss);
* eager vs ``compiled``: ``training.compile_layers`` (perf/compiled_layers.py: each decoder layer
  compiled in place, dynamic sequence length, the per-document attention left eager), alternated
  ``--repeats`` times over the same batches; the first compiled pass is reported as compile time.
  Same losses required (``--rtol``).

Results go to benchmarks/results/layer_fusion[_<workload>].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GEMM = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
ATTENTION = ("scaled_dot_product", "flash_attention", "_efficient_attention")


def kind_of(op: str) -> str:
    if op in GEMM:
        return "gemm"
    if any(a in op for a in ATTENTION):
        return "attention"
    return "other"


def build(args, work: Path):
    import sft_throughput as bench
    import torch

    from sage_libs.sage_finetune import DataConfig, TrainingConfig, create_trainer

    torch.set_num_threads(args.threads)
    w = bench.build_workload(work, args.samples, 4, 4, workload=args.workload, layers=args.layers)
    tc = TrainingConfig(model_name_or_path=w["model_dir"], output_dir=str(work / "run"), num_train_epochs=1,
                        per_device_train_batch_size=args.batch_size, learning_rate=1e-3, warmup_steps=0,
                        weight_decay=0.0, max_seq_length=args.max_length, logging_steps=1000, eval_strategy="no",
                        save_strategy="no", disable_tqdm=True, seed=42, use_cpu=True)
    trainer = create_trainer("lora", training_config=tc, lora_config=dict(bench.LORA),
                             data_config=DataConfig(cache_dir=str(work / "cache")))
    dataset = trainer.prepare_dataset(w["train"], "train")
    hf = trainer.build_hf_trainer(dataset)
    batches = [b for _, b in zip(range(args.steps), hf.get_train_dataloader())]
    hf.current_gradient_accumulation_steps = 1  # set by the HF loop, which this script does not run
    return trainer, hf, batches, w


def step(hf, model, batch) -> tuple[float, float]:
    """One forward+backward (no optimizer: its LoRA update is small and the same for all variants)."""
    start = time.perf_counter()
    loss = hf.training_step(model, batch)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds, float(loss)


def decoder_layers(model):
    from sage_libs.sage_finetune.perf.compiled_layers import decoder_layers as layers

    return layers(model)


_COMPILED: dict = {}  # layer -> its compiled call, kept to switch between eager and compiled


def set_compiled(model, on: bool) -> None:
    """The library's compiled layers (``training.compile_layers``), reversibly: ``nn.Module.__call__``
    runs ``_compiled_call_impl`` when set (what ``module.compile()`` sets); clearing it gives the
    eager layer back."""
    from sage_libs.sage_finetune.perf.compiled_layers import compile_decoder_layers

    if on and not _COMPILED:
        compile_decoder_layers(model)
        _COMPILED.update({layer: layer._compiled_call_impl for layer in decoder_layers(model)})
    for layer in decoder_layers(model):
        layer._compiled_call_impl = _COMPILED[layer] if on else None


def profile(hf, model, batch) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step(hf, model, batch)
    totals: dict[str, float] = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    top: list[tuple[str, float]] = []
    for event in prof.key_averages():
        us = event.self_cpu_time_total
        totals[kind_of(event.key)] += us
        top.append((event.key, us))
    whole = sum(totals.values())
    top.sort(key=lambda t: -t[1])
    return {"share": {k: round(v / whole, 4) for k, v in totals.items()}, "self_cpu_s": round(whole / 1e6, 3),
            "top_ops": [(k, round(v / 1e6, 4)) for k, v in top[:15]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="32m", choices=["32m", "qwen0.5b"])
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the workload's)")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="batches per pass")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2, help="eager/compiled alternations after the compile pass")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        trainer, hf, batches, w = build(args, Path(tmp))
        model = hf.model
        model.train()
        tokens = sum(int(b["input_ids"].numel()) for b in batches)
        step(hf, model, batches[0])  # warm-up: allocator, thread pool
        result: dict = {"benchmark": "layer_fusion", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "command": "python " + " ".join(sys.argv), "workload": args.workload,
                        "layers": len(decoder_layers(model)), "batches": len(batches), "tokens": tokens,
                        "threads": args.threads, "loadavg_before": os.getloadavg(),
                        "fast_paths": str(getattr(trainer, "fast_paths", None))}
        result["profile_eager"] = profile(hf, model, batches[0])
        print("eager step, self CPU time:", result["profile_eager"]["share"], flush=True)

        def run_pass(compiled: bool) -> tuple[list[float], list[float]]:
            set_compiled(model, compiled)
            times, losses = zip(*(step(hf, model, b) for b in batches))
            return list(times), list(losses)

        start = time.perf_counter()
        first_times, first_losses = run_pass(True)
        result["compile_pass_s"] = round(time.perf_counter() - start, 2)
        print(f"first compiled pass (compiles): {result['compile_pass_s']} s", flush=True)
        passes = {"eager": [], "compiled": []}
        losses = {"eager": None, "compiled": first_losses}
        for _ in range(args.repeats):
            for name in ("eager", "compiled"):
                times, pass_losses = run_pass(name == "compiled")
                passes[name].append(sum(times))
                losses[name] = pass_losses
                print(f"{name}: {sum(times):.2f} s for {len(batches)} batches", flush=True)
        set_compiled(model, True)
        result["profile_compiled"] = profile(hf, model, batches[0])
        same = all(abs(a - b) <= args.rtol * abs(b) for a, b in zip(losses["compiled"], losses["eager"]))
        eager, compiled = statistics.median(passes["eager"]), statistics.median(passes["compiled"])
        result.update(pass_s={k: [round(x, 3) for x in v] for k, v in passes.items()},
                      eager_s=round(eager, 3), compiled_s=round(compiled, 3),
                      compiled_vs_eager=round(compiled / eager, 3), losses=losses, losses_equal=same,
                      loadavg_after=os.getloadavg())
        print(f"compiled/eager time: {result['compiled_vs_eager']} (eager {eager:.2f} s, compiled {compiled:.2f} s); "
              f"losses equal: {same}", flush=True)
    out = Path(args.out or Path(__file__).parent / "results" /
               f"layer_fusion{'' if args.workload == '32m' else '_' + args.workload}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
