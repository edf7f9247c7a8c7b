"""``sage-finetune plan CONFIG.yaml``: the planner (:mod:`..planner`) on the command line."""

from __future__ import annotations

import argparse
from typing import Any
from .common import number

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plan", help="predict peak memory and time per step without loading the model",
        description="Predict the peak memory (broken down) and the time per step and per epoch of a run, "
                    "without loading any weight (the model's config.json and the tokenized data suffice), and "
                    "suggest what to change to fit a memory budget: the largest per-device batch with the "
                    "gradient accumulation that keeps the global batch, gradient checkpointing, QLoRA, a "
                    "sequence-length cut-off. Time comes from a ~2 s throughput probe of this machine.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  sage-finetune plan run.yaml\n  sage-finetune plan run.yaml --device cuda --memory 24GB"
               "\n  sage-finetune plan run.yaml training.per_device_train_batch_size=16 --processes 8")
    p.add_argument("config", help="YAML run config (as for train)")
    p.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides (the value is read as YAML)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="plan for this device (default: where train would run)")
    p.add_argument("--memory", help="memory budget per device, e.g. 24GB, 80GiB, 512MB (GB = GiB = 2**30 bytes; "
                                    "default: what is available now)")
    p.add_argument("--processes", type=number(int, ge=1), default=None, help="data-parallel processes (default: $WORLD_SIZE or 1)")
    p.add_argument("--tflops", type=number(float, gt=0), default=None,
                   help="the device's matmul throughput in TFLOP/s, instead of measuring it (e.g. planning a GPU "
                        "run on a machine without one)")
    p.add_argument("--no-probe", action="store_true", help="skip the throughput probe (no time estimate)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..errors import UsageError
    from ..planner.plan import plan_trainer
    from ..run_config import load_run_config, make_trainer

    if args.processes is not None and args.processes < 1:
        raise UsageError(f"--processes {args.processes}: expected a positive number")
    cfg = load_run_config(args.config, args.overrides)
    if args.device == "cpu":
        cfg["training"] = cfg["training"].replace(use_cpu=True)
    trainer = make_trainer(cfg)
    plan = plan_trainer(trainer, device=args.device, memory=args.memory, processes=args.processes,
                        probe=not args.no_probe, tflops=args.tflops)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2, default=str))
    else:
        print(plan.render())
    return 0
