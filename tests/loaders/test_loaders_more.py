"""Parquet and 🤗 datasets loaders, and the data inspector."""

import json

import pytest

from sage_libs.sage_finetune import create_loader
from sage_libs.sage_finetune.data.conversation import DataFormatError

from ..paths import EXAMPLE_DATA  # noqa: E402

RECORDS = [json.loads(x) for x in (EXAMPLE_DATA / "alpaca_eval.jsonl").read_text().splitlines()]


def test_parquet_load_stream_preprocess(tmp_path, tiny_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "d.parquet"
    keys = sorted({k for r in RECORDS for k in r})
    pq.write_table(pa.table({k: [r.get(k) for r in RECORDS] for k in keys}), f, row_group_size=7)
    loader = create_loader("parquet")
    records = loader.load(f)
    # columns missing from a row (system) come back absent, not as null
    assert [dict(r) for r in records] == RECORDS
    assert records.line_numbers[:3] == [1, 2, 3]
    assert next(iter(loader.stream(f))) == RECORDS[0]
    ds = loader.preprocess(records, tiny_tokenizer)
    assert len(ds) == len(RECORDS) and loader.last_stats.formats == {"alpaca": len(RECORDS)}


def test_parquet_errors(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataFormatError, match=r"bad.parquet: not a readable Parquet file"):
        create_loader("parquet").load(bad)


def test_huggingface_saved_dir_and_data_files(tmp_path, tiny_tokenizer):
    import datasets

    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "saved"))
    loader = create_loader("huggingface")
    ds = loader.load(tmp_path / "saved")
    assert isinstance(ds, datasets.Dataset) and len(ds) == len(RECORDS)
    assert len(loader.preprocess(ds, tiny_tokenizer)) == len(RECORDS)
    from_files = loader.load("json", data_files=str(EXAMPLE_DATA / "alpaca_eval.jsonl"), max_samples=5)
    assert len(from_files) == 5 and from_files[0]["output"] == RECORDS[0]["output"]
    streamed = list(loader.stream("json", data_files=str(EXAMPLE_DATA / "alpaca_eval.jsonl")))
    assert len(streamed) == len(RECORDS)


def test_huggingface_missing_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataFormatError, match=r"no split 'test'; the saved dataset has train"):
        create_loader("huggingface").load(tmp_path / "dd", split="test")


def test_data_inspect_cli(tiny_model_dir, tmp_path, capsys):
    from sage_libs.sage_finetune.cli import main

    png = tmp_path / "lengths.png"
    assert main(["data", "inspect", str(EXAMPLE_DATA / "chat_eval.jsonl"), "--tokenizer", str(tiny_model_dir),
                 "--max-seq-length", "48", "--png", str(png), "--no-color", "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["records"] == 40 and summary["formats"] == {"messages": 40}
    assert summary["truncated"] > 0 and summary["length_max"] == 48
    assert 0 < summary["trained_token_ratio"] < 1
    assert "token length histogram:" in out and "[[" in out and "<|im_end|>]]" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_data_inspect_needs_tokenizer_for_a_file(capsys):
    from sage_libs.sage_finetune.cli import main

    assert main(["data", "inspect", str(EXAMPLE_DATA / "chat_eval.jsonl")]) == 2
    assert "pass --tokenizer" in capsys.readouterr().err


def test_data_preparation_shows_progress_on_a_terminal(tiny_tokenizer, monkeypatch):
    import io
    import sys

    from sage_libs.sage_finetune.data import pipeline
    from sage_libs.sage_finetune.loaders.base import RecordList

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    records = RecordList([{"instruction": f"Say {i}", "output": f"{i}"} for i in range(600)], source="big.jsonl")
    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setattr(pipeline, "_PROGRESS_FROM", 100)
        columns, stats = pipeline.tokenize_records(records, tiny_tokenizer)
        assert stats.examples == 600
        assert ("preparing big.jsonl" in stream.getvalue()) == shown, stream.getvalue()
