"""``sage-finetune tiny-model DIR``: a small model and tokenizer built locally, for tests and demos."""

from __future__ import annotations

import argparse
from typing import Any

import sys
from pathlib import Path

from ..errors import UsageError
from .common import number

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("tiny-model", help="build a tiny model + tokenizer for tests and demos")
    p.add_argument("output", help="directory to write")
    p.add_argument("--arch", default="llama", choices=["llama", "qwen2"])
    p.add_argument("--corpus", nargs="*", default=[], help="JSON/JSONL/text files to train the tokenizer on")
    p.add_argument("--vocab-size", type=number(int, ge=16), default=1024)
    p.add_argument("--hidden-size", type=number(int, ge=8), default=64)
    p.add_argument("--layers", type=number(int, ge=1), default=2)
    p.add_argument("--seed", type=number(int, ge=0), default=0)
    p.add_argument("--pretrain-steps", type=number(int, ge=0), default=0,
                   help="first train it as a plain LM on the corpus for N steps (a small 'base' model)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..utils.tiny import build_tiny_model

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
