"""Data that used to be lost without a word (issue 31): tool calls a chat template does not write,
preference pairs that truncation makes identical, a dataset-wide tools file next to messages records."""

import pytest

from sage_libs.sage_finetune.data.formats import to_conversation
from sage_libs.sage_finetune.data.pipeline import tokenize_records
from sage_libs.sage_finetune.data.preference import tokenize_preference_records
from sage_libs.sage_finetune.data.unpaired import tokenize_unpaired_records
from sage_libs.sage_finetune.errors import TemplateError

CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {}}}}]
TOOL_RECORD = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                            {"role": "assistant", "content": "", "tool_calls": [CALL]},
                            {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
                            {"role": "assistant", "content": "Sunny."}]}
# writes each message's text only, as Llama-3.0's and Phi-3's templates do
TEXT_ONLY = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_tool_call_the_template_does_not_write_is_refused_not_lost(tiny_tokenizer):
    with pytest.raises(TemplateError, match=r"^record 0: assistant turn 1: the chat template does not render its "
                                            r"tool call 'get_weather'"):
        tokenize_records([TOOL_RECORD], tiny_tokenizer, chat_template=TEXT_ONLY)
    # only the last reply trained: the call is history then, and that context would lack it
    with pytest.raises(TemplateError, match=r"^record 0: assistant turn 1: the chat template does not render its "
                                            r"tool call 'get_weather'"):
        tokenize_records([TOOL_RECORD], tiny_tokenizer, chat_template=TEXT_ONLY, mask_history=True)
    last_is_call = {"messages": TOOL_RECORD["messages"][:2]}
    with pytest.raises(TemplateError, match="does not render its tool call 'get_weather'"):
        tokenize_records([last_is_call], tiny_tokenizer, chat_template=TEXT_ONLY, mask_history=True)
    plain = {"messages": [TOOL_RECORD["messages"][0], {"role": "assistant", "content": "Sunny."}]}
    _cols, stats = tokenize_records([TOOL_RECORD, plain], tiny_tokenizer, chat_template=TEXT_ONLY, on_error="skip")
    assert stats.skipped_invalid == 1 and stats.examples == 1 and "get_weather" in stats.errors[0]
    # a template that writes tool calls (the tiny model's own) trains them
    cols, _stats = tokenize_records([TOOL_RECORD], tiny_tokenizer)
    assert "get_weather" in tiny_tokenizer.decode([i for i, lab in zip(cols["input_ids"][0], cols["labels"][0])
                                                   if lab != -100])


def test_preference_pairs_that_truncation_makes_identical_are_dropped_and_counted(tiny_tokenizer, caplog):
    long = "word " * 200
    pairs = [{"prompt": "Yes or no?", "chosen": long + "yes.", "rejected": long + "no."},
             {"prompt": "Yes or no?", "chosen": "yes.", "rejected": "no."}]
    cols, stats = tokenize_preference_records(pairs, tiny_tokenizer, max_seq_length=64)
    assert stats.pairs == 1 and stats.dropped_same_after_truncation == 1 and len(cols["chosen_input_ids"]) == 1
    assert stats.to_dict()["dropped_same_after_truncation"] == 1  # reaches metrics.json and data inspect
    assert "cut to the same tokens" in caplog.text and "record 0" in caplog.text
    _cols, stats = tokenize_preference_records(pairs, tiny_tokenizer, max_seq_length=4096)
    assert stats.pairs == 2 and stats.dropped_same_after_truncation == 0


def test_the_tools_file_reaches_every_record_without_its_own_tools(tiny_tokenizer):
    other = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    assert to_conversation(plain, tools=TOOLS).tools == TOOLS
    assert to_conversation({**plain, "tools": other}, tools=TOOLS).tools == other  # the record's own win
    assert to_conversation({"instruction": "Hi", "output": "Hello."}, tools=TOOLS).tools == TOOLS
    cols, _stats = tokenize_records([plain], tiny_tokenizer, tools=TOOLS)
    assert '"get_weather"' in tiny_tokenizer.decode(cols["input_ids"][0])  # the template rendered them
    pair = {"prompt": "Weather?", "chosen": "Sunny.", "rejected": "Rainy."}
    cols, _stats = tokenize_preference_records([pair], tiny_tokenizer, tools=TOOLS)
    assert '"get_weather"' in tiny_tokenizer.decode(cols["chosen_input_ids"][0])
    cols, _stats = tokenize_unpaired_records([{"prompt": "Weather?", "completion": "Sunny.", "label": True}],
                                             tiny_tokenizer, tools=TOOLS)
    assert '"get_weather"' in tiny_tokenizer.decode(cols["completion_input_ids"][0])


def test_kto_drops_both_completions_of_a_pair_that_truncation_makes_identical(tiny_tokenizer, caplog):
    long = "word " * 200
    pairs = [{"prompt": "Yes or no?", "chosen": long + "yes.", "rejected": long + "no."},
             {"prompt": "Yes or no?", "chosen": "yes.", "rejected": "no."}]
    cols, stats = tokenize_unpaired_records(pairs, tiny_tokenizer, max_seq_length=64)
    assert stats.examples == 2 and stats.dropped_same_after_truncation == 2 and cols["label"] == [True, False]
    assert "cut to the same tokens" in caplog.text


def test_tools_the_template_does_not_render_are_warned_about(tiny_tokenizer, caplog):
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    _cols, stats = tokenize_records([plain, plain], tiny_tokenizer, chat_template=TEXT_ONLY, tools=TOOLS)
    assert stats.examples == 2 and stats.warnings == 2
    assert "the chat template does not render the tools given to it" in caplog.text
    caplog.clear()
    _cols, stats = tokenize_records([plain], tiny_tokenizer, tools=TOOLS)  # the tiny template renders them
    assert stats.warnings == 0 and "does not render the tools" not in caplog.text
