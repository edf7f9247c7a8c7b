"""What several commands share: the metrics table, the config epilog of their help, and checked
numeric arguments."""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

__all__ = ["print_metrics", "config_epilog", "number"]


def number(kind: type, *, ge: float | None = None, gt: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type``: an int or a finite float within bounds, so that ``--temperature -1``
    is a usage error (exit 2, naming the option) instead of a library's exception mid-run."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if ge is not None and value < ge:
            raise argparse.ArgumentTypeError(f"must be >= {ge:g}, got {text}")
        if gt is not None and value <= gt:
            raise argparse.ArgumentTypeError(f"must be > {gt:g}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def print_metrics(metrics: dict[str, Any]) -> None:
    keys = ["eval_loss_before", "eval_loss", "perplexity_before", "perplexity", "train_loss", "train_runtime",
            "train_tokens_per_second", "global_step", "trainable_parameters", "eval_samples"]
    width = max(len(k) for k in keys)
    for k in keys:
        if k in metrics:
            v = metrics[k]
            print(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")



def config_epilog(command: str, example: str) -> str:
    import textwrap

    from ..run_config import TOP_LEVEL

    return (textwrap.fill(f"A run config is YAML with the sections {', '.join(TOP_LEVEL)}. Every option, with its "
                          "type, default and help:", width=78)
            + f"\n  sage-finetune options [SECTION]\nOverrides set any option, e.g.:\n  sage-finetune {command} "
            f"run.yaml {example}")
