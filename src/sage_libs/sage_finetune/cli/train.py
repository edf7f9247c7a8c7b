"""``sage-finetune train CONFIG.yaml [section.key=value ...] [--merge]``: fine-tune from a run config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import run_files
from ..run_config import load_run_config, make_trainer
from ..utils.processes import is_main_process
from .common import config_epilog, print_metrics

__all__ = ["add_parser", "run", "resume_command"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="fine-tune from a YAML config", epilog=config_epilog("train", "training.learning_rate=1e-4 lora.r=16"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config (method, training, lora, data, ...)")
    p.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides (the value is read as YAML)")
    p.add_argument("--merge", action="store_true", help="also write a merged model to OUTPUT_DIR/merged")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..callbacks.safety import terminate_raises

    cfg = load_run_config(args.config, args.overrides)
    trainer = make_trainer(cfg)
    out = Path(cfg["training"].output_dir)
    uses_lora = getattr(trainer, "uses_lora", False)
    adapter = run_files.weights_dir(out, uses_lora)
    # one lock for the whole run, the final save included; SIGTERM stops it cleanly at any point
    with terminate_raises(), trainer.hold_output_dir():
        metrics = trainer.train()
        with trainer.disk_full_guard():  # a full disk: one line, what was kept, how to write it again
            trainer.save_model(adapter)
            if args.merge:
                trainer.merge_and_save(out / run_files.MERGED)
    if not is_main_process():  # under torchrun the main process reports, once
        return 0
    print("\nTraining finished.")
    print_metrics(metrics)
    print("Wrote:")
    for path in run_files.written_files(out, uses_lora, merged=args.merge):
        if path.exists():
            print(f"  {path}")
    return 0



def resume_command(args: argparse.Namespace) -> str:
    """The command line that resumes an interrupted ``train``."""
    import shlex

    overrides = [o for o in args.overrides if o.partition("=")[0] not in ("training.resume_from_checkpoint",
                                                                         "resume_from_checkpoint")]
    return shlex.join(["sage-finetune", "train", args.config, *overrides, "training.resume_from_checkpoint=true"])
