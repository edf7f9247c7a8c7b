"""Distributed fine-tuning with isage-finetune: one script, every launcher.

The same file runs on one device or many; the launcher decides:

    # one GPU (or the CPU)
    python examples/distributed_training.py --model ./tiny-model
    # several GPUs on one machine (DDP)
    torchrun --nproc_per_node=4 examples/distributed_training.py --model Qwen/Qwen2.5-7B-Instruct
    accelerate launch --multi_gpu --num_processes 4 examples/distributed_training.py --model ...
    # several machines: run on each node, with its own --node_rank
    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=$NODE_RANK \\
        --rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:29500 examples/distributed_training.py --model ...
    # DeepSpeed ZeRO-2 / ZeRO-3 (configs in examples/deepspeed/)
    torchrun --nproc_per_node=4 examples/distributed_training.py --deepspeed examples/deepspeed/zero3.json --method full
    # FSDP (GPUs)
    torchrun --nproc_per_node=4 examples/distributed_training.py --method full --fsdp "full_shard auto_wrap"

On a CPU-only machine, two processes over gloo:
    torchrun --nproc_per_node=2 examples/distributed_training.py --model ./tiny-model --cpu

Data is tokenized once by the main process; only the main process writes logs, plots and the
adapter. ``per_device_train_batch_size`` is per process: the global batch is
processes x per-device batch x gradient accumulation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sage_libs.sage_finetune import LoRAConfig, TrainingConfig, create_trainer

DATA = Path(__file__).resolve().parent / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="./tiny-model", help="hub id or local model directory")
    parser.add_argument("--method", default="lora", help="lora, qlora, dora, full, ...")
    parser.add_argument("--output-dir", default="./outputs/distributed")
    parser.add_argument("--deepspeed", help="DeepSpeed JSON config (examples/deepspeed/zero2.json or zero3.json)")
    parser.add_argument("--fsdp", help="FSDP options, e.g. 'full_shard auto_wrap' (GPU only)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4, help="per process")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU (gloo) even if GPUs are present")
    args = parser.parse_args()

    training = TrainingConfig(
        model_name_or_path=args.model, output_dir=args.output_dir, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, learning_rate=2e-4 if args.method != "full" else 2e-5,
        warmup_steps=0.03, logging_steps=5, eval_steps=50, save_steps=200, deepspeed=args.deepspeed,
        fsdp=args.fsdp, use_cpu=args.cpu, bf16=False)
    kwargs = {"lora_config": LoRAConfig(r=16, lora_alpha=32, target_modules="all-linear")} if args.method != "full" else {}
    trainer = create_trainer(args.method, training_config=training, **kwargs)
    metrics = trainer.train(str(DATA / "chat_train.jsonl"), str(DATA / "chat_eval.jsonl"))
    trainer.save_model(Path(args.output_dir) / ("adapter" if args.method != "full" else "model"))
    if trainer.hf_trainer.is_world_process_zero():
        print({k: metrics[k] for k in ("train_loss", "eval_loss", "train_tokens_per_second") if k in metrics})


if __name__ == "__main__":
    main()
