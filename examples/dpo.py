"""Preference training without SFT first: DPO (or IPO, ORPO, SimPO, KTO) with LoRA on a tiny model.

    python examples/dpo.py                    # DPO (sigmoid loss), a few minutes on one CPU thread
    python examples/dpo.py --loss-type kto    # KTO on the unpaired variant of the same data
    python examples/dpo.py --seed 1           # another data order and LoRA init

It builds (once) the tiny base model that

    sage-finetune tiny-model ./tiny-pref-model --hidden-size 128 --layers 4 --pretrain-steps 300 \\
        --corpus examples/preference/pref_train.jsonl examples/data/*.jsonl

builds (a 4-layer Llama whose tokenizer is trained on the example data and which is first trained
as a plain language model on the corpus strings: the chosen and the rejected replies alike, so it
starts without a preference), then trains a LoRA adapter on examples/preference/pref_train.jsonl
(right vs wrong arithmetic, correct vs wrong tool calls, right vs wrong facts; see
make_preference_data.py) and measures on the held-out pairs of pref_eval.jsonl, before and after:

* preference accuracy: the share of pairs whose chosen reply the model gives a higher
  log-probability than the rejected one (both replies have the same form and nearly the same
  length, so this is the model's own preference);
* the log-probability margin ``log p(chosen) - log p(rejected)``, mean over pairs;
* after training, the trainer's own held-out metrics for the loss (``eval_rewards/accuracies`` and
  ``eval_rewards/margins``: for DPO the implicit reward ``beta * log(policy / reference)``, which is
  0 for every reply before training).

A run is reproducible on the same kind of CPU (fixed seed, thread count and deterministic
algorithms); the README lists the spread over seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sage_libs.sage_finetune import LoRAConfig, TrainingConfig, create_trainer
from sage_libs.sage_finetune.config import PreferenceConfig
from sage_libs.sage_finetune.data.preference import tokenize_preference_records

HERE = Path(__file__).resolve().parent
DATA = HERE / "preference"


def ensure_model(path: Path) -> Path:
    """The base model of ``sage-finetune tiny-model`` with the options in the module docstring."""
    if not (path / "config.json").exists():
        from sage_libs.sage_finetune.utils.tiny import build_tiny_model

        corpus = [DATA / "pref_train.jsonl", *sorted((HERE / "data").glob("*.jsonl"))]
        build_tiny_model(path, corpus_files=corpus, hidden_size=128, num_hidden_layers=4, intermediate_size=256,
                         pretrain_steps=300)
    return path


def pair_logps(model, tokenizer, pairs: list[dict]) -> list[tuple[float, float]]:
    """``(log p(chosen), log p(rejected))`` per pair: the summed log-probabilities of each reply's
    scored tokens (the reply and its end-of-turn), with the same rendering and masks as training."""
    import torch

    columns, stats = tokenize_preference_records(pairs, tokenizer)
    assert stats.pairs == len(pairs)
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(len(pairs)):
            scores = []
            for side in ("chosen", "rejected"):
                ids = torch.tensor([columns[f"{side}_input_ids"][i]])
                targets = torch.tensor(columns[f"{side}_labels"][i][1:])
                logits = model(input_ids=ids).logits[0, :-1].float()
                keep = targets != -100
                scores.append(torch.log_softmax(logits[keep], -1).gather(-1, targets[keep, None]).sum().item())
            out.append((scores[0], scores[1]))
    model.train(was_training)
    return out


def summary(scores: list[tuple[float, float]]) -> tuple[float, float]:
    """(preference accuracy, mean log-probability margin)."""
    return (sum(c > r for c, r in scores) / len(scores), sum(c - r for c, r in scores) / len(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="./tiny-pref-model", help="built here if missing")
    parser.add_argument("--loss-type", default="sigmoid", choices=["sigmoid", "ipo", "orpo", "simpo", "kto"])
    parser.add_argument("--beta", type=float, default=None, help="default: 0.1 (SimPO: 2.0)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--output-dir", default="./outputs/dpo-tiny")
    parser.add_argument("--seed", type=int, default=42, help="data order and LoRA init (default 42)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", help="also write the before/after numbers to this file")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = ensure_model(Path(args.model))
    beta = args.beta if args.beta is not None else (2.0 if args.loss_type == "simpo" else 0.1)
    trainer = create_trainer(
        "dpo", method="lora", preference_config=PreferenceConfig(loss_type=args.loss_type, beta=beta),
        training_config=TrainingConfig(model_name_or_path=str(model), output_dir=args.output_dir,
                                       num_train_epochs=args.epochs, per_device_train_batch_size=8,
                                       per_device_eval_batch_size=16, learning_rate=args.learning_rate,
                                       warmup_steps=0.05, lr_scheduler_type="cosine", weight_decay=0.0,
                                       max_seq_length=512, logging_steps=20, eval_steps=10_000, eval_on_start=True,
                                       save_strategy="no", seed=args.seed),
        lora_config=LoRAConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    held_out = [json.loads(line) for line in (DATA / "pref_eval.jsonl").read_text().splitlines()]
    trainer.setup()  # the LoRA adapter starts at zero: this is the base model
    before = pair_logps(trainer.model, trainer.tokenizer, held_out)
    train_file = DATA / ("kto_train.jsonl" if args.loss_type == "kto" else "pref_train.jsonl")
    metrics = trainer.train(str(train_file), held_out)
    after = pair_logps(trainer.model, trainer.tokenizer, held_out)

    families = sorted({r["family"] for r in held_out})
    rows = {}
    print(f"\n{args.loss_type} (beta {beta:g}), seed {args.seed}: held-out pairs of {DATA.name}/pref_eval.jsonl")
    print(f"{'family':<8}{'pairs':>6}{'accuracy before':>17}{'after':>8}{'margin before':>15}{'after':>8}")
    for family in [*families, "all"]:
        idx = [i for i, r in enumerate(held_out) if family in ("all", r["family"])]
        (acc_b, margin_b), (acc_a, margin_a) = summary([before[i] for i in idx]), summary([after[i] for i in idx])
        rows[family] = {"pairs": len(idx), "accuracy_before": acc_b, "accuracy_after": acc_a,
                        "margin_before": margin_b, "margin_after": margin_a}
        print(f"{family:<8}{len(idx):>6}{acc_b:>17.3f}{acc_a:>8.3f}{margin_b:>15.2f}{margin_a:>8.2f}")
    trainer_metrics = {k: metrics[k] for k in ("eval_loss_before", "eval_loss", "eval_rewards/accuracies",
                                               "eval_rewards/margins", "eval_kl", "train_runtime") if k in metrics}
    print("trainer metrics:", ", ".join(f"{k} {v:.4g}" for k, v in trainer_metrics.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"loss_type": args.loss_type, "beta": beta, "seed": args.seed,
                                               "epochs": args.epochs, "learning_rate": args.learning_rate,
                                               "families": rows, **trainer_metrics}, indent=2) + "\n")
    trainer.save_model(Path(args.output_dir) / "adapter")


if __name__ == "__main__":
    main()
