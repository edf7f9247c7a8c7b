"""What the data looks like to the model: the numbers behind ``sage-finetune data inspect``.

Runs the same pipeline as training (formats -> conversation -> render) and reports counts per
format, the token-length distribution, what truncation cuts and drops, the trained-token ratio,
the records whose messages contain control-token text, and one rendered sample with its trained
tokens highlighted.

Preference data (``method: dpo``, or a file of ``chosen``/``rejected`` or ``completion``/``label``
records) goes through the preference tokenizer instead (:mod:`.preference`): the counts of pairs
(or KTO examples), the length of every scored sequence, and one pair shown as its shared prompt and
its chosen and rejected replies (or a KTO prompt, completion and label) with the scored tokens
highlighted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conversation import IGNORE_INDEX
from .pipeline import PrepareStats

__all__ = ["DataReport", "build_report", "PreferenceReport", "build_preference_report", "preference_view",
           "length_summary", "text_histogram", "highlight_trained", "plot_length_histogram"]


def length_summary(lengths: list[int]) -> dict[str, int]:
    """min, median, p95, p99 and max of token lengths (0 when there are none)."""
    s = sorted(lengths)
    pct = (lambda q: s[min(len(s) - 1, int(q * len(s)))]) if s else (lambda q: 0)
    return {"length_min": s[0] if s else 0, "length_median": pct(0.5), "length_p95": pct(0.95),
            "length_p99": pct(0.99), "length_max": s[-1] if s else 0}


@dataclass
class DataReport:
    stats: PrepareStats
    lengths: list[int] = field(default_factory=list)
    max_seq_length: int | None = None
    sample: tuple[list[int], list[int]] | None = None
    sample_index: int | None = None  # the sample's position among this report's examples
    columns: dict[str, Any] | None = field(default=None, repr=False)  # kept to pick a sample later
    noun = "examples"

    @property
    def count(self) -> int:
        return len(self.columns["input_ids"]) if self.columns else 0

    def pick_sample(self, index: int) -> None:
        """Show example ``index`` (already resolved: 0 <= index < count)."""
        self.sample, self.sample_index = (self.columns["input_ids"][index], self.columns["labels"][index]), index

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
        return {**self.stats.to_dict(), "max_seq_length": self.max_seq_length, **length_summary(self.lengths)}


def build_report(records: Any, tokenizer: Any, options: Any = None, *, sample_index: int | None = 0,
                 **settings: Any) -> DataReport:
    """Tokenize ``records`` like training would (``options`` / ``settings`` as for
    :func:`.pipeline.tokenize_records`) and collect the report, with example ``sample_index``
    picked (negative counts from the end; None: none yet, see :func:`locate_sample`)."""
    from .pipeline import tokenize_records
    from .rendering import RenderOptions

    options = RenderOptions.build(tokenizer, options, **settings)
    columns, stats = tokenize_records(records, tokenizer, options)
    report = DataReport(stats=stats, lengths=list(columns["length"]), max_seq_length=options.max_seq_length,
                        columns=columns)
    if sample_index is not None and report.count:
        report.pick_sample(locate_sample(sample_index, [report.count], report.noun)[1])
    return report


class SampleOutOfRange(IndexError):
    """The sample asked for is not among the examples."""


def locate_sample(index: int, counts: list[int], noun: str = "examples") -> tuple[int, int]:
    """``(report, position)`` of sample ``index`` among the examples of several reports taken in
    order (one per data file; negative counts from the end of the last, as in Python). An index
    outside them is an error, not silently the nearest example."""
    total = sum(counts)
    if not -total <= index < total:
        where = f"there are {total} {noun}" if len(counts) == 1 else \
            f"the {len(counts)} files have {total} {noun} in all, counted across the files in order"
        raise SampleOutOfRange(f"sample {index}: {where} (0 to {total - 1}, or counted from the end: -1 is the last)")
    index %= total
    for which, count in enumerate(counts):
        if index < count:
            return which, index
        index -= count
    raise AssertionError("unreachable")


# -- preference data --------------------------------------------------------------------------------
def preference_view(records: Any) -> str | None:
    """How a data file's records train, from its first record: ``"pairs"`` (chosen and rejected),
    ``"unpaired"`` (KTO's prompt, completion and label) or None (not preference data)."""
    from .preference import is_preference_record, is_unpaired_record

    first = next(iter(records), None)
    if is_unpaired_record(first):
        return "unpaired"
    return "pairs" if is_preference_record(first) else None


@dataclass
class PreferenceReport:
    """What preference training sees: ``stats`` (:class:`.preference.PreferenceStats` or
    ``UnpairedStats``), the token length of every scored sequence (chosen and rejected each, or each
    completion: what ``max_seq_length`` cuts), and one pair's or example's columns."""

    stats: Any
    unpaired: bool
    lengths: list[int] = field(default_factory=list)
    max_seq_length: int | None = None
    sample: dict[str, Any] | None = None
    sample_index: int | None = None
    columns: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def noun(self) -> str:
        return "examples" if self.unpaired else "pairs"

    @property
    def count(self) -> int:
        return len(self.columns["completion_input_ids" if self.unpaired else "chosen_input_ids"]) \
            if self.columns else 0

    def pick_sample(self, index: int) -> None:
        """Show pair (or KTO example) ``index`` (already resolved: 0 <= index < count)."""
        self.sample = {name: column[index] for name, column in self.columns.items()}
        self.sample_index = index

    def summary(self) -> dict[str, Any]:
        scored = self.stats.scored_tokens
        return {"kind": "unpaired (KTO)" if self.unpaired else "pairs", **self.stats.to_dict(),
                "scored_token_ratio": scored / self.stats.tokens if self.stats.tokens else 0.0,
                "max_seq_length": self.max_seq_length, **length_summary(self.lengths)}

    def sample_lines(self, tokenizer: Any, color: bool = True) -> list[str]:
        """The sample: the prompt once (chosen and rejected share its tokens), then each reply
        with its scored tokens highlighted (see :func:`highlight_trained`)."""
        from .preference_collate import prompt_and_completion

        if self.sample is None:
            return []
        sides = ["completion"] if self.unpaired else ["chosen", "rejected"]
        first = sides[0]
        prompt, _ids, _labels = prompt_and_completion(self.sample[f"{first}_input_ids"], self.sample[f"{first}_labels"])
        lines = ["prompt:", tokenizer.decode(prompt)]
        for side in sides:
            _prompt, ids, labels = prompt_and_completion(self.sample[f"{side}_input_ids"], self.sample[f"{side}_labels"])
            title = f"completion (label {str(self.sample['label']).lower()}: " \
                    f"{'desirable' if self.sample['label'] else 'undesirable'}):" if self.unpaired else f"{side}:"
            lines += [title, highlight_trained(tokenizer, ids, labels, color=color)]
        return lines


def build_preference_report(records: Any, tokenizer: Any, options: Any = None, *, unpaired: bool,
                            sample_index: int | None = 0, locate: Any = None, **settings: Any) -> PreferenceReport:
    """Tokenize preference ``records`` like preference training would (``options`` / ``settings``
    as for :func:`.preference.tokenize_preference_records`; ``unpaired``: KTO's view, see
    :func:`.unpaired.tokenize_unpaired_records`) and collect the report."""
    from .preference import tokenize_preference_records
    from .rendering import RenderOptions
    from .unpaired import tokenize_unpaired_records

    options = RenderOptions.build(tokenizer, options, **settings)
    tokenize = tokenize_unpaired_records if unpaired else tokenize_preference_records
    columns, stats = tokenize(records, tokenizer, options, locate=locate)
    sides = ["completion"] if unpaired else ["chosen", "rejected"]
    lengths = [len(ids) for side in sides for ids in columns[f"{side}_input_ids"]]
    report = PreferenceReport(stats, unpaired, lengths, options.max_seq_length, columns=columns)
    if sample_index is not None and report.count:
        report.pick_sample(locate_sample(sample_index, [report.count], report.noun)[1])
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
