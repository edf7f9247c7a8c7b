"""GGUF fixtures: the tiny Llama written as a GGUF file, and a models cache of each test's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from .writer import write_llama_gguf


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    """The session's tiny Llama (conftest ``tiny_model_dir``) as an F16 GGUF file, as llama.cpp's
    converter writes one (q/k rows permuted, norms in F32)."""
    return write_llama_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(autouse=True)
def models_cache(tmp_path_factory, monkeypatch) -> Path:
    """Conversions go into a folder of this test's own (``$SAGE_FINETUNE_MODELS``), not ~/.cache.
    Session fixtures (``smollm2_gguf``) resolve before this one, so the downloaded file stays where it is."""
    root = tmp_path_factory.mktemp("models")
    monkeypatch.setenv("SAGE_FINETUNE_MODELS", str(root))
    return root
