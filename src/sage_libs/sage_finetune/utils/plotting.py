"""The loss picture: train and eval loss against the optimizer step."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

__all__ = ["plot_loss", "save_figure"]


def plot_loss(log: Iterable[dict[str, Any]], path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Draw ``loss`` and ``eval_loss`` entries of a trainer log into a PNG. Returns the path, or
    None when the log has no loss to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = list(log)
    train = [(e["step"], e["loss"]) for e in log if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log if "eval_loss" in e and "step" in e]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4", linewidth=1.5)
    if evals:
        ax.plot(*zip(*evals), label="eval loss", color="#d62728", marker="o", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure as PNG atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique temporary name (two processes drawing the same picture must not share one)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.png", dir=path.parent)
    os.close(fd)
    try:
        from .io import normal_mode

        normal_mode(tmp)  # mkstemp makes it private
        fig.savefig(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return path
