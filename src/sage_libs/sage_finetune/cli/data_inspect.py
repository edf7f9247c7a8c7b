"""``sage-finetune data inspect``: render data exactly as training would (the same rendering
decisions, loader choice and tokenization: :mod:`.data.rendering`, :mod:`.data.sources`) and show
counts, token lengths and one sample with its trained tokens marked, for SFT records, preference
pairs and KTO examples."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import UsageError
from ..run_config import load_run_config
from .common import number

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("data", help="look at training data the way the model will see it")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = data_sub.add_parser("inspect", help="counts, length histogram, truncation, a rendered sample with its "
                            "trained tokens highlighted",
                            description="Counts, length histogram, truncation and one rendered sample with its "
                                        "trained tokens highlighted, as the model will see them.",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="examples:\n  sage-finetune data inspect examples/configs/lora_tiny.yaml\n"
                                   "  sage-finetune data inspect examples/configs/lora_tiny.yaml --sample 3 --no-color\n"
                                   "  sage-finetune data inspect examples/data/chat_train.jsonl --tokenizer ./tiny-model")
    p.add_argument("source", help="a run config (YAML) or a data file")
    p.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides (with a config)")
    p.add_argument("--tokenizer", help="model or tokenizer to render with (default: the config's model)")
    p.add_argument("--format", help="record format for a data file (default: auto)")
    p.add_argument("--max-seq-length", type=number(int, ge=1), help="truncation length (default: the config's, else 1024)")
    p.add_argument("--sample", type=int, default=0, help="index of the sample to show")
    p.add_argument("--png", default="", help="also write the length histogram as a PNG here (default: none; the "
                   "text histogram is always printed)")
    p.add_argument("--no-color", action="store_true", help="mark trained tokens with [[...]] instead of colour")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Render the data like training would and show what the model will see."""
    from ..data.pipeline import record_location
    from ..data.rendering import render_options
    from ..data.report import (
        PreferenceReport,
        SampleOutOfRange,
        build_preference_report,
        build_report,
        locate_sample,
        preference_view,
    )
    from ..data.sources import record_sets

    source = Path(args.source)
    view = "auto"  # a data file: preference pairs, KTO examples or SFT records, from its first record
    if source.suffix in (".yaml", ".yml"):
        cfg = load_run_config(str(source), args.overrides)
        data, training = cfg["data"], cfg["training"]
        view = _preference_view_of_config(cfg)
        files = data.train_file if isinstance(data.train_file, list) else [data.train_file]
        if not data.train_file:
            raise UsageError(f"{source}: data.train_file is not set; nothing to inspect")
        tokenizer_path = args.tokenizer or training.model_name_or_path
        max_len = args.max_seq_length or training.max_seq_length
    else:
        if args.overrides:
            raise UsageError("overrides apply to a config file; pass --format/--max-seq-length with a data file")
        if not args.tokenizer:
            raise UsageError(f"data inspect {source}: pass --tokenizer MODEL_OR_DIR (or give a run config)")
        data = DataConfig(format=args.format or "auto")
        files, tokenizer_path, max_len = [str(source)], args.tokenizer, args.max_seq_length or 1024
    from transformers import AutoTokenizer

    from ..models.files import resolve_model

    from_config = source.suffix in (".yaml", ".yml") and not args.tokenizer
    try:  # a GGUF file: the tokenizer of its conversion
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(
            tokenizer_path, training.gguf_file if from_config else None,
            option="training.model_name_or_path" if from_config else "--tokenizer", weights=False))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a tokenizer from {tokenizer_path!r}: {exc}") from None
    formatting_func = None
    if data.formatting_func:
        from ..utils.user_code import load_function

        formatting_func = load_function(data.formatting_func, "data.formatting_func")
    # the same rendering decisions and loader choice as training (data.rendering, data.sources)
    options = render_options(data, tokenizer, max_seq_length=max_len, formatting_func=formatting_func)
    print(f"chat template: {options.chat_template.source}")
    # every file is tokenized first, so that --sample counts across the files in order
    reports = []
    for entry in files:
        records = record_sets([entry], data, "train")[0]  # a path or a {path, weight, columns} entry
        file = entry["path"] if isinstance(entry, dict) else entry
        file_view = preference_view(records) if view == "auto" else view
        if file_view is not None:
            report = build_preference_report(records, tokenizer, options, unpaired=file_view == "unpaired",
                                             sample_index=None, locate=record_location)
        else:
            report = build_report(records, tokenizer, options, sample_index=None)
        reports.append((file, records, report))
    counts = [report.count for _file, _records, report in reports]
    if any(counts):
        try:
            which, position = locate_sample(args.sample, counts, reports[0][2].noun)
        except SampleOutOfRange as exc:
            where = f"{reports[0][0]}: " if len(reports) == 1 else ""
            raise UsageError(f"data inspect --sample {args.sample}: {where}{exc}") from None
        reports[which][2].pick_sample(position)
    elif args.sample:  # asked for a sample where there is none (the default 0 just shows the counts)
        raise UsageError(f"data inspect --sample {args.sample}: no {reports[0][2].noun if reports else 'examples'} "
                         "to show: every record was skipped or dropped (see the counts without --sample)")
    for file, records, report in reports:
        if isinstance(report, PreferenceReport):
            _print_preference_report(report, records, file, tokenizer, max_len, args, several_files=len(files) > 1)
        else:
            _print_report(report, records, file, tokenizer, max_len, args, several_files=len(files) > 1)
    return 0


def _sample_title(report: Any, args: argparse.Namespace, legend: str) -> str:
    """``sample 12 (...)``: the example's position in its file, and the --sample that chose it when
    that reads differently (negative, or counted across several files)."""
    asked = f"--sample {args.sample}; " if args.sample != report.sample_index else ""
    return f"sample {report.sample_index} ({asked}{legend}):"


def _print_report(report: Any, records: Any, file: str, tokenizer: Any, max_len: int | None,
                  args: argparse.Namespace, *, several_files: bool) -> None:
    import json

    from ..data.report import highlight_trained

    summary = report.summary()
    print(f"== {file}")
    print(f"records {summary['records']}  examples {summary['examples']}  formats {summary['formats']}")
    print(f"invalid (skipped) {summary['skipped_invalid'] + getattr(records, 'skipped', 0)}  "
          f"truncated {summary['truncated']}  dropped (no trained token left) "
          f"{summary['dropped_no_trained_tokens']}  at max_seq_length {max_len}")
    for line in report.control_token_lines():
        print(line)
    print(f"tokens {summary['tokens']}  trained {summary['trained_tokens']}  "
          f"trained-token ratio {summary['trained_token_ratio']:.3f}")
    print(f"length min {summary['length_min']}  median {summary['length_median']}  p95 {summary['length_p95']}  "
          f"p99 {summary['length_p99']}  max {summary['length_max']}")
    _print_lengths(report.lengths, file, max_len, args, several_files=several_files)
    if report.sample is not None:
        color = sys.stdout.isatty() and not args.no_color
        print(_sample_title(report, args, "trained tokens highlighted" if color else "trained tokens in [[...]]"))
        print(highlight_trained(tokenizer, *report.sample, color=color))
    if args.json:
        print(json.dumps(summary))


def _preference_view_of_config(cfg: dict[str, Any]) -> str | None:
    """How a run config's data trains: ``"pairs"`` (method dpo), ``"unpaired"`` (dpo with
    ``preference.loss_type: kto``, which unpairs pairs as training does) or None (SFT)."""
    from ..config import PreferenceConfig

    if cfg["method"] != "dpo":
        return None
    return "unpaired" if (cfg.get("preference") or PreferenceConfig()).loss_type == "kto" else "pairs"


def _print_lengths(lengths: list[int], file: str, max_len: int | None, args: argparse.Namespace, *,
                   several_files: bool) -> None:
    """The token length histogram (text, and a PNG unless ``--png ''``)."""
    from ..data.report import plot_length_histogram, text_histogram

    print("token length histogram:")
    print(text_histogram(lengths))
    if args.png:
        png = Path(args.png)
        if several_files:
            png = png.with_name(f"{png.stem}-{Path(file).stem}{png.suffix}")
        print(f"histogram plot: {plot_length_histogram(lengths, png, max_len)}")


def _print_preference_report(report: Any, records: Any, file: str, tokenizer: Any, max_len: int | None,
                             args: argparse.Namespace, *, several_files: bool) -> None:
    """``data inspect`` for preference records, tokenized as preference training does (the same
    template, system prompt, truncation and error handling), one pair or KTO example shown."""
    import json

    unpaired = report.unpaired
    summary = report.summary()
    print(f"== {file}")
    if unpaired:
        print(f"unpaired preference examples (KTO): records {summary['records']}  examples {summary['examples']}  "
              f"desirable {summary['desirable']}  undesirable {summary['undesirable']}")
    else:
        print(f"preference pairs: records {summary['records']}  pairs {summary['pairs']}")
    same = f"  dropped (replies cut to the same tokens) {summary['dropped_same_after_truncation']}"
    print(f"invalid (skipped) {summary['skipped_invalid'] + getattr(records, 'skipped', 0)}  "
          f"truncated {summary['truncated']}  dropped (no scored token left) "
          f"{summary['dropped_no_scored_tokens']}{same}  at max_seq_length {max_len}")
    for error in summary["first_errors"][:3]:
        print(f"  {error}")
    print(f"tokens {summary['tokens']}  scored {summary['scored_tokens']}  "
          f"scored-token ratio {summary['scored_token_ratio']:.3f}")
    print(f"length per sequence ({'each completion' if unpaired else 'chosen and rejected each'}) "
          f"min {summary['length_min']}  median {summary['length_median']}  p95 {summary['length_p95']}  "
          f"p99 {summary['length_p99']}  max {summary['length_max']}")
    _print_lengths(report.lengths, file, max_len, args, several_files=several_files)
    if report.sample is not None:
        color = sys.stdout.isatty() and not args.no_color
        print(_sample_title(report, args, "scored tokens highlighted" if color else "scored tokens in [[...]]"))
        print("\n".join(report.sample_lines(tokenizer, color=color)))
    if args.json:
        print(json.dumps(summary))
