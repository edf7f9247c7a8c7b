"""What the data looks like to the model: the numbers behind ``sage-finetune data inspect``.

Runs the same pipeline as training (formats -> conversation -> render) and reports counts per
format, the token-length distribution, what truncation cuts and drops, the trained-token ratio,
the records whose messages contain control-token text, and one rendered sample with its trained
tokens highlighted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conversation import IGNORE_INDEX
from .pipeline import PrepareStats

__all__ = ["DataReport", "build_report", "text_histogram", "highlight_trained", "plot_length_histogram"]


@dataclass
class DataReport:
    stats: PrepareStats
    lengths: list[int] = field(default_factory=list)
    max_seq_length: int | None = None
    sample: tuple[list[int], list[int]] | None = None

    def control_token_lines(self, limit: int = 3) -> list[str]:
        """What ``data inspect`` says about records whose messages contain control-token text
        (``<|im_end|>`` written inside a reply): their count and the first few, by location."""
        n = self.stats.control_token_text
        if not n:
            return []
        named = [e[len("warning: "):] for e in self.stats.errors if e.startswith("warning: ") and "control token" in e]
        return [f"control-token text inside messages: {n} records (data.control_tokens_in_content)"] + [
            f"  {line}" for line in named[:limit]]

    def summary(self) -> dict[str, Any]:
        s = sorted(self.lengths)
        pct = (lambda q: s[min(len(s) - 1, int(q * len(s)))]) if s else (lambda q: 0)
        return {**self.stats.to_dict(), "max_seq_length": self.max_seq_length,
                "length_min": s[0] if s else 0, "length_median": pct(0.5), "length_p95": pct(0.95),
                "length_p99": pct(0.99), "length_max": s[-1] if s else 0}


def build_report(records: Any, tokenizer: Any, *, sample_index: int = 0, **render_options: Any) -> DataReport:
    """Tokenize ``records`` like training would (``render_options`` as for
    :func:`.pipeline.tokenize_records`) and collect the report."""
    from .pipeline import tokenize_records

    columns, stats = tokenize_records(records, tokenizer, **render_options)
    report = DataReport(stats=stats, lengths=list(columns["length"]),
                        max_seq_length=render_options.get("max_seq_length"))
    if columns["input_ids"]:
        i = min(max(sample_index, 0), len(columns["input_ids"]) - 1)
        report.sample = (columns["input_ids"][i], columns["labels"][i])
    return report


def text_histogram(lengths: list[int], bins: int = 10, width: int = 40) -> str:
    """A fixed-width histogram of token lengths, one line per bin."""
    if not lengths:
        return "(no samples)"
    lo, hi = min(lengths), max(lengths)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min((n - lo) // step, bins - 1)] += 1
    peak = max(counts)
    lines = []
    for b, c in enumerate(counts):
        start, end = lo + b * step, min(lo + (b + 1) * step - 1, hi)
        if start > hi:
            break
        bar = "#" * (round(width * c / peak) if peak else 0)
        lines.append(f"{start:>6}-{end:<6} {c:>7}  {bar}")
    return "\n".join(lines)


def highlight_trained(tokenizer: Any, input_ids: list[int], labels: list[int], color: bool = True) -> str:
    """The sample's text with trained tokens highlighted: green (ANSI) on a terminal, or wrapped
    in ``[[...]]`` without colour."""
    out, run, trained = [], [], None

    def flush() -> None:
        if not run:
            return
        text = tokenizer.decode(run)
        if trained:
            out.append(f"\x1b[1;42;30m{text}\x1b[0m" if color else f"[[{text}]]")
        else:
            out.append(f"\x1b[2m{text}\x1b[0m" if color else text)
        run.clear()

    for tok, lab in zip(input_ids, labels):
        is_trained = lab != IGNORE_INDEX
        if is_trained != trained:
            flush()
            trained = is_trained
        run.append(tok)
    flush()
    return "".join(out)


def plot_length_histogram(lengths: list[int], path: str | os.PathLike, max_seq_length: int | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.hist(lengths, bins=min(50, max(5, len(set(lengths)))), color="#1f77b4")
    if max_seq_length:
        ax.axvline(max_seq_length, color="#d62728", linestyle="--", label=f"max_seq_length={max_seq_length}")
        ax.legend()
    ax.set_xlabel("tokens per sample (after truncation)")
    ax.set_ylabel("samples")
    ax.grid(alpha=0.3)
    from ..utils.plotting import save_figure

    return save_figure(fig, path)
