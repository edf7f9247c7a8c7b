"""``sage-finetune train CONFIG.yaml [section.key=value ...] [--merge]``: fine-tune from a run config."""

from __future__ import annotations

import argparse
from typing import Any

from ..run import files as run_files
from ..run_config import load_run_config, make_trainer
from ..utils.processes import is_main_process
from .common import config_epilog, print_metrics

__all__ = ["add_parser", "run", "resume_command"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="fine-tune from a YAML config", epilog=config_epilog("train", "training.learning_rate=1e-4 lora.r=16"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config (method, training, lora, data, ...)")
    p.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides (the value is read as YAML)")
    p.add_argument("--merge", action="store_true", help="also write a merged model to OUTPUT_DIR/merged "
                   "(training.save_merged=true)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..run.signals import terminate_raises

    overrides = [*args.overrides, *(["training.save_merged=true"] if args.merge else [])]
    trainer = make_trainer(load_run_config(args.config, overrides))
    with terminate_raises():  # SIGTERM stops the run cleanly at any point (the loop saves a checkpoint)
        metrics = trainer.train()  # the whole run, the final weights included (run/recipe.py)
    if not is_main_process():  # under torchrun the main process reports, once
        return 0
    tc = trainer.training_config
    print("\nTraining finished.")
    print_metrics(metrics)
    print("Wrote:")
    for path in run_files.written_files(tc.output_dir, getattr(trainer, "uses_lora", False), merged=tc.save_merged):
        if path.exists():
            print(f"  {path}")
    return 0


def resume_command(args: argparse.Namespace) -> str:
    """The command line that resumes an interrupted ``train``."""
    import shlex

    overrides = [o for o in args.overrides if o.partition("=")[0] not in ("training.resume_from_checkpoint",
                                                                         "resume_from_checkpoint")]
    merge = ["--merge"] if args.merge else []
    return shlex.join(["sage-finetune", "train", args.config, *overrides, *merge, "training.resume_from_checkpoint=true"])
