"""Fuzzing data records (every format, mutated; .jsonl, .json, .parquet; damaged bytes) through
``sage-finetune data inspect`` (it tokenizes with the run's options, no model) and through the
checks of ``sage-finetune train`` (model loading forbidden). Besides the one-message property
(_engine.py): ``data inspect`` accounts for every record (read, skipped or dropped, never lost)."""

from __future__ import annotations

import yaml
from hypothesis import given, strategies as st

from . import _engine
from ._strategies import SFT_FORMATS, base_config, data_file, data_options
from .conftest import fuzz_settings

# which records go with which run: SFT (lora, agent for trajectories), pairs (dpo), unpaired (kto)
KINDS = {"sft": (SFT_FORMATS, "lora (alpaca)"), "pairs": (["preference"], "dpo"),
         "unpaired": (["unpaired", "preference"], "kto")}


def _case(data, fuzz, work, method: str | None = None):
    kind = data.draw(st.sampled_from(["sft", "sft", "sft", "pairs", "unpaired"]), label="kind")
    formats, base = KINDS[kind]
    f = data.draw(data_file(formats), label="data file")
    (work / f.name).write_bytes(f.data)
    cfg = base_config(base if not (kind == "sft" and "trajectory" in f.formats and data.draw(st.booleans()))
                      else "agent", fuzz.model)
    cfg["data"] = {"train_file": f.name, **data.draw(data_options(), label="data options"),
                   "cache": data.draw(st.sampled_from([False, False, True]))}
    cfg["training"]["max_seq_length"] = data.draw(st.sampled_from([8, 32, 256, 1024]), label="max_seq_length")
    (work / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return kind, f


@fuzz_settings(default=110, share=0.25)
@given(data=st.data())
def test_data_inspect(fuzz, data):
    with fuzz.case() as work:
        kind, f = _case(data, fuzz, work)
        o = _engine.run_cli(["data", "inspect", "run.yaml", "--json", "--no-color"])
        reason = _engine.violation(o) or _engine.check_accounting(
            o, f.units, preference=kind != "sft", exact="trajectory" not in f.formats)
        _engine.record("data inspect", o, work, reason)


@fuzz_settings(default=40, share=0.1)
@given(data=st.data())
def test_data_inspect_of_a_file(fuzz, data):
    """``data inspect FILE --tokenizer MODEL``: the file alone, its format auto or forced."""
    with fuzz.case() as work:
        kind, f = _case(data, fuzz, work)
        fmt = data.draw(st.sampled_from([[], [], ["--format", "alpaca"], ["--format", "messages"],
                                         ["--format", "text"], ["--format", "nope"]]), label="format")
        length = data.draw(st.sampled_from([[], ["--max-seq-length", "16"]]), label="length")
        sample = data.draw(st.sampled_from([[], [], ["--sample", "1"], ["--sample", "-1"], ["--sample", "99"]]))
        o = _engine.run_cli(["data", "inspect", f.name, "--tokenizer", fuzz.model, "--json", "--no-color",
                             *fmt, *length, *sample])
        reason = _engine.violation(o)
        if reason is None and not fmt:
            reason = _engine.check_accounting(o, f.units, preference=kind != "sft",
                                              exact="trajectory" not in f.formats)
        _engine.record("data inspect FILE", o, work, reason)


@fuzz_settings(default=40, share=0.05)
@given(data=st.data())
def test_train_checks_the_data(fuzz, data):
    """``train`` with the same data: its checks before the model (preflight) must not crash either."""
    with fuzz.case() as work:
        _case(data, fuzz, work)
        o = _engine.run_cli(["train", "run.yaml"])
        _engine.record("train (data)", o, work, _engine.violation(o))
