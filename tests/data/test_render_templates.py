"""Template behaviours that used to mis-mask, refuse or crash (issue 15), one test each; the
template zoo (test_template_zoo.py) runs the same templates through every scenario."""

import json
from pathlib import Path

import pytest

from sage_libs.sage_finetune.data.conversation import DataFormatError
from sage_libs.sage_finetune.data.formats import to_conversation
from sage_libs.sage_finetune.data.pipeline import tokenize_records
from sage_libs.sage_finetune.data.render import IGNORE_INDEX, ChatRenderer, TemplateError
from sage_libs.sage_finetune.data.templates import FALLBACK_CHAT_TEMPLATE, resolve_chat_template
from sage_libs.sage_finetune.errors import ConfigError
from sage_libs.sage_finetune.utils.tiny import CHATML_TEMPLATE

from ..paths import TEMPLATES as ASSETS  # noqa: E402
from .test_render import MULTI_TURN

NO_SYSTEM = {"messages": MULTI_TURN["messages"][1:]}
CALL = {"id": "call12345", "type": "function", "function": {"name": "calculator", "arguments": '{"x": "2+2"}'}}
TOOLS = [{"type": "function", "function": {"name": "calculator", "description": "Adds numbers",
                                           "parameters": {"type": "object", "properties": {}}}}]


def trained(tok, ids, labels):
    segments, run = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            run.append(i)
        elif run:
            segments.append(tok.decode(run))
            run = []
    if run:
        segments.append(tok.decode(run))
    return segments


def _tok(tiny_model_dir, tokens=(), eos=None, template=None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    if tokens:
        tok.add_special_tokens({"additional_special_tokens": list(tokens)}, replace_extra_special_tokens=False)
    if eos:
        tok.add_special_tokens({"eos_token": eos})
    if template is not None:
        tok.chat_template = template
    return tok


def _trl(name):
    trl = pytest.importorskip("trl")
    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


# 1. end-of-turn token written only when another message follows ----------------------------------------
def test_chatml_that_closes_turns_only_when_followed_trains_every_im_end(tiny_model_dir):
    tok = _tok(tiny_model_dir, template=(ASSETS / "qwen1.5_chat.jinja").read_text(encoding="utf-8"))
    res = ChatRenderer(tok)(to_conversation(MULTI_TURN))
    # the template renders the last reply open; it is closed like the earlier one so the model learns to stop
    assert tok.decode(res.input_ids).endswith("<|im_start|>assistant\nIt is 4.<|im_end|>")
    assert trained(tok, res.input_ids, res.labels) == ["Hello!<|im_end|>", "It is 4.<|im_end|>"]


# 2. refused although an exact mask exists ------------------------------------------------------------
def test_phi3_eos_after_the_last_reply_only(tiny_model_dir):
    tok = _tok(tiny_model_dir, ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], eos="<|endoftext|>",
               template=_trl("phi3"))
    res = ChatRenderer(tok)(to_conversation(MULTI_TURN))
    assert trained(tok, res.input_ids, res.labels) == ["Hello!<|end|>", "It is 4.<|end|>\n<|endoftext|>"]


@pytest.mark.parametrize("record, expected_system", [(MULTI_TURN, None), ({**MULTI_TURN, "tools": TOOLS}, "tools")])
def test_mistral_v03_system_and_tools_in_the_last_user_message(tiny_model_dir, record, expected_system):
    tok = _tok(tiny_model_dir, ["[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "</s>", "<s>"],
               eos="</s>", template=(ASSETS / "mistral_v0.3_last_user.jinja").read_text(encoding="utf-8"))
    res = ChatRenderer(tok)(to_conversation(record))
    text = tok.decode(res.input_ids)
    assert "[INST] Be brief.\n\nWhat is 2+2?[/INST]" in text  # the system prompt sits in the last user message
    assert trained(tok, res.input_ids, res.labels) == [" Hello!</s>", " It is 4.</s>"]


def test_deepseek_generation_prompt_with_think_prefill(tiny_model_dir):
    tok = _tok(tiny_model_dir, ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>"],
               eos="<｜end▁of▁sentence｜>", template=_trl("deepseekv3"))
    assert tok.apply_chat_template(NO_SYSTEM["messages"][:1], tokenize=False,
                                   add_generation_prompt=True).endswith("<｜Assistant｜><think>\n")
    res = ChatRenderer(tok)(to_conversation(NO_SYSTEM))
    assert trained(tok, res.input_ids, res.labels) == ["Hello!<｜end▁of▁sentence｜>", "It is 4.<｜end▁of▁sentence｜>"]


def test_a_reply_rendered_differently_as_history_is_refused_naming_why(tiny_model_dir):
    tok = _tok(tiny_model_dir, template=_trl("qwen3"))
    with pytest.raises(TemplateError) as err:
        ChatRenderer(tok)(to_conversation(MULTI_TURN), where="chat.jsonl:7")
    msg = str(err.value)
    assert msg.startswith("chat.jsonl:7: assistant turn 2: the chat template renders this reply differently inside "
                          "the conversation than as the last message")
    assert "'<think>\\n\\n</think>\\n\\nHello!<|im_end|>'" in msg and "data.mask_history" in msg
    # only the last reply trained: nothing earlier needs locating
    res = ChatRenderer(tok, mask_history=True)(to_conversation(MULTI_TURN))
    assert trained(tok, res.input_ids, res.labels) == ["<think>\n\n</think>\n\nIt is 4.<|im_end|>"]
    # every token trained: no span needed either
    assert ChatRenderer(tok, train_on_prompt=True)(to_conversation(MULTI_TURN)) is not None


# 3. named templates -------------------------------------------------------------------------------
def test_named_templates_dict(tiny_model_dir):
    tool_template = CHATML_TEMPLATE.replace("<|im_start|>system\n", "<|im_start|>system\nTOOLS\n")
    tok = _tok(tiny_model_dir)
    tok.chat_template = {"default": CHATML_TEMPLATE, "tool_use": tool_template}
    renderer = ChatRenderer(tok)
    assert renderer.template == CHATML_TEMPLATE
    res = renderer(to_conversation(MULTI_TURN))
    assert trained(tok, res.input_ids, res.labels) == ["Hello!<|im_end|>", "It is 4.<|im_end|>"]
    # one template for every conversation of a run, as training installs it (not tool_use when tools are passed)
    with_tools = renderer(to_conversation({**MULTI_TURN, "tools": TOOLS}))
    assert "TOOLS" not in tok.decode(with_tools.input_ids)
    named = ChatRenderer(tok, chat_template="tool_use")  # a name picks that entry
    assert named.template == tool_template and named.options.chat_template.user_set
    assert "TOOLS" in tok.decode(named(to_conversation({**MULTI_TURN, "tools": TOOLS})).input_ids)
    assert ChatRenderer(tok, chat_template="tool_use").template == resolve_chat_template("tool_use", tok).text
    tok.chat_template = {"a": CHATML_TEMPLATE, "b": tool_template}
    with pytest.raises(ConfigError, match=r"several chat templates \(a, b\) and none is called 'default'"):
        ChatRenderer(tok)
    tok.chat_template = {"only": tool_template}
    assert ChatRenderer(tok).template == tool_template
    with pytest.raises(ConfigError, match="chat_template: x: no such file; .* the tokenizer's named templates: only"):
        ChatRenderer(tok, chat_template="x")


# 4. on_error when the template refuses one record ------------------------------------------------------
def test_template_refusing_one_record_names_it_and_skip_skips_only_it(tiny_model_dir):
    tok = _tok(tiny_model_dir, ["<start_of_turn>", "<end_of_turn>"], template=_trl("gemma"))
    records = [NO_SYSTEM, MULTI_TURN, NO_SYSTEM]
    with pytest.raises(TemplateError, match=r"^record 1: the chat template refuses this conversation: "
                                            r"System role not supported$"):
        tokenize_records(records, tok, on_error="raise")
    columns, stats = tokenize_records(records, tok, on_error="skip")
    assert stats.skipped_invalid == 1 and stats.examples == 2 and len(columns["input_ids"]) == 2
    assert "System role not supported" in stats.errors[0]


def test_template_syntax_error_is_not_a_record_error(tiny_model_dir):
    tok = _tok(tiny_model_dir, template="{% for m in messages %}{{ m['content'] }")
    with pytest.raises(ConfigError, match=r"^the tokenizer's chat template \(set data.chat_template to override it\): "
                                          r"line 1 of the template: Jinja syntax error"):
        tokenize_records([NO_SYSTEM], tok, on_error="skip")


# 5. mask_history when the last reply renders empty -------------------------------------------------------
def test_a_last_reply_the_template_renders_empty_is_refused_not_dropped(tiny_model_dir):
    """Before (issue 31): with mask_history the sample was dropped and only counted, so an agent
    dataset on such a template lost every tool call; now the record is refused by name."""
    tok = _tok(tiny_model_dir, template=(ASSETS / "qwen1.5_chat.jinja").read_text(encoding="utf-8"))
    record = {"messages": NO_SYSTEM["messages"][:2] + [
        {"role": "user", "content": "Add 2 and 2"}, {"role": "assistant", "content": "", "tool_calls": [CALL]}]}
    # the template ignores tool calls: the last reply renders as nothing
    with pytest.raises(TemplateError, match=r"^record: assistant turn 3: the chat template does not render its tool "
                                            r"call 'calculator'"):
        ChatRenderer(tok, mask_history=True)(to_conversation(record))
    columns, stats = tokenize_records([record], tok, mask_history=True, on_error="skip")
    assert stats.skipped_invalid == 1 and stats.dropped_no_trained_tokens == 0 and not columns["input_ids"]


# 6. the fallback template needs an eos token -----------------------------------------------------------
def test_fallback_without_eos_is_a_clear_error(tiny_model_dir):
    tok = _tok(tiny_model_dir, template=None)
    tok.chat_template = None
    tok.eos_token = None
    with pytest.raises(TemplateError, match="no chat template and no eos token.*Set data.chat_template"):
        ChatRenderer(tok)
    assert ChatRenderer(tok, chat_template=CHATML_TEMPLATE).template == CHATML_TEMPLATE
    assert FALLBACK_CHAT_TEMPLATE.count("eos_token") == 1


# 7. reasoning_content ---------------------------------------------------------------------------------
REASONING = {"messages": [{"role": "user", "content": "What is 2+2?"},
                          {"role": "assistant", "content": "It is 4.", "reasoning_content": "Two plus two is four."}]}


def test_reasoning_train_mask_drop(tiny_model_dir):
    tok = _tok(tiny_model_dir, template=_trl("qwen3"))
    res = ChatRenderer(tok)(to_conversation(REASONING))
    assert trained(tok, res.input_ids, res.labels) == ["<think>\nTwo plus two is four.\n</think>\n\nIt is 4.<|im_end|>"]
    res = ChatRenderer(tok, reasoning="mask")(to_conversation(REASONING))
    assert "Two plus two is four." in tok.decode(res.input_ids)
    assert trained(tok, res.input_ids, res.labels) == ["<think>\n", "\n</think>\n\nIt is 4.<|im_end|>"]
    res = ChatRenderer(tok, reasoning="drop")(to_conversation(REASONING))
    assert "Two plus" not in tok.decode(res.input_ids)
    assert trained(tok, res.input_ids, res.labels) == ["<think>\n\n</think>\n\nIt is 4.<|im_end|>"]
    # "reasoning" and "thinking" are read as reasoning_content too
    alias = {"messages": [REASONING["messages"][0], {"role": "assistant", "content": "It is 4.", "thinking": "2+2=4"}]}
    assert to_conversation(alias).messages[1].reasoning_content == "2+2=4"


def test_reasoning_a_template_ignores_is_an_error_not_a_silent_loss(tiny_model_dir):
    tok = _tok(tiny_model_dir)  # ChatML without reasoning support
    with pytest.raises(TemplateError, match=r"message 1 \(assistant\) has reasoning_content, but the chat template "
                                            r"does not render it.*data.reasoning: drop"):
        ChatRenderer(tok)(to_conversation(REASONING), where="r.jsonl:1")
    res = ChatRenderer(tok, reasoning="drop")(to_conversation(REASONING))
    assert trained(tok, res.input_ids, res.labels) == ["It is 4.<|im_end|>"]


# 8. control-token text inside messages -------------------------------------------------------------------
LITERAL = {"messages": [{"role": "user", "content": "How does a turn end?"},
                        {"role": "assistant", "content": "With <|im_end|> as the very last token."}]}


def test_control_token_text_in_a_reply(tiny_model_dir, tmp_path, capsys):
    tok = _tok(tiny_model_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    res = ChatRenderer(tok)(to_conversation(LITERAL))  # default: text
    assert res.input_ids.count(im_end) == 2  # the user's and the reply's own end of turn, not the literal
    assert tok.decode(res.input_ids).count("<|im_end|>") == 3
    assert trained(tok, res.input_ids, res.labels) == ["With <|im_end|> as the very last token.<|im_end|>"]
    kept = ChatRenderer(tok, control_tokens_in_content="control")(to_conversation(LITERAL))
    assert kept.input_ids.count(im_end) == 3
    with pytest.raises(DataFormatError, match=r"message 1 \(assistant\) contains the text of the control token "
                                              r"'<\|im_end\|>'; refused"):
        ChatRenderer(tok, control_tokens_in_content="refuse")(to_conversation(LITERAL))
    # the batched pipeline agrees, counts the record and names it
    columns, stats = tokenize_records([MULTI_TURN, LITERAL], tok)
    assert columns["input_ids"][1] == res.input_ids and columns["labels"][1] == res.labels
    assert stats.control_token_text == 1 and any("record 1: message 1 (assistant)" in e for e in stats.errors)
    _, stats = tokenize_records([LITERAL], tok, control_tokens_in_content="refuse", on_error="skip")
    assert stats.skipped_invalid == 1
    # data inspect reports them
    from sage_libs.sage_finetune.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in (MULTI_TURN, LITERAL)) + "\n", encoding="utf-8")
    assert main(["data", "inspect", str(data), "--tokenizer", str(tiny_model_dir), "--no-color", "--png", ""]) == 0
    out = capsys.readouterr().out
    assert "control-token text inside messages: 1 records (data.control_tokens_in_content)" in out
    assert f"{data}:2: message 1 (assistant) contains the text of the control token '<|im_end|>'" in out
