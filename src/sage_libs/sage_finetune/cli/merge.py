"""``sage-finetune merge --adapter DIR --output DIR [--base MODEL]``: a standalone merged model."""

from __future__ import annotations

import argparse
from typing import Any

from pathlib import Path

from ..config import DataConfig, TrainingConfig
from ..errors import ConfigError, UsageError
from ..run_config import make_trainer

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("merge", help="merge a LoRA adapter into its base model",
                       description="Merge a LoRA adapter into its base model and write a standalone model.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  sage-finetune merge --adapter outputs/lora-tiny/adapter --output "
                              "outputs/lora-tiny/merged\n  sage-finetune merge --adapter out/adapter --output merged "
                              "--base Qwen/Qwen2.5-0.5B-Instruct")
    p.add_argument("--adapter", required=True, help="adapter directory (written by train)")
    p.add_argument("--output", required=True, help="where to write the merged model")
    p.add_argument("--base", help="base model (default: the one recorded in the adapter)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.files import adapter_base, base_option

    adapter = Path(args.adapter)
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise UsageError(f"--adapter {adapter}: no adapter_config.json there; expected a PEFT adapter directory")
    base = adapter_base(adapter, args.base, command="merge")
    cfg = {"method": "lora", "training": TrainingConfig(model_name_or_path=base, output_dir=str(args.output)),
           "lora": None, "data": DataConfig()}
    trainer = make_trainer(cfg)
    try:
        trainer.load_model(adapter)
    except ConfigError as exc:  # the base is named as the user gave it, not as a config option they never wrote
        prefix = "training.model_name_or_path:"
        if not str(exc).startswith(prefix):
            raise
        raise ConfigError(base_option(adapter, args.base, command="merge") + str(exc)[len(prefix) - 1:]) from None
    print(trainer.merge_and_save(args.output))
    return 0
