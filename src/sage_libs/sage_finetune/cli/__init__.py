"""``sage-finetune``: the command line. One module per command, each with ``add_parser(sub)`` and
``run(args)``; this module builds the parser from them, checks names, and maps errors to exit codes.

    sage-finetune train CONFIG.yaml [section.key=value ...] [--merge]     cli/train.py
    sage-finetune eval CONFIG.yaml [section.key=value ...] [--adapter DIR] cli/eval.py
    sage-finetune options [SECTION | SECTION.OPTION]                       cli/options.py
    sage-finetune merge --adapter DIR --output DIR [--base MODEL]          cli/merge.py
    sage-finetune export SOURCE --gguf OUT.gguf [--type f16|q8_0|...]      cli/export.py
    sage-finetune data inspect CONFIG_OR_FILE [--sample N]                 cli/data_inspect.py
    sage-finetune chat MODEL_OR_ADAPTER_DIR [--prompt TEXT]                cli/chat.py
    sage-finetune tiny-model DIR [--arch llama|qwen2] [--corpus FILE ...]  cli/tiny_model.py
    sage-finetune plan CONFIG.yaml [--device cpu|cuda] [--memory 24GB]     cli/plan.py
    sage finetune ...  (SAGE's command line)                               cli/sage_plugin.py

The config file is described in :mod:`..run_config`.

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

from .._version import __version__
from ..config import SECTIONS  # noqa: F401 (re-exported)
from ..errors import ConfigError, UsageError  # noqa: F401 (UsageError re-exported)
from ..run_config import load_run_config  # noqa: F401 (re-exported)
from . import chat, data_inspect, eval, export, merge, options, plan, tiny_model, train
from ..utils.noise import known_noise_dropped
from .console import quiet_libraries

__all__ = ["main", "load_run_config", "build_parser", "DESCRIPTION", "command_names"]

# the one-line description (pyproject.toml's is the same text; tests/test_cli.py checks)
DESCRIPTION = ("Fine-tune LLMs: LoRA, QLoRA, DoRA, LoRA+, full and freeze fine-tuning, agent SFT on tool-use "
               "trajectories, preference training (DPO, IPO, ORPO, SimPO, KTO).")

# in the order --help lists them
COMMANDS = (train, eval, options, merge, export, data_inspect, chat, tiny_model, plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sage-finetune", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_commands(sub)
    return parser


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add our commands to an argparse sub-parser group (also used by the ``sage`` CLI plugin)."""
    for command in COMMANDS:
        command.add_parser(sub)


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
    from ..errors import did_you_mean

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
        extra = [x for x in extra if x != "--"]  # `cmd cfg.yaml --flag -- a.b=c`: the rest are overrides
        args.overrides = [*overrides, *(x for x in extra if _is_override(x))]
        extra = [x for x in extra if not _is_override(x)]
    if extra:  # under the usage of the command they were typed for
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub-)parser of the command ``args`` were parsed for (``data inspect``: inspect's)."""
    for name in (getattr(args, "command", None), getattr(args, "data_command", None)):
        commands = _subcommands(parser)
        if name is None or name not in commands:
            break
        parser = commands[name]
    return parser


def command_label(args: argparse.Namespace) -> str:
    """``train``, ``data inspect``, ...: how error messages name the command."""
    return " ".join(n for n in (getattr(args, "command", None), getattr(args, "data_command", None)) if n)


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse_args(parser, argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..errors import DataFormatError, DiskFullError, FineTuneRegistryError, TrainingError, TrainingInterrupted

    quiet_libraries()
    # Exit codes: 2 bad input (nothing was started), 1 training failed (e.g. the loss became NaN) or an
    # unexpected error, 130 interrupted (Ctrl-C).
    try:
        with known_noise_dropped():
            return args.func(args)
    except (ConfigError, DataFormatError, FineTuneRegistryError) as exc:
        if args.debug:
            raise
        print(f"sage-finetune {command_label(args)}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"sage-finetune {command_label(args)}: {exc}", file=sys.stderr)
        if args.command == "train":
            print(f"resume with: {train.resume_command(args)}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", 2)
        print(f"sage-finetune {command_label(args)}: {'terminated (SIGTERM)' if signum == 15 else 'interrupted'}",
              file=sys.stderr)
        return 128 + signum
    except TrainingError as exc:
        if args.debug:
            raise
        print(f"sage-finetune {command_label(args)}: error: {exc}", file=sys.stderr)
        if args.command == "train" and getattr(exc, "checkpoint", None) and isinstance(exc, DiskFullError):
            print(f"resume with: {train.resume_command(args)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug or an environment problem: one line, the traceback with --debug
        if args.debug:
            raise
        print(f"sage-finetune {command_label(args)}: error: {type(exc).__name__}: {exc} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1
