"""``sage-finetune``: the command line.

    sage-finetune train CONFIG.yaml [section.key=value ...]
    sage-finetune merge --adapter DIR --output DIR [--base MODEL]
    sage-finetune eval CONFIG.yaml [section.key=value ...]
    sage-finetune chat MODEL_OR_ADAPTER_DIR [--prompt TEXT] [--system TEXT] [--max-new-tokens N]
    sage-finetune tiny-model DIR [--arch llama|qwen2] [--corpus FILE ...]
    sage-finetune options [SECTION | SECTION.OPTION]
    sage-finetune plan CONFIG.yaml [--device cpu|cuda] [--memory 24GB] [--processes N]

The config file is described in :mod:`.run_config`.

Overrides use ``section.field=value`` (the value is parsed as YAML, so ``1e-4``, ``true`` and
``[q_proj, v_proj]`` work); a bare ``field=value`` is accepted when only one section has that field.
Relative paths are relative to the current directory. Errors in the config or the data exit with
code 2 and one message; ``--debug`` shows the traceback. A training that fails (a NaN loss) exits
with code 1; Ctrl-C saves a checkpoint, prints the command that resumes, and exits with code 130
(143 after SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from . import run_files
from ._version import __version__
from .config import SECTIONS, DataConfig, TrainingConfig
from .data_inspect import cmd_data_inspect
from .errors import (
    ConfigError,
    UsageError,  # noqa: F401 (re-exported)
    )
from .run_config import TOP_LEVEL, load_run_config, make_trainer  # noqa: F401 (load_run_config re-exported)
from .utils.processes import is_main_process

__all__ = ["main", "load_run_config", "build_parser", "DESCRIPTION", "command_names"]

# the one-line description (pyproject.toml's is the same text; tests/test_cli.py checks)
DESCRIPTION = ("Fine-tune LLMs: LoRA, QLoRA, DoRA, LoRA+, full and freeze fine-tuning, agent SFT on tool-use "
               "trajectories, preference training (DPO, IPO, ORPO, SimPO, KTO).")

def _print_metrics(metrics: dict[str, Any]) -> None:
    keys = ["eval_loss_before", "eval_loss", "perplexity_before", "perplexity", "train_loss", "train_runtime",
            "train_tokens_per_second", "global_step", "trainable_parameters"]
    width = max(len(k) for k in keys)
    for k in keys:
        if k in metrics:
            v = metrics[k]
            print(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")


def cmd_train(args: argparse.Namespace) -> int:
    from .callbacks.safety import terminate_raises

    cfg = load_run_config(args.config, args.overrides)
    trainer = make_trainer(cfg)
    out = Path(cfg["training"].output_dir)
    uses_lora = getattr(trainer, "uses_lora", False)
    adapter = run_files.weights_dir(out, uses_lora)
    # one lock for the whole run, the final save included; SIGTERM stops it cleanly at any point
    with terminate_raises(), trainer.hold_output_dir():
        metrics = trainer.train()
        with trainer.disk_full_guard():  # a full disk: one line, what was kept, how to write it again
            trainer.save_model(adapter)
            if args.merge:
                trainer.merge_and_save(out / run_files.MERGED)
    if not is_main_process():  # under torchrun the main process reports, once
        return 0
    print("\nTraining finished.")
    _print_metrics(metrics)
    print("Wrote:")
    for path in run_files.written_files(out, uses_lora, merged=args.merge):
        if path.exists():
            print(f"  {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.overrides)
    trainer = make_trainer(cfg)
    if args.adapter:
        trainer.load_model(args.adapter)
    data = cfg["data"].eval_file or cfg["data"].train_file
    if not data:
        raise UsageError("eval: set data.eval_file (or data.train_file)")
    metrics = trainer.evaluate(data)
    _print_metrics(metrics)
    print(f"  eval_samples  {metrics['eval_samples']}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .utils.model_files import adapter_base

    adapter = Path(args.adapter)
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise UsageError(f"--adapter {adapter}: no adapter_config.json there; expected a PEFT adapter directory")
    base = adapter_base(adapter, args.base, command="merge")
    cfg = {"method": "lora", "training": TrainingConfig(model_name_or_path=base, output_dir=str(args.output)),
           "lora": None, "data": DataConfig()}
    trainer = make_trainer(cfg)
    trainer.load_model(adapter)
    print(trainer.merge_and_save(args.output))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Talk to a saved adapter (on its base) or a merged/full model, rendered with its saved template."""
    from .chat import ChatSession

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens}: expected a positive number")
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature else {}
    session = ChatSession.load(args.model, base=args.base, system=args.system, max_new_tokens=args.max_new_tokens,
                               **sampling)

    def show(text: str) -> None:
        print(text, end="", flush=True)

    if args.prompt is not None:  # one shot
        session.ask(args.prompt, on_text=show)
        print()
        return 0
    print(f"chat with {args.model}: /reset clears the history, /exit or Ctrl-D leaves", file=sys.stderr)
    while True:
        try:
            line = input("user> ")
        except EOFError:
            print()
            return 0
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            session.reset()
            print("(history cleared)", file=sys.stderr)
            continue
        print("assistant> ", end="", flush=True)
        session.ask(line, on_text=show)
        print()


def cmd_options(args: argparse.Namespace) -> int:
    """Every config option with its type, default and help (no torch import)."""
    from .options_help import render_options

    print(render_options(args.section, SECTIONS), end="")
    return 0


def _config_epilog(command: str, example: str) -> str:
    import textwrap

    return (textwrap.fill(f"A run config is YAML with the sections {', '.join(TOP_LEVEL)}. Every option, with its "
                          "type, default and help:", width=78)
            + f"\n  sage-finetune options [SECTION]\nOverrides set any option, e.g.:\n  sage-finetune {command} "
            f"run.yaml {example}")


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from .utils.tiny import build_tiny_model

    for c in args.corpus:
        if not Path(c).is_file():
            raise UsageError(f"--corpus {c}: no such file")
    out = build_tiny_model(args.output, arch=args.arch, corpus_files=args.corpus, vocab_size=args.vocab_size,
                           hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                           intermediate_size=args.hidden_size * 2, seed=args.seed, pretrain_steps=args.pretrain_steps,
                           progress=lambda step, steps, loss: print(f"pretraining step {step}/{steps}  loss {loss:.4f}",
                                                                    file=sys.stderr, flush=True))
    print(f"tiny {args.arch} model and tokenizer written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sage-finetune", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_commands(sub)
    return parser


def add_commands(sub: Any) -> None:
    """Add our sub-commands to an argparse sub-parser group (also used by the ``sage`` CLI plugin)."""
    p = sub.add_parser("train", help="fine-tune from a YAML config", epilog=_config_epilog("train", "training.learning_rate=1e-4 lora.r=16"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config (method, training, lora, data, ...)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (the value is read as YAML)")
    p.add_argument("--merge", action="store_true", help="also write a merged model to OUTPUT_DIR/merged")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate loss and perplexity on data.eval_file",
                       description="Evaluate eval_loss and perplexity on data.eval_file (else data.train_file)\n"
                                   "with the config's model, or with --adapter on it.",
                       epilog=_config_epilog("eval", "data.eval_file=held_out.jsonl --adapter out/adapter"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config: training.model_name_or_path, data.eval_file, ...")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (the value is read as YAML)")
    p.add_argument("--adapter", help="an adapter (or model) directory to evaluate instead of the base")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("options", help="list every config option with its type, default and help",
                       description="List the run config's options (from the config classes) with type, "
                                   "default, allowed values and help.")
    p.add_argument("section", nargs="?",
                   help=f"one section ({', '.join(TOP_LEVEL)}) or one option (training.learning_rate); "
                        "default: all")
    p.set_defaults(func=cmd_options)

    p = sub.add_parser("merge", help="merge a LoRA adapter into its base model",
                       description="Merge a LoRA adapter into its base model and write a standalone model.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  sage-finetune merge --adapter outputs/lora-tiny/adapter --output "
                              "outputs/lora-tiny/merged\n  sage-finetune merge --adapter out/adapter --output merged "
                              "--base Qwen/Qwen2.5-0.5B-Instruct")
    p.add_argument("--adapter", required=True, help="adapter directory (written by train)")
    p.add_argument("--output", required=True, help="where to write the merged model")
    p.add_argument("--base", help="base model (default: the one recorded in the adapter)")
    p.set_defaults(func=cmd_merge)

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
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (with a config)")
    p.add_argument("--tokenizer", help="model or tokenizer to render with (default: the config's model)")
    p.add_argument("--format", help="record format for a data file (default: auto)")
    p.add_argument("--max-seq-length", type=int, help="truncation length (default: the config's, else 1024)")
    p.add_argument("--sample", type=int, default=0, help="index of the sample to show")
    p.add_argument("--png", default="", help="also write the length histogram as a PNG here (default: none; the "
                   "text histogram is always printed)")
    p.add_argument("--no-color", action="store_true", help="mark trained tokens with [[...]] instead of colour")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.set_defaults(func=cmd_data_inspect)

    p = sub.add_parser("chat", help="talk to a saved adapter or merged model, with the template it trained with",
                       description="Talk to a saved adapter (on its base) or a merged/full model, rendered with the "
                                   "chat template it trained with.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  sage-finetune chat outputs/lora-tiny/adapter\n"
                              "  sage-finetune chat outputs/lora-tiny/adapter --prompt 'Name three colours.'\n"
                              "  sage-finetune chat outputs/lora-tiny/merged --temperature 0.7 --max-new-tokens 64")
    p.add_argument("model", help="an adapter directory (loaded onto its base) or a merged/full model directory")
    p.add_argument("--base", help="base model for an adapter (default: the one recorded in the adapter)")
    p.add_argument("--system", help="system message for the conversation")
    p.add_argument("--prompt", help="ask this one question, print the reply and exit")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="sample at this temperature (default 0: greedy)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("tiny-model", help="build a tiny model + tokenizer for tests and demos")
    p.add_argument("output", help="directory to write")
    p.add_argument("--arch", default="llama", choices=["llama", "qwen2"])
    p.add_argument("--corpus", nargs="*", default=[], help="JSON/JSONL/text files to train the tokenizer on")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="first train it as a plain LM on the corpus for N steps (a small 'base' model)")
    p.set_defaults(func=cmd_tiny_model)

    # planner (issue #18): `sage-finetune plan`, defined in planner/cli.py
    from .planner.cli import add_plan_command

    add_plan_command(sub)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's sub-commands by name ({} when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_names() -> list[str]:
    """Every command, ``data inspect`` spelled out (for help texts such as SAGE's)."""
    names = []
    for name, sub in _subcommands(build_parser()).items():
        actions = list(_subcommands(sub))
        names += [f"{name} {a}" for a in actions] if actions else [name]
    return names


def _check_names(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """An unknown command or option names itself with a did-you-mean, under the usage of the
    (sub-)command it was typed for. argparse would print the top-level usage for an option it does
    not know, and Python 3.11's argparse suggests nothing."""
    from .errors import did_you_mean

    current, i = parser, 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return
        if token.startswith("--"):
            name = token.split("=", 1)[0]
            known = [o for o in current._option_string_actions if o.startswith("--")]
            # argparse also accepts a unique prefix (--max-new for --max-new-tokens)
            if name not in known and len([o for o in known if o.startswith(name)]) != 1:
                current.error(f"unrecognized argument {name}" + did_you_mean(name, known)
                              + f"; '{current.prog} --help' lists the options")
        elif not token.startswith("-"):
            commands = _subcommands(current)
            if not commands:
                if not _takes_positionals(current):
                    return
            elif token in commands:
                current = commands[token]
            elif not _is_override(token):
                current.error(f"unknown command {token!r}" + did_you_mean(token, commands)
                              + f"; the commands are {', '.join(commands)}")
        i += 1


def _takes_positionals(parser: argparse.ArgumentParser) -> bool:
    return any(not a.option_strings for a in parser._actions)


def _parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parse_args``, but a ``section.key=value`` override may also come after an option
    (``plan cfg.yaml --no-probe training.max_seq_length=512``): argparse stops filling a positional
    list at the first option, and its intermixed mode does not work with sub-commands."""
    _check_names(parser, list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    overrides = getattr(args, "overrides", None)
    if overrides is not None:
        args.overrides = [*overrides, *(x for x in extra if _is_override(x))]
        extra = [x for x in extra if not _is_override(x)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse_args(parser, argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .errors import DataFormatError, DiskFullError, FineTuneRegistryError, TrainingError, TrainingInterrupted

    _quiet_libraries()
    # Exit codes: 2 bad input (nothing was started), 1 training failed (e.g. the loss became NaN) or an
    # unexpected error, 130 interrupted (Ctrl-C).
    try:
        return args.func(args)
    except (ConfigError, DataFormatError, FineTuneRegistryError) as exc:
        if args.debug:
            raise
        print(f"sage-finetune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"sage-finetune {args.command}: {exc}", file=sys.stderr)
        if args.command == "train":
            print(f"resume with: {_resume_command(args)}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", 2)
        print(f"sage-finetune {args.command}: {'terminated (SIGTERM)' if signum == 15 else 'interrupted'}",
              file=sys.stderr)
        return 128 + signum
    except TrainingError as exc:
        if args.debug:
            raise
        print(f"sage-finetune {args.command}: error: {exc}", file=sys.stderr)
        if args.command == "train" and getattr(exc, "checkpoint", None) and isinstance(exc, DiskFullError):
            print(f"resume with: {_resume_command(args)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug or an environment problem: one line, the traceback with --debug
        if args.debug:
            raise
        print(f"sage-finetune {args.command}: error: {type(exc).__name__}: {exc} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


def _resume_command(args: argparse.Namespace) -> str:
    """The command line that resumes an interrupted ``train``."""
    import shlex

    overrides = [o for o in args.overrides if o.partition("=")[0] not in ("training.resume_from_checkpoint",
                                                                         "resume_from_checkpoint")]
    return shlex.join(["sage-finetune", "train", args.config, *overrides, "training.resume_from_checkpoint=true"])


def _quiet_libraries() -> None:
    import logging

    # The console shows warnings and errors; progress and evaluations come from ConsoleCallback and
    # the summary from the command. INFO lines go to OUTPUT_DIR/train.log (see BaseTrainer.train).
    # Known noise is dropped by its exact text (utils/noise.py); no warning category is silenced.
    # Other libraries' lines go to train.log only (utils/noise.CONSOLE_LOGGERS says which reach the console).
    from .utils.noise import ConsoleLoggers

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # a run lowers our logger to INFO for train.log (run_files)
        if handler.level == logging.NOTSET:
            handler.setLevel(logging.WARNING)
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and not any(isinstance(f, ConsoleLoggers) for f in handler.filters):
            handler.addFilter(ConsoleLoggers())
    for noisy in ("httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
