"""The ``sage finetune`` command: our CLI as a plugin of SAGE's ``sage`` command.

Declared in pyproject under the entry-point group ``sage.cli.plugins``. SAGE's command line
(isage-cli) is a Typer app: it calls ``register(app)`` with that app for every plugin, and
swallows any error a plugin raises (``sage finetune`` would then be "No such command"). So
:func:`register` adds a ``finetune`` command to whatever it is given:

* a Typer app or a click group (isage-cli): a command that takes no options of its own and hands
  every argument after ``finetune`` to :func:`sage_libs.sage_finetune.cli.main`;
* an argparse sub-parser group (``parser.add_subparsers()``): a ``finetune`` sub-parser that does
  the same through ``args.func(args)``.

Either way ``sage finetune COMMAND`` (every command of ``sage-finetune``) behaves (help, error
messages, exit codes) exactly like ``sage-finetune``. Nothing here imports torch, Typer or click
until ``register`` is called with one of them.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]



def command_help() -> str:
    """The one line SAGE shows for ``finetune``: every command of ours, read off our parser."""
    from . import command_names

    return f"Fine-tune LLMs (isage-finetune): {', '.join(command_names())}."


def register(target: Any) -> Any:
    """Add ``finetune`` to SAGE's command line: a Typer app, a click group or an argparse
    sub-parser group. Returns the command (or sub-parser) it added."""
    if hasattr(target, "add_parser"):  # argparse: ArgumentParser.add_subparsers()
        return _register_argparse(target)
    if _is_typer(target):
        return _register_typer(target)
    if _is_click_group(target):
        return _register_click(target)
    raise TypeError(f"sage_libs.sage_finetune.cli.sage_plugin.register: cannot add the 'finetune' command to a "
                    f"{type(target).__module__}.{type(target).__name__}; expected a Typer app, a click group or "
                    "an argparse sub-parser group")


def run(argv: list[str]) -> int:
    """Run ``sage-finetune ARGV`` and return its exit code (argparse's own exits included)."""
    from . import main

    try:
        return int(main(list(argv)) or 0)
    except SystemExit as exc:  # --help, --version and usage errors exit from inside argparse
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)


# ------------------------------------------------------------------------------------------------
# Typer / click (isage-cli)
# ------------------------------------------------------------------------------------------------

# Every argument goes through untouched: no --help of its own, unknown options kept, and parsing
# stops at the first positional argument so that the rest keeps its order (and any `--`).
_CONTEXT = {"ignore_unknown_options": True, "allow_extra_args": True, "allow_interspersed_args": False,
            "help_option_names": []}


def _is_typer(target: Any) -> bool:
    return any(c.__name__ == "Typer" and c.__module__.split(".")[0] == "typer" for c in type(target).__mro__)


def _is_click_group(target: Any) -> bool:
    return any(c.__name__ == "Group" and c.__module__.split(".")[0] == "click" for c in type(target).__mro__)


def _command_body(context_class: Any, exit_class: Any) -> Any:
    """The command function; ``context_class``/``exit_class`` come from the library the app is
    built on (Typer 0.29 carries its own copy of click, whose classes differ from click's)."""

    def finetune(ctx: Any) -> None:
        raise exit_class(run(list(ctx.args)))

    # set as objects, not the strings `from __future__ import annotations` makes: Typer reads the
    # parameter's annotation to find the context parameter
    finetune.__annotations__ = {"ctx": context_class, "return": None}
    finetune.__doc__ = command_help()
    return finetune


def _register_typer(app: Any) -> Any:
    import typer

    body = _command_body(typer.Context, typer.Exit)
    app.command(name="finetune", help=command_help(), add_help_option=False, context_settings=dict(_CONTEXT))(body)
    return body


def _register_click(group: Any) -> Any:
    import click

    body = click.pass_context(_command_body(click.Context, click.exceptions.Exit))
    return group.command(name="finetune", help=command_help(), add_help_option=False, context_settings=dict(_CONTEXT))(body)


# ------------------------------------------------------------------------------------------------
# argparse
# ------------------------------------------------------------------------------------------------

def _register_argparse(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune", add_help=False, help=command_help(),
        description="isage-finetune commands; run 'sage finetune --help' for details.")
    # argparse's REMAINDER does not take a leading option, so the global ones are declared here
    parser.add_argument("-h", "--help", action=_Help, nargs=0, help="show isage-finetune's help")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("finetune_args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=_run)
    return parser


class _Help(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        from . import build_parser

        build_parser().print_help()
        parser.exit(0)


def _run(args: argparse.Namespace) -> int:
    from . import main

    return main((["--debug"] if args.debug else []) + (list(args.finetune_args) or ["--help"]))
