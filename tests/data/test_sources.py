"""Data sources: weighted / counted mixtures of files and column mappings (data/sources.py)."""

import json

import pytest

from sage_libs.sage_finetune import ConfigError, DataConfig, TrainingConfig, create_trainer
from sage_libs.sage_finetune.data.sources import mixture_indices

from ..paths import EXAMPLE_DATA  # noqa: E402


def test_mixture_indices_literal():
    # no spec: every example once, in order
    assert mixture_indices([3, 2], [None, None], seed=0) == [[0, 1, 2], [0, 1]]
    # samples: exactly N; more than the source has repeats it whole, then draws the rest
    picked = mixture_indices([4, 3], [{"samples": 2}, {"samples": 7}], seed=0)
    assert len(picked[0]) == 2 and len(set(picked[0])) == 2 and set(picked[0]) <= {0, 1, 2, 3}
    assert picked[1][:6] == [0, 1, 2, 0, 1, 2] and len(picked[1]) == 7 and picked[1][6] in {0, 1, 2}
    # weights: the mixture is as large as all sources together (10 + 4), shared 3:1
    picked = mixture_indices([10, 4], [{"weight": 3}, {"weight": 1}], seed=0)
    assert [len(p) for p in picked] == [round(14 * 0.75), round(14 * 0.25)] == [10, 4]
    picked = mixture_indices([10, 4], [{"weight": 1}, {"weight": 1}], seed=0)
    assert [len(p) for p in picked] == [7, 7] and picked[1][:4] == [0, 1, 2, 3]
    # seeded: the same seed draws the same examples, another seed others
    assert mixture_indices([100], [{"samples": 10}], seed=1) == mixture_indices([100], [{"samples": 10}], seed=1)
    assert mixture_indices([100], [{"samples": 10}], seed=1) != mixture_indices([100], [{"samples": 10}], seed=2)


@pytest.mark.parametrize("entries, message", [
    ([{"path": "a.jsonl", "weight": 1}, "b.jsonl"], r"data.train_file\[1\]: has no weight while other entries do"),
    ([{"path": "a.jsonl", "weight": 1, "samples": 3}], r"data.train_file\[0\]: give weight or samples, not both"),
    ([{"path": "a.jsonl", "weight": 0}], r"weight must be a positive number, got 0"),
    ([{"path": "a.jsonl", "samples": 1.5}], r"samples must be a whole number >= 1, got 1.5"),
    ([{"path": "a.jsonl", "wieght": 1}], r"data.train_file\[0\]: unknown key 'wieght'"),
    ([{"weight": 1}], r"data.train_file\[0\]: 'path' is required"),
    ([{"path": "a.jsonl", "columns": ["x"]}], r"data.train_file\[0\].columns: expected a mapping"),
])
def test_bad_entries_are_named(entries, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(train_file=entries)


def trainer(model_dir, tmp_path, **data):
    tc = TrainingConfig(model_name_or_path=str(model_dir), output_dir=str(tmp_path / "o"), max_seq_length=256)
    return create_trainer("lora", training_config=tc, data_config=DataConfig(**data))


def test_weighted_mixture_of_files(tiny_model_dir, tmp_path):
    alpaca, chat = str(EXAMPLE_DATA / "alpaca_eval.jsonl"), str(EXAMPLE_DATA / "chat_eval.jsonl")
    t = trainer(tiny_model_dir, tmp_path, train_file=[{"path": alpaca, "weight": 3}, {"path": chat, "weight": 1}])
    dataset = t.prepare_dataset(t.data_config.train_file, "train")
    mixture = t.data_stats["train"]["mixture"]
    total = mixture[0]["examples"] + mixture[1]["examples"]
    assert [m["used"] for m in mixture] == [round(total * 0.75), round(total * 0.25)]
    assert len(dataset) == total
    plain = trainer(tiny_model_dir, tmp_path, train_file=[alpaca, chat])
    whole = plain.prepare_dataset([alpaca, chat], "train")
    first = mixture[0]["examples"]
    # every mixed example is one of its source's examples, token for token
    alpaca_rows = {tuple(r) for r in whole["input_ids"][:first]}
    chat_rows = {tuple(r) for r in whole["input_ids"][first:]}
    mixed = dataset["input_ids"]
    assert all(tuple(r) in alpaca_rows for r in mixed[:mixture[0]["used"]])
    assert all(tuple(r) in chat_rows for r in mixed[mixture[0]["used"]:])
    # the same config draws the same mixture again
    again = trainer(tiny_model_dir, tmp_path, train_file=t.data_config.train_file)
    assert again.prepare_dataset(again.data_config.train_file, "train")["input_ids"] == mixed


def test_column_mapping_equals_renamed_records(tiny_model_dir, tmp_path):
    records = [json.loads(x) for x in (EXAMPLE_DATA / "alpaca_eval.jsonl").read_text().splitlines()][:8]
    renamed = tmp_path / "qa.jsonl"
    renamed.write_text("".join(json.dumps({"question": r["instruction"], "context": r.get("input", ""),
                                           "answer": r["output"]}) + "\n" for r in records))
    original = tmp_path / "alpaca.jsonl"
    original.write_text("".join(json.dumps(r) + "\n" for r in records))
    columns = {"instruction": "question", "input": "context", "output": "answer"}
    global_map = trainer(tiny_model_dir, tmp_path, columns=columns)
    per_file = trainer(tiny_model_dir, tmp_path, train_file=[{"path": str(renamed), "columns": columns}])
    reference = trainer(tiny_model_dir, tmp_path).prepare_dataset(str(original), "train")["input_ids"]
    assert global_map.prepare_dataset(str(renamed), "train")["input_ids"] == reference
    assert per_file.prepare_dataset(per_file.data_config.train_file, "train")["input_ids"] == reference
