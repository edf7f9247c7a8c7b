"""benchmarks/plan_validation.py's generator: the same seed draws the same configurations, and the
draws cover the ranges the planner issue asks for (so a report on a fresh seed is a fair test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "plan_validation.py"


def _module():
    spec = importlib.util.spec_from_file_location("plan_validation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_seed_draws_the_same_list_and_another_seed_another():
    pv = _module()
    assert pv.draw(11, 20) == pv.draw(11, 20)
    assert pv.draw(11, 20) != pv.draw(12, 20)
    assert pv.draw(11, 5) == pv.draw(11, 20)[:5]


def test_draws_cover_the_ranges_and_respect_the_budget():
    pv = _module()
    configs = [c for seed in range(10) for c in pv.draw(seed, 20)]
    assert {c["family"] for c in configs} == {"llama", "mistral", "qwen2", "qwen3"}
    assert {c["method"] for c in configs} == {"lora", "qlora", "dora", "full", "freeze", "dpo"}
    assert {c["layout"] for c in configs} == {"padding_free", "padded", "packing"}
    assert {c["tied"] for c in configs} == {True, False} and {c["gradient_checkpointing"] for c in configs} == {True, False}
    assert min(c["vocab"] for c in configs) == 32000 and max(c["vocab"] for c in configs) == 151936
    assert all(256 <= c["hidden"] <= 1024 and c["hidden"] % 64 == 0 for c in configs)
    assert all(c["heads"] % c["kv_heads"] == 0 for c in configs)
    assert all(c["batch"] * c["seq"] <= pv.MAX_TOKENS_PER_BATCH and c["layers"] >= 1 for c in configs)
    assert all(c["layout"] == "padding_free" for c in configs if c["method"] == "dpo")
    assert all(c["tokenizer"] == "bpe8k" for c in configs if c["vocab"] < 49152)
