"""Agent SFT on the shipped synthetic tool-use dataset: does the tiny model learn to act?

    python examples/agent_sft.py                 # ~10-15 min on one CPU thread
    python examples/agent_sft.py --method lora   # any method: lora, qlora, dora, full
    python examples/agent_sft.py --seed 1        # another data order (see the README for the spread)

It builds (once) a tiny Llama base model whose tokenizer is trained on the example data, then
fine-tunes it on examples/agent/agent_train.jsonl (1200 trajectories over calculator, lookup,
search and finish) and measures, on held-out trajectories, before and after training:
next-action exact match (tool and arguments), tool-name accuracy and tool-call validity.

A run is reproducible: the base model is built the same way every time, the seed fixes the data
order, torch runs with a fixed number of threads (--threads) and deterministic algorithms, and the
same command on the same kind of CPU gives the same numbers. Another seed (or another CPU, whose kernels round differently) gives
another training trajectory; the exact-match metric of this tiny model moves a lot with it (the
README lists the spread over seeds), the tool name and call validity do not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sage_libs.sage_finetune import DataConfig, LoRAConfig, TrainingConfig, create_loader, create_trainer

HERE = Path(__file__).resolve().parent


def ensure_model(path: Path) -> Path:
    if not (path / "config.json").exists():
        from sage_libs.sage_finetune.utils.tiny import build_tiny_model

        corpus = [HERE / "agent" / "agent_train.jsonl", *sorted((HERE / "data").glob("*.jsonl"))]
        build_tiny_model(path, corpus_files=corpus, hidden_size=128, num_hidden_layers=4, intermediate_size=256,
                         pretrain_steps=300)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="./tiny-agent-model", help="built here if missing")
    parser.add_argument("--method", default="full")
    parser.add_argument("--epochs", type=float, default=6.0)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--eval-trajectories", type=int, default=30)
    parser.add_argument("--output-dir", default="./outputs/agent-sft")
    parser.add_argument("--seed", type=int, default=42, help="data order and training seed (default 42)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: this tiny model gains little from more, and a fixed "
                             "count keeps results independent of the machine's core count)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = ensure_model(Path(args.model))
    lr = args.learning_rate or (1.5e-3 if args.method in ("full", "freeze") else 3e-3)
    kwargs = {} if args.method in ("full", "freeze") else {
        "lora_config": LoRAConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules="all-linear")}
    trainer = create_trainer(
        "agent", method=args.method, agent_eval_max_trajectories=args.eval_trajectories,
        training_config=TrainingConfig(model_name_or_path=str(model), output_dir=args.output_dir,
                                       num_train_epochs=args.epochs, per_device_train_batch_size=8,
                                       learning_rate=lr, warmup_steps=0.05, lr_scheduler_type="cosine",
                                       weight_decay=0.0, max_seq_length=512, logging_steps=20, eval_steps=10_000,
                                       eval_on_start=True, save_strategy="no", seed=args.seed),
        data_config=DataConfig(agent_format="react"), **kwargs)
    held_out = create_loader("trajectory").load(HERE / "agent" / "agent_eval.jsonl")
    metrics = trainer.train(str(HERE / "agent" / "agent_train.jsonl"), held_out)
    print(f"\n{'held-out metric':<24}{'before':>8}{'after':>8}")
    for key in ("next_action_accuracy", "action_name_accuracy", "tool_call_validity"):
        print(f"{key:<24}{metrics[key + '_before']:>8.3f}{metrics[key]:>8.3f}")
    print(f"{'eval_loss':<24}{metrics['eval_loss_before']:>8.3f}{metrics['eval_loss']:>8.3f}")
    print(f"({metrics['agent_steps']} steps of {args.eval_trajectories} held-out trajectories; seed {args.seed}, "
          f"{args.threads} threads; metrics in {args.output_dir}/metrics.json)")
    if metrics.get("agent_eval_misses"):
        print("a miss:", json.dumps(metrics["agent_eval_misses"][0])[:300])
    trainer.save_model(Path(args.output_dir) / ("adapter" if args.method not in ("full", "freeze") else "model"))


if __name__ == "__main__":
    main()
