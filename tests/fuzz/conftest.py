"""The fuzzer's settings and fixtures (see _engine.py for the property).

Default: seeded (derandomize: the same cases every run), a few hundred cases in about a minute on
2 cores. ``SAGE_FUZZ_EXAMPLES=N`` spreads N cases over the fuzz tests (benchmarks/fuzz_long.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.configuration import set_hypothesis_home_dir

from . import _engine

# hypothesis keeps caches in ./.hypothesis; the fuzzer writes nothing in the checkout
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="sage-finetune-hypothesis-"))

TOTAL = int(os.environ.get("SAGE_FUZZ_EXAMPLES", "0") or 0)


def fuzz_settings(default: int, share: float) -> settings:
    """``default`` cases in the test suite; ``share`` of SAGE_FUZZ_EXAMPLES in long mode."""
    n = max(1, round(TOTAL * share)) if TOTAL else default
    phases = (Phase.explicit, Phase.reuse, Phase.generate) if _engine.LONG else tuple(Phase)
    return settings(max_examples=n, derandomize=True, database=None, deadline=None, phases=phases,
                    print_blob=False, suppress_health_check=list(HealthCheck))


class Fuzz:
    """The tiny model, and a fresh current directory per case (removed after it)."""

    def __init__(self, model: Path, root: Path) -> None:
        self.model, self.root = str(model), root

    @contextlib.contextmanager
    def case(self) -> Iterator[Path]:
        work = Path(tempfile.mkdtemp(dir=self.root))
        before = os.getcwd()
        os.chdir(work)
        try:
            yield work
        finally:
            os.chdir(before)
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def fuzz(tiny_model_dir, tmp_path_factory) -> Iterator[Fuzz]:
    """Model loading forbidden (a config that passes every check stops there: ModelLoadReached), and
    every cache a case could fill pointed into the test's temporary folder."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise _engine.ModelLoadReached()

    root = tmp_path_factory.mktemp("fuzz")
    mp = pytest.MonkeyPatch()
    mp.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    for name in ("WANDB_MODE",):
        mp.setenv(name, "disabled")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("SAGE_FINETUNE_MODELS", str(root / "models-cache"))
    mp.setenv("HF_DATASETS_CACHE", str(root / "datasets-cache"))
    with contextlib.suppress(ImportError):
        import datasets.config

        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "datasets-cache"))
    os.environ.setdefault("SAGE_FUZZ_MODEL", str(tiny_model_dir))
    try:
        yield Fuzz(tiny_model_dir, root)
    finally:
        mp.undo()
        _engine.write_report()  # long mode: what was found so far (again at the end of the session)


def pytest_sessionfinish(session, exitstatus):
    _engine.write_report()
