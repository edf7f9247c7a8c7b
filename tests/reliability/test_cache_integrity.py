"""The tokenized-data cache cannot lie: an entry whose data is not what was written (rewritten with
other valid token ids, truncated, its manifest lost) is never used, is rebuilt from the records,
and later runs read the rebuilt entry without warning again."""

from __future__ import annotations

import json
import logging

import pytest

from ._helpers import EXAMPLE_DATA

pytest.importorskip("torch")

from sage_libs.sage_finetune.data.pipeline import prepare_records, tokenize_records  # noqa: E402
from sage_libs.sage_finetune.loaders.jsonl import JSONLLoader  # noqa: E402


@pytest.fixture
def records():
    return JSONLLoader().load(EXAMPLE_DATA / "chat_train.jsonl", max_samples=12)


def prepare(records, tokenizer, cache_dir):
    return prepare_records(records, tokenizer, cache=True, cache_dir=str(cache_dir), max_seq_length=64)


def entry_of(cache_dir):
    [entry] = (cache_dir / "tokenized").iterdir()
    return entry


def rewrite_with_other_token_ids(entry):
    """Valid Arrow data of the same schema and size, other token ids: what a hash of the file catches
    and a header check would not."""
    import pyarrow as pa

    data = entry / "data.arrow"
    with pa.ipc.open_stream(pa.OSFile(str(data), "rb")) as reader:
        table = reader.read_all()
    ids = [[(t + 1) % 500 for t in row] for row in table.column("input_ids").to_pylist()]
    table = table.set_column(0, "input_ids", pa.array(ids, type=table.schema.field("input_ids").type))
    with pa.OSFile(str(data), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def truncate(entry):
    data = entry / "data.arrow"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def forget_manifest(entry):
    (entry / "manifest.json").unlink()


@pytest.mark.parametrize("damage, why", [
    (rewrite_with_other_token_ids, "the SHA-256 of data.arrow differs"),
    (truncate, "truncated or changed on disk"),
    (forget_manifest, "is incomplete or unreadable"),
])
def test_a_bad_entry_is_never_used_and_is_rebuilt(records, tiny_tokenizer, tmp_path, caplog, damage, why):
    reference, _ = tokenize_records(records, tiny_tokenizer, max_seq_length=64)
    cache = tmp_path / "cache"
    first, _ = prepare(records, tiny_tokenizer, cache)
    assert first["input_ids"] == reference["input_ids"]
    entry = entry_of(cache)
    damage(entry)
    from sage_libs.sage_finetune.data import cache as cache_module

    cache_module._verified.clear()  # a new process: nothing checked yet
    with caplog.at_level(logging.WARNING):
        second, stats = prepare(records, tiny_tokenizer, cache)
    assert second["input_ids"] == reference["input_ids"] and second["labels"] == reference["labels"]
    assert stats.examples == len(reference["input_ids"])
    warnings = [r.getMessage() for r in caplog.records if "tokenized-data cache entry" in r.getMessage()]
    assert len(warnings) == 1 and why in warnings[0] and "rebuilding it from the records" in warnings[0]
    # rebuilt: a later run (another process) reads it back, verified, with no warning
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["data.arrow"]["size"] == (entry / "data.arrow").stat().st_size
    cache_module._verified.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        third, _ = prepare(records, tiny_tokenizer, cache)
    assert third["input_ids"] == reference["input_ids"]
    assert not [r for r in caplog.records if "tokenized-data cache" in r.getMessage()]
    assert [p.name for p in (cache / "tokenized").iterdir()] == [entry.name]  # no leftovers


def test_a_training_run_never_trains_on_a_tampered_entry(tiny_model_dir, tmp_path):
    """End to end: the tokens a trainer gets equal the records' tokens after the entry was rewritten."""
    from sage_libs.sage_finetune import DataConfig, TrainingConfig, create_trainer

    data = tmp_path / "train.jsonl"
    data.write_text((EXAMPLE_DATA / "chat_train.jsonl").read_text())

    def prepared(cache):
        tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "o"), max_seq_length=64)
        t = create_trainer("lora", training_config=tc, data_config=DataConfig(cache=cache,
                                                                              cache_dir=str(tmp_path / "c")))
        t.setup_tokenizer()
        return t.prepare_dataset(str(data))

    reference = prepared(False)
    prepared(True)
    rewrite_with_other_token_ids(entry_of(tmp_path / "c"))
    from sage_libs.sage_finetune.data import cache as cache_module

    cache_module._verified.clear()
    assert prepared(True)["input_ids"] == reference["input_ids"]
