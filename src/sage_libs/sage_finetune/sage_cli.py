"""The ``sage finetune`` command: our CLI as a plugin of SAGE's ``sage`` command.

Declared in pyproject under the entry-point group ``sage.cli.plugins``; SAGE calls
``register(subparsers)`` with its argparse sub-parser group. Everything after ``sage finetune``
goes to :func:`sage_libs.sage_finetune.cli.main` unchanged, so ``sage finetune train|merge|eval|data``
behave (help, errors, exit codes) exactly like ``sage-finetune``.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune", add_help=False, help="fine-tune LLMs (isage-finetune): train, merge, eval, data inspect",
        description="isage-finetune commands; run 'sage finetune --help' for details.")
    # argparse's REMAINDER does not take a leading option, so the global ones are declared here
    parser.add_argument("-h", "--help", action=_Help, nargs=0, help="show isage-finetune's help")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("finetune_args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=_run)
    return parser


class _Help(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        from .cli import build_parser

        build_parser().print_help()
        parser.exit(0)


def _run(args: argparse.Namespace) -> int:
    from .cli import main

    return main((["--debug"] if args.debug else []) + (list(args.finetune_args) or ["--help"]))
