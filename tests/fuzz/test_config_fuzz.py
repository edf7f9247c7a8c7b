"""Fuzzing run configs and ``key=value`` overrides through ``sage-finetune train`` (and ``data
inspect``) with model loading forbidden: every case exits 0/reaches the model, or exits 2 with one
``sage-finetune <command>: error: ...`` line (see _engine.py)."""

from __future__ import annotations

import yaml
from hypothesis import given, strategies as st

from . import _engine
from ._strategies import BASES, base_config, config_bytes, overrides
from .conftest import fuzz_settings



def _left_output(o: _engine.Outcome, work) -> str | None:
    if o.code == 2 and (work / "out").exists():
        return "exit 2, but the failed run left its output directory behind"
    return None


@fuzz_settings(default=90, share=0.3)
@given(data=st.data())
def test_mutated_config_files(fuzz, data):
    text = data.draw(config_bytes(fuzz.model), label="run.yaml")
    with fuzz.case() as work:
        (work / "run.yaml").write_bytes(text)
        o = _engine.run_cli(["train", "run.yaml"])
        _engine.record("config file", o, work, _engine.violation(o) or _left_output(o, work))


@fuzz_settings(default=90, share=0.3)
@given(data=st.data())
def test_overrides(fuzz, data):
    base = data.draw(st.sampled_from(sorted(BASES)), label="base")
    args = data.draw(overrides, label="overrides")
    command = data.draw(st.sampled_from([["train"], ["train"], ["data", "inspect"]]), label="command")
    with fuzz.case() as work:
        (work / "run.yaml").write_text(yaml.safe_dump(base_config(base, fuzz.model), sort_keys=False))
        extra = ["--json", "--no-color"] if command[0] == "data" else []
        o = _engine.run_cli([*command, "run.yaml", *args, *extra])
        _engine.record("overrides", o, work, _engine.violation(o) or _left_output(o, work))


def test_every_base_config_passes_the_checks(fuzz):
    """The fuzzer starts from valid configs: each reaches model loading (qlora needs a CUDA GPU:
    exit 2 with its one message on a CPU-only machine)."""
    for name in sorted(BASES):
        with fuzz.case() as work:
            (work / "run.yaml").write_text(yaml.safe_dump(base_config(name, fuzz.model), sort_keys=False))
            o = _engine.run_cli(["train", "run.yaml"])
            assert _engine.violation(o) is None, (name, o.err)
            assert o.code == "model" or (name == "qlora" and o.code == 2), (name, o.code, o.err)
