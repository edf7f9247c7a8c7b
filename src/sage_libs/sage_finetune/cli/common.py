"""What several commands share: the metrics table and the config epilog of their help."""

from __future__ import annotations

from typing import Any

__all__ = ["print_metrics", "config_epilog"]


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
