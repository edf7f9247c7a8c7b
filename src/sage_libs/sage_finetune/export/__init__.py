"""Export a fine-tuned model for other runtimes: :func:`export_gguf` writes a GGUF file (llama.cpp,
Ollama, LM Studio) and an Ollama ``Modelfile`` (``sage-finetune export``, docs/export.md).

Importing this package is cheap: torch, transformers and gguf load when an export runs."""

from __future__ import annotations

from .gguf_export import GGUF_TYPES, export_gguf

__all__ = ["GGUF_TYPES", "export_gguf"]
