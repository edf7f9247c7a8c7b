"""Bugs the fuzzer found, each as the smallest case that showed it: one message and exit 2 now
(before: exit 1 "... (run with --debug for the traceback)")."""

from __future__ import annotations

import io

import pytest
import yaml

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


# name -> (changes to the base config (None removes a section), the data file or None (the base's),
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
}


@pytest.mark.parametrize("name", list(CASES))
def test_regression(name, fuzz):
    changes, data, argv, expect = CASES[name]
    with fuzz.case() as work:
        cfg = base_config("lora (alpaca)", fuzz.model)
        for key, value in changes.items():
            if value is None:
                cfg.pop(key, None)
            elif isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        if data is not None:
            file, content = data()
            (work / file).write_bytes(content)
        (work / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        o = _engine.run_cli(argv)
        assert _engine.violation(o) is None and o.code == 2, o.err
        assert expect in o.err, o.err
        assert len(o.err.strip().splitlines()) == 1, o.err
        assert not (work / "out").exists()
