import json

import pytest

from sage_libs.sage_finetune import create_loader
from sage_libs.sage_finetune.data.conversation import DataFormatError
from sage_libs.sage_finetune.data.render import IGNORE_INDEX

from ..paths import EXAMPLE_DATA  # noqa: E402


def write(path, lines):
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return path


def test_jsonl_load_remembers_lines(tmp_path):
    f = write(tmp_path / "d.jsonl", ['{"prompt": "a", "completion": "b"}', "", '{"prompt": "c", "completion": "d"}'])
    records = create_loader("jsonl").load(f)
    assert list(records) == [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    assert records.line_numbers == [1, 3] and records.source == str(f)


def test_stream_yields_records(tmp_path):
    f = write(tmp_path / "d.jsonl", [json.dumps({"text": str(i)}) for i in range(5)])
    stream = create_loader("jsonl").stream(f)
    assert next(stream) == {"text": "0"}
    assert [r["text"] for r in stream] == ["1", "2", "3", "4"]


@pytest.mark.parametrize("lines, message", [
    (['{"text": "ok"}', '{"text": "broken"'], "d.jsonl:2: malformed JSON (Expecting ',' delimiter at column 18)"),
    (['{"text": "ok"}', b'{"text": "caf\xe9"}'], "d.jsonl:2: bytes that are not UTF-8 at column 14"),
    (['["a", "b"]'], "d.jsonl:1: expected a JSON object per line, got list"),
    (["", "  "], "d.jsonl: the file has no records"),
])
def test_bad_files_name_file_and_line(tmp_path, lines, message):
    f = write(tmp_path / "d.jsonl", lines)
    with pytest.raises(DataFormatError) as err:
        create_loader("jsonl").load(f)
    assert str(err.value).endswith(message) or message in str(err.value)


def test_empty_and_missing_file(tmp_path):
    (tmp_path / "e.jsonl").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"e.jsonl: the file is empty"):
        create_loader("jsonl").load(tmp_path / "e.jsonl")
    with pytest.raises(DataFormatError, match=r"nope.jsonl: no such file"):
        create_loader("jsonl").load(tmp_path / "nope.jsonl")


def test_skip_bad_lines(tmp_path):
    f = write(tmp_path / "d.jsonl", ['{"text": "a"}', "{oops", '{"text": "b"}'])
    records = create_loader("jsonl", on_error="skip").load(f)
    assert [r["text"] for r in records] == ["a", "b"] and records.skipped == 1


def test_instruction_loader_names_misspelled_field(tmp_path):
    f = write(tmp_path / "a.jsonl", ['{"instruction": "x", "output": "y"}', '{"instruction": "x", "ouput": "y"}'])
    with pytest.raises(DataFormatError) as err:
        create_loader("instruction").load(f)
    assert "a.jsonl:2: missing field 'output' (found 'ouput': misspelled?)" in str(err.value)


def test_instruction_loader_reads_json_array(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps([{"instruction": "x", "input": "", "output": "y"}]))
    assert len(create_loader("instruction").load(f)) == 1


def test_preprocess_example_data(tiny_tokenizer):
    loader = create_loader("jsonl")
    ds = loader.preprocess(loader.load(EXAMPLE_DATA / "alpaca_train.jsonl"), tiny_tokenizer, max_seq_length=256)
    assert set(ds.column_names) == {"input_ids", "labels", "length"} and len(ds) == 260
    stats = loader.last_stats.to_dict()
    assert stats["formats"] == {"alpaca": 260} and 0 < stats["trained_token_ratio"] < 1
    for ex in ds.select(range(10)):
        trained = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
        assert trained[-1] == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_preprocess_with_formatting_func(tiny_tokenizer):
    loader = create_loader("jsonl")
    records = [{"q": "2+2?", "a": "4"}]
    ds = loader.preprocess(records, tiny_tokenizer, formatting_func=lambda r: [
        {"role": "user", "content": r["q"]}, {"role": "assistant", "content": r["a"]}])
    ex = ds[0]
    trained = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
    assert tiny_tokenizer.decode(trained) == "4<|im_end|>"
    text_ds = loader.preprocess(records, tiny_tokenizer, formatting_func=lambda r: f"Q: {r['q']} A: {r['a']}")
    assert text_ds[0]["labels"][1:] == text_ds[0]["input_ids"][1:]


def test_mixed_formats_rejected(tmp_path, tiny_tokenizer):
    f = write(tmp_path / "m.jsonl", ['{"prompt": "a", "completion": "b"}', '{"instruction": "x", "output": "y"}'])
    loader = create_loader("jsonl", on_error="skip")
    with pytest.raises(DataFormatError) as err:
        loader.preprocess(loader.load(f), tiny_tokenizer)
    assert "m.jsonl:2: this record is in the alpaca format but" in str(err.value)
    assert "m.jsonl:1 is prompt_completion" in str(err.value)


def test_skip_counts_bad_lines_and_bad_records_in_run_metrics(tmp_path, tiny_model_dir):
    from sage_libs.sage_finetune import DataConfig, TrainingConfig, create_trainer

    f = write(tmp_path / "d.jsonl", ['{"prompt": "a", "completion": "b"}', "{oops",
                                     '{"prompt": "c", "completion": ""}', '{"prompt": "e", "completion": "f"}'])
    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "o"))
    trainer = create_trainer("lora", training_config=tc, data_config=DataConfig(on_error="skip"))
    ds = trainer.prepare_dataset(str(f))
    assert len(ds) == 2
    stats = trainer.data_stats["train"]
    assert stats["skipped_invalid"] == 2 and stats["records"] == 3
    assert stats["first_errors"] == [f"{f}:3: field 'completion' is empty"]
