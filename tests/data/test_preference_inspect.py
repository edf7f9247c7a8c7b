"""`sage-finetune data inspect` on the shipped preference data: pairs, KTO examples and their
scored tokens, counted and shown as preference training tokenizes them."""

from __future__ import annotations

import json

from sage_libs.sage_finetune import create_loader
from sage_libs.sage_finetune.cli import main
from sage_libs.sage_finetune.data.preference import tokenize_preference_records
from sage_libs.sage_finetune.data.unpaired import tokenize_unpaired_records

from ..paths import REPO

PREFERENCE = REPO / "examples" / "preference"
CHATML_PROMPT = "<|im_start|>user\nWhat is 81 + 16?<|im_end|>\n<|im_start|>assistant\n"


def _inspect(capsys, *args: str) -> tuple[str, dict]:
    assert main(["data", "inspect", *args, "--png", "", "--no-color", "--json"]) == 0
    out = capsys.readouterr().out
    return out, json.loads(out.strip().splitlines()[-1])


def test_inspect_shows_pairs_with_their_scored_tokens(tiny_model_dir, tiny_tokenizer, capsys):
    path = PREFERENCE / "pref_train.jsonl"
    out, summary = _inspect(capsys, str(path), "--tokenizer", str(tiny_model_dir))
    # the counts are the preference tokenizer's (what DPO trains on), not an SFT reading of the file
    columns, stats = tokenize_preference_records(create_loader("jsonl").load(path), tiny_tokenizer)
    assert summary["kind"] == "pairs" and summary["pairs"] == stats.pairs == 496
    assert (summary["tokens"], summary["scored_tokens"]) == (stats.tokens, stats.scored_tokens)
    assert sorted(summary[k] for k in ("length_min", "length_max")) == [
        min(map(len, columns["chosen_input_ids"] + columns["rejected_input_ids"])),
        max(map(len, columns["chosen_input_ids"] + columns["rejected_input_ids"]))]
    # the first record, {"prompt": "What is 81 + 16?", "chosen": "81 + 16 = 97.", "rejected": "81 + 16 = 65."}:
    # the shared prompt once, then each reply scored through its end-of-turn token
    assert f"prompt:\n{CHATML_PROMPT}\nchosen:\n[[81 + 16 = 97.<|im_end|>]]\nrejected:\n[[81 + 16 = 65.<|im_end|>]]\n" \
        in out


def test_inspect_shows_a_tool_call_pair(tiny_model_dir, capsys):
    out, _summary = _inspect(capsys, str(PREFERENCE / "pref_train.jsonl"), "--tokenizer", str(tiny_model_dir),
                             "--sample", "2")
    chosen = out[out.index("\nchosen:\n"):out.index("\nrejected:\n")]
    assert chosen.startswith("\nchosen:\n[[<tool_call>") and '"2 * 6"' in chosen and chosen.endswith("<|im_end|>]]")
    assert '"2 - 6"' in out[out.index("\nrejected:\n"):]


def test_inspect_shows_kto_examples_with_their_labels(tiny_model_dir, tiny_tokenizer, capsys):
    path = PREFERENCE / "kto_train.jsonl"
    records = create_loader("jsonl").load(path)
    out, summary = _inspect(capsys, str(path), "--tokenizer", str(tiny_model_dir), "--sample", "1")
    _columns, stats = tokenize_unpaired_records(records, tiny_tokenizer)
    assert summary["kind"] == "unpaired (KTO)" and summary["examples"] == stats.examples == len(records)
    assert summary["desirable"] == sum(r["label"] for r in records) == stats.desirable
    assert (summary["tokens"], summary["scored_tokens"]) == (stats.tokens, stats.scored_tokens)
    # the second record, {"prompt": "Compute 16 * 3.", "completion": "16 * 3 = 47.", "label": false}
    assert "completion (label false: undesirable):\n[[16 * 3 = 47.<|im_end|>]]\n" in out


def test_inspect_reads_a_config_like_preference_training(tiny_model_dir, tmp_path, capsys):
    """With a run config the method decides: loss_type kto unpairs the pairs, as training does."""
    import yaml

    config = tmp_path / "dpo.yaml"
    config.write_text(yaml.safe_dump({
        "method": "dpo", "preference": {"loss_type": "kto"},
        "training": {"model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "o")},
        "data": {"train_file": str(PREFERENCE / "pref_eval.jsonl")}}))
    out, summary = _inspect(capsys, str(config))
    assert summary["kind"] == "unpaired (KTO)" and summary["records"] == 120
    assert summary["examples"] == 240 and summary["desirable"] == summary["undesirable"] == 120
    assert "completion (label true: desirable):\n[[" in out


def test_inspect_sample_index_out_of_range_is_an_error(tiny_model_dir, capsys, tmp_path, monkeypatch):
    """--sample past the examples names the file and the range (it used to show the last one); -1 is the
    last, shown under its position; and no histogram PNG is written unless --png asks for one."""
    monkeypatch.chdir(tmp_path)
    chat = REPO / "examples" / "data" / "chat_eval.jsonl"
    pairs = PREFERENCE / "pref_train.jsonl"
    for path, noun in ((chat, "examples"), (pairs, "pairs")):
        assert main(["data", "inspect", str(path), "--tokenizer", str(tiny_model_dir), "--sample", "100000"]) == 2
        err = capsys.readouterr().err
        assert f"data inspect --sample 100000: {path}: sample 100000: there are " in err
        assert f" {noun} (0 to " in err, err
    capsys.readouterr()
    assert main(["data", "inspect", str(pairs), "--tokenizer", str(tiny_model_dir), "--sample", "-1",
                 "--no-color"]) == 0
    n = sum(1 for line in pairs.read_text().splitlines() if line.strip())
    out = capsys.readouterr().out
    assert f"preference pairs: records {n}  pairs {n}" in out
    last = f"sample {n - 1} (--sample -1; scored tokens in [[...]]):\n"
    assert last in out
    assert main(["data", "inspect", str(pairs), "--tokenizer", str(tiny_model_dir), "--sample", str(n - 1),
                 "--no-color"]) == 0
    assert out.split(last)[1] == capsys.readouterr().out.split(f"sample {n - 1} (scored tokens in [[...]]):\n")[1]
    assert list(tmp_path.iterdir()) == []  # no data-lengths.png in the current directory


def test_inspect_sample_counts_across_several_train_files(tiny_model_dir, tmp_path, capsys):
    """With several train files --sample counts across them in order (it used to be checked, and
    shown, in each file): the first example of the second file is --sample <examples of the first>."""
    import yaml

    first = tmp_path / "first.jsonl"
    second = tmp_path / "second.jsonl"
    first.write_text("".join(json.dumps({"instruction": f"Say {w}.", "output": w}) + "\n" for w in ("one", "two")))
    second.write_text(json.dumps({"instruction": "Say three.", "output": "three"}) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "method": "lora", "training": {"model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "o")},
        "data": {"train_file": [str(first), str(second)]}}))
    assert main(["data", "inspect", str(config), "--sample", "2", "--no-color", "--png", ""]) == 0
    out = capsys.readouterr().out
    assert out.count("\nsample ") == 1
    shown = out.split(f"== {second}\n")[1]
    assert "sample 0 (--sample 2; trained tokens in [[...]]):\n" in shown and "[[three" in shown
    assert main(["data", "inspect", str(config), "--sample", "-3", "--no-color", "--png", ""]) == 0
    out = capsys.readouterr().out
    assert "sample 0 (--sample -3; " in out.split(f"== {second}\n")[0] and "Say one." in out
    assert main(["data", "inspect", str(config), "--sample", "3", "--png", ""]) == 2
    assert "data inspect --sample 3: sample 3: the 2 files have 3 examples in all" in capsys.readouterr().err


def test_inspect_sample_with_no_examples_left_is_an_error(tiny_model_dir, tmp_path, capsys):
    """Every record skipped: the counts are shown, but an explicit --sample says there is nothing to
    show (it used to exit 0 with no sample)."""
    import yaml

    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi.", "output": 5}) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "method": "lora", "training": {"model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "o")},
        "data": {"train_file": str(data), "on_error": "skip"}}))
    assert main(["data", "inspect", str(config), "--png", "", "--no-color"]) == 0
    assert "records 1  examples 0" in capsys.readouterr().out
    assert main(["data", "inspect", str(config), "--sample", "3", "--png", ""]) == 2
    assert "data inspect --sample 3: no examples to show" in capsys.readouterr().err


def test_inspect_renders_preference_data_with_the_runs_options(tiny_model_dir, tmp_path, capsys):
    """data.reasoning reaches the preference renderer in data inspect as in training: a reply with
    reasoning_content that the ChatML template cannot render is an error with the default (train) and
    inspects with drop (one RenderOptions for both)."""
    import yaml

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": [{"role": "user", "content": "What is 2+2?"}],
                                 "chosen": [{"role": "assistant", "content": "4.", "reasoning_content": "2+2=4"}],
                                 "rejected": [{"role": "assistant", "content": "5."}]}) + "\n")
    config = tmp_path / "dpo.yaml"
    config.write_text(yaml.safe_dump({
        "method": "dpo", "training": {"model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "o")},
        "data": {"train_file": str(pairs)}}))
    assert main(["data", "inspect", str(config), "--png", ""]) == 2
    assert "data.reasoning: drop" in capsys.readouterr().err
    out, summary = _inspect(capsys, str(config), "data.reasoning=drop")
    assert summary["pairs"] == 1 and "2+2=4" not in out
