"""``sage-finetune eval CONFIG.yaml [--adapter DIR]``: eval_loss and perplexity on the config's data."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from ..run_config import load_run_config, make_trainer
from .common import config_epilog, print_metrics

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate loss and perplexity on data.eval_file",
                       description="Evaluate eval_loss and perplexity on data.eval_file (else data.train_file)\n"
                                   "with the config's model, or with --adapter on it.",
                       epilog=config_epilog("eval", "data.eval_file=held_out.jsonl --adapter out/adapter"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config: training.model_name_or_path, data.eval_file, ...")
    p.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides (the value is read as YAML)")
    p.add_argument("--adapter", help="an adapter (or model) directory to evaluate instead of the base")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.overrides)
    trainer = make_trainer(cfg)
    if args.adapter:
        trainer.load_model(args.adapter)
    data = cfg["data"].eval_file or cfg["data"].train_file
    if not data:
        raise UsageError("eval: set data.eval_file (or data.train_file)")
    metrics = trainer.evaluate(data)
    print_metrics(metrics)
    return 0
