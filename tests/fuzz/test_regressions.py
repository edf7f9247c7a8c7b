"""Bugs the fuzzer found, each as the smallest case that showed it: one message and exit 2 now
(before: exit 1 "... (run with --debug for the traceback)")."""

from __future__ import annotations

import io

import pytest
import yaml

from ..helpers import apply_sections
from . import _engine
from ._strategies import base_config


def _parquet(records: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf)
    return buf.getvalue()


def _bom_parquet() -> tuple[str, bytes]:
    """A Parquet file with a UTF-8 BOM in front: its footer reads, its first page does not."""
    return "data.parquet", b"\xef\xbb\xbf" + _parquet([{"instruction": "Say hi", "output": "Hi"}])


# name -> (changes to the base config (None removes a section) or its exact text, the data file or None (the base's),
#          the command (run.yaml: the config), a fragment of the one error line)
CASES = {
    "method is a list": ({"method": []}, None, ["train", "run.yaml"],
                         "run.yaml: 'method' must be the name of a method (one of agent, dora, dpo, "),
    "method is a mapping (override)": ({}, None, ["train", "run.yaml", "method={a: 1}"],
                                       "override 'method={a: 1}': 'method' must be the name of a method"),
    "parquet file whose pages do not read (data inspect)": (
        {"data": {"train_file": "data.parquet"}}, _bom_parquet, ["data", "inspect", "run.yaml"],
        "data.parquet: not a readable Parquet file (the rows after row 0: Couldn't deserialize thrift"),
    "parquet file whose pages do not read (train)": (
        {"data": {"train_file": "data.parquet"}}, _bom_parquet, ["train", "run.yaml"],
        "data.parquet: not a readable Parquet file (the rows after row 0: "),
    # PyYAML builds tagged scalars with Python code that raises ValueError, AttributeError, KeyError
    "YAML timestamp tag on a bad value": (b"!!timestamp 2020-01-01method: lora\n", None, ["train", "run.yaml"],
                                         "run.yaml: invalid YAML (a tagged value cannot be built: AttributeError"),
    "YAML int tag on a bad value": (b"method: lora\ntraining: {seed: !!int 0x}\n", None, ["train", "run.yaml"],
                                    "run.yaml: invalid YAML (a tagged value cannot be built: ValueError: invalid "
                                    "literal for int() with base 16: ''"),
    "YAML bool tag (data inspect)": (b"method: !!bool x\n", None, ["data", "inspect", "run.yaml"],
                                     "run.yaml: invalid YAML (a tagged value cannot be built: KeyError: 'x')"),
    "YAML nested too deeply": (b"[" * 5000 + b"]" * 5000 + b"\n", None, ["train", "run.yaml"],
                               "run.yaml: invalid YAML (nested too deeply)"),
    "override with a tag on a bad value": ({}, None, ["train", "run.yaml", "training.seed=!!int 0x"],
                                           "override 'training.seed=!!int 0x': TrainingConfig.seed: expected an "
                                           "integer, got '!!int 0x' (str)"),
    # json.loads raised RecursionError past ~1000 levels
    "JSONL record nested too deeply": ({"data": {"train_file": "data.jsonl"}}, lambda: (
        "data.jsonl", b'{"text": "a"}\n{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"), ["train", "run.yaml"],
        "data.jsonl:2: JSON nested too deeply to read"),
    # a role that is an object: TypeError (unhashable) in the role lookup
    "sharegpt role that is an object": ({"data": {"train_file": "data.jsonl"}}, lambda: (
        "data.jsonl", b'{"conversations": [{"from": {"a": 1}, "value": "x"}]}\n'), ["data", "inspect", "run.yaml"],
        "data.jsonl:1: message 0 has from={'a': 1} (dict); expected a role name such as"),
    "JSON file nested too deeply": ({"data": {"train_file": "data.json"}}, lambda: (
        "data.json", b"[" * 5000 + b"]" * 5000), ["data", "inspect", "run.yaml"], "data.json: JSON nested too deeply"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_regression(name, fuzz):
    changes, data, argv, expect = CASES[name]
    with fuzz.case() as work:
        cfg = apply_sections(base_config("lora (alpaca)", fuzz.model), changes if isinstance(changes, dict) else {})
        if data is not None:
            file, content = data()
            (work / file).write_bytes(content)
        (work / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        if isinstance(changes, bytes):  # the config file's exact text
            (work / "run.yaml").write_bytes(changes)
        o = _engine.run_cli(argv)
        assert _engine.violation(o) is None and o.code == 2, o.err
        assert expect in o.err, o.err
        assert len(o.err.strip().splitlines()) == 1, o.err
        assert not (work / "out").exists()
