"""``sage-finetune data inspect``: render data exactly as training would (the same rendering
decisions, loader choice and tokenization: :mod:`.data.rendering`, :mod:`.data.sources`) and show
counts, token lengths and one sample with its trained tokens marked, for SFT records, preference
pairs and KTO examples."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from .config import DataConfig
from .errors import UsageError
from .run_config import load_run_config

__all__ = ["cmd_data_inspect"]


def cmd_data_inspect(args: argparse.Namespace) -> int:
    """Render the data like training would and show what the model will see."""
    import json

    from .data.rendering import render_options
    from .data.report import build_report, highlight_trained, preference_view
    from .data.sources import record_sets

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

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a tokenizer from {tokenizer_path!r}: {exc}") from None
    formatting_func = None
    if data.formatting_func:
        from .utils.user_code import load_function

        formatting_func = load_function(data.formatting_func, "data.formatting_func")
    # the same rendering decisions and loader choice as training (data.rendering, data.sources)
    options = render_options(data, tokenizer, max_seq_length=max_len, formatting_func=formatting_func)
    print(f"chat template: {options.chat_template.source}")
    for entry in files:
        records = record_sets([entry], data, "train")[0]  # a path or a {path, weight, columns} entry
        file = entry["path"] if isinstance(entry, dict) else entry
        file_view = preference_view(records) if view == "auto" else view
        if file_view is not None:
            _inspect_preference_file(records, file, tokenizer, file_view == "unpaired", options, args,
                                     several_files=len(files) > 1)
            continue
        with _sample_index_checked(file, args):
            report = build_report(records, tokenizer, sample_index=args.sample, **options.tokenize_kwargs())
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
        _print_lengths(report.lengths, file, max_len, args, several_files=len(files) > 1)
        if report.sample is not None:
            color = sys.stdout.isatty() and not args.no_color
            legend = "trained tokens highlighted" if color else "trained tokens in [[...]]"
            print(f"sample {args.sample} ({legend}):")
            print(highlight_trained(tokenizer, *report.sample, color=color))
        if args.json:
            print(json.dumps(summary))
    return 0


@contextlib.contextmanager
def _sample_index_checked(file: str, args: argparse.Namespace):
    """``--sample N`` past the file's examples: a usage error naming the file and the range."""
    from .data.report import SampleOutOfRange

    try:
        yield
    except SampleOutOfRange as exc:
        raise UsageError(f"data inspect --sample {args.sample}: {file}: {exc}") from None


def _preference_view_of_config(cfg: dict[str, Any]) -> str | None:
    """How a run config's data trains: ``"pairs"`` (method dpo), ``"unpaired"`` (dpo with
    ``preference.loss_type: kto``, which unpairs pairs as training does) or None (SFT)."""
    from .config import PreferenceConfig

    if cfg["method"] != "dpo":
        return None
    return "unpaired" if (cfg.get("preference") or PreferenceConfig()).loss_type == "kto" else "pairs"


def _print_lengths(lengths: list[int], file: str, max_len: int | None, args: argparse.Namespace, *,
                   several_files: bool) -> None:
    """The token length histogram (text, and a PNG unless ``--png ''``)."""
    from .data.report import plot_length_histogram, text_histogram

    print("token length histogram:")
    print(text_histogram(lengths))
    if args.png:
        png = Path(args.png)
        if several_files:
            png = png.with_name(f"{png.stem}-{Path(file).stem}{png.suffix}")
        print(f"histogram plot: {plot_length_histogram(lengths, png, max_len)}")


def _inspect_preference_file(records: Any, file: str, tokenizer: Any, unpaired: bool, options: Any,
                             args: argparse.Namespace, *, several_files: bool) -> None:
    """``data inspect`` for preference records: tokenized as preference training does (the same
    template, system prompt, truncation and error handling), one pair or KTO example shown."""
    import json

    from .data.pipeline import record_location
    from .data.report import build_preference_report

    max_len = options.max_seq_length
    with _sample_index_checked(file, args):
        report = build_preference_report(records, tokenizer, unpaired=unpaired, sample_index=args.sample,
                                         chat_template=options.chat_template.text, max_seq_length=max_len,
                                         system_prompt=options.system_prompt, on_error=options.on_error,
                                         locate=record_location)
    summary = report.summary()
    print(f"== {file}")
    if unpaired:
        print(f"unpaired preference examples (KTO): records {summary['records']}  examples {summary['examples']}  "
              f"desirable {summary['desirable']}  undesirable {summary['undesirable']}")
    else:
        print(f"preference pairs: records {summary['records']}  pairs {summary['pairs']}")
    print(f"invalid (skipped) {summary['skipped_invalid'] + getattr(records, 'skipped', 0)}  "
          f"truncated {summary['truncated']}  dropped (no scored token left) "
          f"{summary['dropped_no_scored_tokens']}  at max_seq_length {max_len}")
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
        legend = "scored tokens highlighted" if color else "scored tokens in [[...]]"
        print(f"sample {args.sample} ({legend}):")
        print("\n".join(report.sample_lines(tokenizer, color=color)))
    if args.json:
        print(json.dumps(summary))
