"""One RenderOptions from the config to every consumer: SFT tokenizing, the preference path, the
cache key and the data report render with the same object, and keyword arguments build the same
object as a run's config does."""

import copy

import pytest

from sage_libs.sage_finetune.config import DataConfig
from sage_libs.sage_finetune.data import cache
from sage_libs.sage_finetune.data.pipeline import tokenize_records
from sage_libs.sage_finetune.data.preference import tokenize_preference_records
from sage_libs.sage_finetune.data.render import ChatRenderer
from sage_libs.sage_finetune.data.rendering import RenderOptions, render_options
from sage_libs.sage_finetune.data.report import build_report
from sage_libs.sage_finetune.errors import ConfigError

from .test_render import MULTI_TURN

THINKING = {"messages": [{"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4", "reasoning_content": "two and two"}]}
PAIR = {"prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4", "reasoning_content": "two and two"}],
        "rejected": [{"role": "assistant", "content": "5", "reasoning_content": "a guess"}]}
# renders reasoning_content, so that reasoning=drop vs train changes the tokens
THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m.get('reasoning_content') %}<think>{{ m['reasoning_content'] }}</think>{% endif %}"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_keyword_arguments_build_the_same_options_as_the_config(tiny_tokenizer):
    config = DataConfig(chat_template=THINK_TEMPLATE, reasoning="drop", mask_history=True, system_prompt="Be brief.")
    from_config = render_options(config, tiny_tokenizer, max_seq_length=64)
    from_kwargs = RenderOptions.build(tiny_tokenizer, chat_template=THINK_TEMPLATE, reasoning="drop",
                                      mask_history=True, system_prompt="Be brief.", max_seq_length=64)
    assert from_config.cache_fields() == from_kwargs.cache_fields()
    assert tokenize_records([MULTI_TURN, THINKING], tiny_tokenizer, from_config)[0] == \
        tokenize_records([MULTI_TURN, THINKING], tiny_tokenizer, chat_template=THINK_TEMPLATE, reasoning="drop",
                         mask_history=True, system_prompt="Be brief.", max_seq_length=64)[0]
    assert ChatRenderer(tiny_tokenizer, from_config).options is from_config  # passed through, not rebuilt
    with pytest.raises(TypeError, match="unknown rendering option"):
        RenderOptions.build(tiny_tokenizer, mask_histroy=True)


def test_changed_settings_replace_fields_and_re_resolve_the_agent_format(tiny_tokenizer):
    base = RenderOptions.build(tiny_tokenizer, max_seq_length=32)
    assert base.agent_format == "tool_calls"  # the tiny ChatML template renders tool calls
    changed = RenderOptions.build(tiny_tokenizer, base, chat_template=THINK_TEMPLATE)
    assert changed.agent_format == "react" and changed.max_seq_length == 32 and base.agent_format == "tool_calls"
    assert RenderOptions.build(tiny_tokenizer, base, chat_template=THINK_TEMPLATE, agent_format="tool_calls"
                               ).agent_format == "tool_calls"  # given: kept
    assert RenderOptions.build(tiny_tokenizer, base) is base


def test_the_preference_path_honours_the_options_it_is_given(tiny_tokenizer):
    kept = render_options(DataConfig(chat_template=THINK_TEMPLATE), tiny_tokenizer, max_seq_length=None)
    dropped = render_options(DataConfig(chat_template=THINK_TEMPLATE, reasoning="drop"), tiny_tokenizer,
                             max_seq_length=None)
    with_thinking = tokenize_preference_records([PAIR], tiny_tokenizer, kept)[0]
    without = tokenize_preference_records([PAIR], tiny_tokenizer, dropped)[0]
    assert "<think>two and two</think>" in tiny_tokenizer.decode(with_thinking["chosen_input_ids"][0])
    assert "<think>" not in tiny_tokenizer.decode(without["chosen_input_ids"][0])
    system = render_options(DataConfig(chat_template=THINK_TEMPLATE, system_prompt="Be brief."), tiny_tokenizer,
                            max_seq_length=None)
    prompted = tokenize_preference_records([PAIR], tiny_tokenizer, system)[0]
    assert tiny_tokenizer.decode(prompted["chosen_input_ids"][0]).startswith("<|im_start|>system\nBe brief.")


def test_the_preference_path_refuses_what_it_cannot_honour_in_one_line(tiny_tokenizer):
    with pytest.raises(ConfigError, match=r"^data.train_on_prompt: preference training scores the replies only"):
        tokenize_preference_records([PAIR], tiny_tokenizer, train_on_prompt=True)
    with pytest.raises(ConfigError, match=r"^formatting_func: not used by preference training"):
        tokenize_preference_records([PAIR], tiny_tokenizer, formatting_func=lambda r: r)


def test_the_cache_key_changes_with_every_option_and_only_with_them(tiny_tokenizer):
    records = [MULTI_TURN]
    base = RenderOptions.build(tiny_tokenizer, max_seq_length=64)
    key = cache.cache_key(records, tiny_tokenizer, base.cache_fields())
    assert key == cache.cache_key(records, tiny_tokenizer, copy.copy(base).cache_fields())
    for change in ({"reasoning": "drop"}, {"mask_history": True}, {"system_prompt": "x"},
                   {"control_tokens_in_content": "control"}, {"max_seq_length": 65}, {"chat_template": THINK_TEMPLATE},
                   {"tools": [{"type": "function", "function": {"name": "f"}}]}):
        other = RenderOptions.build(tiny_tokenizer, base, **change)
        assert cache.cache_key(records, tiny_tokenizer, other.cache_fields()) != key, change


def test_a_broken_tokenizer_template_is_blamed_on_the_tokenizer_not_on_the_option(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }"  # unclosed
    options = render_options(DataConfig(), tok, max_seq_length=None)  # what a run does
    assert not options.chat_template.user_set
    with pytest.raises(ConfigError, match=r"^the tokenizer's chat template \(set data.chat_template to override it\)"):
        tokenize_records([MULTI_TURN], tok, options)
    with pytest.raises(ConfigError, match=r"^data.chat_template: line 1 of the template: Jinja syntax error"):
        tokenize_records([MULTI_TURN], tok, render_options(DataConfig(chat_template=tok.chat_template), tok,
                                                           max_seq_length=None))


def test_the_data_report_renders_with_the_same_options(tiny_tokenizer):
    options = RenderOptions.build(tiny_tokenizer, mask_history=True, max_seq_length=48)
    report = build_report([MULTI_TURN], tiny_tokenizer, options)
    columns, _stats = tokenize_records([MULTI_TURN], tiny_tokenizer, options)
    assert report.columns["labels"] == columns["labels"] and report.max_seq_length == 48
