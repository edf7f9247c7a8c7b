"""The run's pictures: train and eval loss against the optimizer step (loss.png) and, for preference
training, the rewards and the preference accuracy (rewards.png)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

__all__ = ["plot_loss", "plot_rewards", "save_figure"]


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


def plot_rewards(log: Iterable[dict[str, Any]], path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Preference training's companion to loss.png: the implicit rewards of chosen and rejected
    replies and their margin (left), and the preference accuracy (right), train lines and eval
    points against the optimizer step. None (nothing written) when the log has no rewards."""
    log = [e for e in log if "step" in e]

    def series(key: str) -> list[tuple[int, float]]:
        return [(e["step"], e[key]) for e in log if e.get(key) is not None]

    lines = {k: series(k) for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")}
    points = {k: series("eval_" + k) for k in lines}
    if not any(lines.values()) and not any(points.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    colors = {"rewards/chosen": "#2ca02c", "rewards/rejected": "#d62728", "rewards/margins": "#1f77b4",
              "rewards/accuracies": "#1f77b4"}
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        name = key.split("/")[1]
        if lines[key]:
            left.plot(*zip(*lines[key]), label=f"train {name}", color=colors[key], linewidth=1.2)
        if points[key]:
            left.plot(*zip(*points[key]), label=f"eval {name}", color=colors[key], marker="o", linestyle="--")
    left.axhline(0.0, color="gray", linewidth=0.8)
    left.set_xlabel("optimizer step")
    left.set_ylabel("implicit reward (beta x log-ratio)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    key = "rewards/accuracies"
    if lines[key]:
        right.plot(*zip(*lines[key]), label="train accuracy", color=colors[key], linewidth=1.2)
    if points[key]:
        right.plot(*zip(*points[key]), label="eval accuracy", color="#d62728", marker="o")
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("optimizer step")
    right.set_ylabel("preference accuracy (chosen reward > rejected)")
    right.grid(alpha=0.3)
    if lines[key] or points[key]:
        right.legend(fontsize=8)
    if title:
        fig.suptitle(title)
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
