"""Preference data (records -> pairs -> exact masks) and the DPO trainer against TRL's DPOTrainer."""

from __future__ import annotations

import json

import pytest

from sage_libs.sage_finetune.data.conversation import DataFormatError
from sage_libs.sage_finetune.data.preference import to_preference_pair, tokenize_preference_records

PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "What is 3+5?", "chosen": "3+5 is 8.", "rejected": "It is 9, I think."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "The number seven."},
    {"prompt": "What is 10-4?", "chosen": "6", "rejected": "I do not know, maybe 14 or so."},
]


def _tokens(tok, ids):
    return [tok.decode([t]) for t in ids]


def _one(tok, record):
    cols, stats = tokenize_preference_records([record], tok)
    assert stats.pairs == 1
    return {k: v[0] for k, v in cols.items()}


# -- data ---------------------------------------------------------------------------------------------
def test_masks_score_only_the_reply_and_its_end_of_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = _one(tok, PAIRS[0])
    prompt = ["<|im_start|>", "user", "\n", "What", " is", " 2", "+", "2", "?", "<|im_end|>", "\n",
              "<|im_start|>", "assistant", "\n"]
    assert _tokens(tok, ex["chosen_input_ids"]) == prompt + ["4", "<|im_end|>"]
    assert _tokens(tok, ex["rejected_input_ids"]) == prompt + ["5", "<|im_end|>"]
    # -100 over the prompt; the reply token and <|im_end|> are scored; nothing after it is kept
    assert ex["chosen_labels"] == [-100] * len(prompt) + ex["chosen_input_ids"][-2:]
    assert ex["rejected_labels"] == [-100] * len(prompt) + ex["rejected_input_ids"][-2:]
    assert ex["length"] == 2 * (len(prompt) + 2)


def test_every_record_shape_gives_the_same_tokens(tiny_tokenizer):
    user = {"role": "user", "content": "What is 2+2?"}
    good, bad = {"role": "assistant", "content": "4"}, {"role": "assistant", "content": "5"}
    shapes = [
        {"prompt": [user], "chosen": [good], "rejected": [bad]},  # TRL conversational, explicit prompt
        {"chosen": [user, good], "rejected": [user, bad]},  # implicit prompt
        {"prompt": [user], "chosen": [user, good], "rejected": [user, bad]},  # full conversations + prompt
        {"prompt": "What is 2+2?", "chosen": [good], "rejected": "5"},
        {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5"},
    ]
    want = _one(tiny_tokenizer, PAIRS[0])
    for record in shapes:
        assert _one(tiny_tokenizer, record) == want, record


def test_multi_turn_implicit_prompt_scores_only_the_last_reply(tiny_tokenizer):
    tok = tiny_tokenizer
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
               {"role": "user", "content": "2+2?"}]
    ex = _one(tok, {"chosen": history + [{"role": "assistant", "content": "4"}],
                    "rejected": history + [{"role": "assistant", "content": "22"}]})
    scored = [t for t, lab in zip(ex["chosen_input_ids"], ex["chosen_labels"]) if lab != -100]
    assert _tokens(tok, scored) == ["4", "<|im_end|>"]  # "Hello" is prompt, not scored
    scored = [t for t, lab in zip(ex["rejected_input_ids"], ex["rejected_labels"]) if lab != -100]
    assert "".join(_tokens(tok, scored)) == "22<|im_end|>"


def test_truncation_keeps_the_start_and_drops_pairs_with_nothing_scored(tiny_tokenizer):
    long_prompt = {"prompt": "Please tell me what 2+2 is, and say nothing else at all.", "chosen": "4", "rejected": "5"}
    cols, stats = tokenize_preference_records([PAIRS[0], long_prompt], tiny_tokenizer, max_seq_length=15)
    assert stats.pairs == 1 and stats.dropped_no_scored_tokens == 1 and stats.truncated == 1
    assert len(cols["chosen_input_ids"][0]) == 15 and cols["chosen_labels"][0][-1] != -100


@pytest.mark.parametrize("record, message", [
    ({"prompt": "Hi", "chosen": "Hello"}, "missing field 'rejected'"),
    ({"prompt": "Hi", "chosen": "Hello", "rejected": "Hello"}, "are identical"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "are identical"),
    ({"prompt": [{"role": "user", "content": "Hi"}],
      "chosen": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "x"}],
      "rejected": [{"role": "assistant", "content": "y"}]}, "not a common prefix"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}, "share no prompt"),
    ({"chosen": "Hello", "rejected": "Bye"}, "give a 'prompt'"),
    ({"prompt": "Hi", "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
      "rejected": "c"}, "must be one assistant message"),
    ({"prompt": "Hi", "chosen": "", "rejected": "c"}, "'chosen' is empty"),
])
def test_bad_records_fail_with_their_location(record, message):
    with pytest.raises(DataFormatError, match=message) as info:
        to_preference_pair(record, where="prefs.jsonl:7")
    assert str(info.value).startswith("prefs.jsonl:7: ")


def test_errors_name_file_and_line(tmp_path, tiny_tokenizer):
    from sage_libs.sage_finetune.data.pipeline import record_location
    from sage_libs.sage_finetune.loaders.jsonl import JSONLLoader

    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps({"prompt": "x", "chosen": "y", "rejected": "y"}) + "\n")
    records = JSONLLoader().load(path)
    with pytest.raises(DataFormatError, match=rf"^{path}:3: 'chosen' and 'rejected' are identical"):
        tokenize_preference_records(records, tiny_tokenizer, locate=record_location)
    cols, stats = tokenize_preference_records(records, tiny_tokenizer, locate=record_location, on_error="skip")
    assert stats.pairs == 1 and stats.skipped_invalid == 1 and stats.errors[0].startswith(f"{path}:3:")
