"""``sage-finetune export SOURCE --gguf OUT.gguf [--type f16]``: a saved adapter (merged onto its
base) or a merged/full model as a GGUF file, with an Ollama Modelfile beside it (:mod:`..export`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")  # export.GGUF_TYPES (tests check)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="write a saved adapter or model as a GGUF file (llama.cpp, Ollama)",
                       description="Write a saved adapter (merged onto its base in memory) or a merged/full model "
                                   "as one GGUF file for llama.cpp, Ollama or LM Studio, and an Ollama Modelfile "
                                   "beside it. Supported model types: llama, mistral, qwen2, qwen3.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  sage-finetune export outputs/lora-tiny/adapter --gguf out/tiny.gguf\n"
                              "  sage-finetune export outputs/full/merged --gguf model-q8.gguf --type q8_0\n"
                              "  cd out && ollama create tiny -f Modelfile")
    p.add_argument("source", help="an adapter directory (merged onto its base) or a merged/full model directory")
    p.add_argument("--gguf", required=True, metavar="OUT.gguf", help="the GGUF file to write")
    p.add_argument("--type", default="f16", metavar="TYPE",
                   help=f"tensor type: {', '.join(TYPES)} (default f16; norms stay f32)")
    p.add_argument("--base", help="base model for an adapter (default: the one recorded in the adapter)")
    p.add_argument("--no-modelfile", action="store_true", help="do not write the Ollama Modelfile")
    p.add_argument("--allow-pickle-weights", action="store_true",
                   help="also load pytorch_model.bin / adapter_model.bin (pickle: only from a trusted source)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_gguf
    from ..run.signals import terminate_raises

    with terminate_raises():  # SIGTERM, like Ctrl-C, ends the export with its temporary files removed
        out = export_gguf(args.source, args.gguf, args.type, base=args.base, modelfile=not args.no_modelfile,
                          allow_pickle_weights=args.allow_pickle_weights)
    print(out)
    if not args.no_modelfile:
        print(out.parent / "Modelfile")
    return 0
