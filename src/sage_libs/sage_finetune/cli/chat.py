"""``sage-finetune chat MODEL_OR_ADAPTER_DIR``: talk to a saved run (the session itself is
:mod:`..serving`)."""

from __future__ import annotations

import argparse
from typing import Any

import sys

from ..errors import UsageError
from .common import number

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
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
    p.add_argument("--max-new-tokens", type=number(int, ge=1), default=256, help="longest reply in tokens (default 256)")
    p.add_argument("--temperature", type=number(float, ge=0), default=0.0,
                   help="sample at this temperature (default 0: greedy)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Talk to a saved adapter (on its base) or a merged/full model, rendered with its saved template."""
    from ..serving import ChatSession

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
