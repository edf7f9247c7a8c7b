"""QLoRA: LoRA on a 4-bit NF4 base (bitsandbytes; runs on CPU here, CUDA for real models).

    pip install 'isage-finetune[qlora]'
    python examples/qlora_finetune.py [--model ./tiny-model]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sage_libs.sage_finetune import LoRAConfig, TrainingConfig, create_trainer

DATA = Path(__file__).resolve().parent / "data"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="./tiny-model")
    parser.add_argument("--output-dir", default="./outputs/qlora-python")
    args = parser.parse_args()

    trainer = create_trainer(
        "qlora",
        training_config=TrainingConfig(model_name_or_path=args.model, output_dir=args.output_dir,
                                       num_train_epochs=1, per_device_train_batch_size=8, learning_rate=2e-3,
                                       warmup_steps=0.05, eval_on_start=True, max_seq_length=256),
        lora_config=LoRAConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"),
        quantization_config={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                             "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "float32"},
    )
    metrics = trainer.train(str(DATA / "alpaca_train.jsonl"), str(DATA / "alpaca_eval.jsonl"))
    print(f"eval loss {metrics['eval_loss_before']:.3f} -> {metrics['eval_loss']:.3f}")
    trainer.save_model(f"{args.output_dir}/adapter")
    # merged into the base reloaded in full precision, not into the 4-bit weights
    trainer.merge_and_save(f"{args.output_dir}/merged")


if __name__ == "__main__":
    main()
