"""LoRA fine-tuning from Python (the design's first example), on the tiny local model.

    sage-finetune tiny-model ./tiny-model --corpus examples/data/*.jsonl --hidden-size 128 --layers 4 --pretrain-steps 300
    python examples/lora_finetune.py [--model ./tiny-model]

With a real model, pass a hub id: --model Qwen/Qwen2.5-0.5B-Instruct.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sage_libs.sage_finetune import LoRAConfig, TrainingConfig, create_loader, create_trainer

DATA = Path(__file__).resolve().parent / "data"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="./tiny-model")
    parser.add_argument("--output-dir", default="./outputs/lora-python")
    args = parser.parse_args()

    loader = create_loader("jsonl")
    train = loader.load(DATA / "chat_train.jsonl")
    evald = loader.load(DATA / "chat_eval.jsonl")
    trainer = create_trainer(
        "lora",
        training_config=TrainingConfig(model_name_or_path=args.model, output_dir=args.output_dir,
                                       num_train_epochs=3, per_device_train_batch_size=8, learning_rate=3e-3,
                                       warmup_steps=0.05, lr_scheduler_type="cosine", eval_steps=50,
                                       eval_on_start=True, max_seq_length=256),
        lora_config=LoRAConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"),
    )
    metrics = trainer.train(train, evald)
    print(f"eval loss {metrics['eval_loss_before']:.3f} -> {metrics['eval_loss']:.3f}")
    trainer.save_model(f"{args.output_dir}/adapter")
    trainer.merge_and_save(f"{args.output_dir}/merged")
    print(trainer.generate("What is the capital of France?"))


if __name__ == "__main__":
    main()
