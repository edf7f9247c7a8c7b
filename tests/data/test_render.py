"""Exact label masks: which tokens are trained, spelled out as text."""

import pytest

from sage_libs.sage_finetune.data.formats import to_conversation
from sage_libs.sage_finetune.data.render import IGNORE_INDEX, ChatRenderer, TemplateError

MULTI_TURN = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
]}

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def trained_segments(tok, ids, labels):
    """The decoded runs of consecutive trained tokens."""
    segments, run = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i, "a trained label must equal its input id (the model shifts internally)"
            run.append(i)
        elif run:
            segments.append(tok.decode(run)), run.clear()
    if run:
        segments.append(tok.decode(run))
    return segments


def test_exact_mask_chatml_generation_template(tiny_tokenizer):
    tok = tiny_tokenizer
    res = ChatRenderer(tok)(to_conversation(MULTI_TURN))
    assert tok.decode(res.input_ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\nIt is 4.<|im_end|>\n")
    # Both replies, each with its end-of-turn token; the newline after <|im_end|> is layout.
    assert trained_segments(tok, res.input_ids, res.labels) == ["Hello!<|im_end|>", "It is 4.<|im_end|>"]
    # The last token (the newline) and the first 20 prompt tokens are masked.
    assert res.labels[-1] == IGNORE_INDEX and res.labels[-2] == tok.convert_tokens_to_ids("<|im_end|>")
    assert not res.truncated


def test_mask_agrees_with_generation_tags(tiny_tokenizer):
    tok = tiny_tokenizer
    hf = tok.apply_chat_template(MULTI_TURN["messages"], tokenize=True, return_dict=True,
                                 return_assistant_tokens_mask=True)
    res = ChatRenderer(tok)(to_conversation(MULTI_TURN))
    assert res.input_ids == list(hf["input_ids"])
    assert [lab != IGNORE_INDEX for lab in res.labels] == [bool(m) for m in hf["assistant_masks"]]


def test_mask_history_trains_last_reply_only(tiny_tokenizer):
    res = ChatRenderer(tiny_tokenizer, mask_history=True)(to_conversation(MULTI_TURN))
    assert trained_segments(tiny_tokenizer, res.input_ids, res.labels) == ["It is 4.<|im_end|>"]


def test_train_on_prompt_trains_everything(tiny_tokenizer):
    res = ChatRenderer(tiny_tokenizer, train_on_prompt=True)(to_conversation(MULTI_TURN))
    assert res.labels[0] == IGNORE_INDEX and res.labels[1:] == res.input_ids[1:]


def test_llama3_style_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    res = ChatRenderer(tok, chat_template=LLAMA3_TEMPLATE)(to_conversation(MULTI_TURN))
    assert trained_segments(tok, res.input_ids, res.labels) == ["Hello!<|eot_id|>", "It is 4.<|eot_id|>"]
    assert tok.decode(res.input_ids).startswith("<|endoftext|><|start_header_id|>system<|end_header_id|>\n\nBe brief.")


def test_fallback_template_when_tokenizer_has_none(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    res = ChatRenderer(tok)(to_conversation(MULTI_TURN))
    assert tok.decode(res.input_ids).startswith(
        "System:\nBe brief.\n\nUser:\nHi there\n\nAssistant:\nHello!<|im_end|>\n\nUser:\n")
    assert trained_segments(tok, res.input_ids, res.labels) == ["Hello!<|im_end|>", "It is 4.<|im_end|>"]


def test_truncation_keeps_prefix_and_drops_fully_masked(tiny_tokenizer):
    conv = to_conversation(MULTI_TURN)
    full = ChatRenderer(tiny_tokenizer)(conv)
    cut = ChatRenderer(tiny_tokenizer, max_seq_length=len(full.input_ids) - 3)(conv)
    assert cut.truncated and cut.input_ids == full.input_ids[:-3] and cut.labels == full.labels[:-3]
    # cutting before the first reply leaves nothing to train: the sample is dropped
    assert ChatRenderer(tiny_tokenizer, max_seq_length=12)(conv) is None


def test_inconsistent_template_is_refused(tiny_tokenizer):
    # renders history and the final turn differently (like templates that strip reasoning)
    template = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}[old]"
                "{% else %}{{ m['content'] }}{% endif %}<|im_end|>{% endfor %}")
    with pytest.raises(TemplateError, match="assistant turn 2: the chat template renders this reply differently inside the conversation"):
        ChatRenderer(tiny_tokenizer, chat_template=template)(to_conversation(MULTI_TURN), where="f.jsonl:3")


def test_plain_text_trains_all_and_appends_eos(tiny_tokenizer):
    res = ChatRenderer(tiny_tokenizer).render_plain("hello world")
    assert res.labels == [IGNORE_INDEX] + res.input_ids[1:] and res.input_ids[-1] == tiny_tokenizer.eos_token_id


TOOL_CONVERSATION = {
    "tools": [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}],
    "messages": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "What is 12*7?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "calculator", "arguments": {"expression": "12*7"}}}]},
        {"role": "tool", "content": "84"},
        {"role": "assistant", "content": "12*7 = 84."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You are welcome."},
    ],
}

LLAMA3_TOOL_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|start_header_id|>system<|end_header_id|>\n\nTools: {{ tools | tojson }}"
    "{% if messages[0]['role'] == 'system' %}\n{{ messages[0]['content'] }}{% endif %}<|eot_id|>{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'system' and tools %}"
    "{% elif m['role'] == 'tool' %}<|start_header_id|>ipython<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% else %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
    "{% for c in m.get('tool_calls') or [] %}{{ c['function'] | tojson }}{% endfor %}<|eot_id|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

CALL_JSON = '{"name": "calculator", "arguments": {"expression": "12*7"}}'


def _chatml_without_generation_tags():
    from sage_libs.sage_finetune.utils.tiny import CHATML_TEMPLATE

    template = CHATML_TEMPLATE.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    assert "{%- generation" not in template and "endgeneration" not in template
    return template


@pytest.mark.parametrize("template_name, end", [("chatml-generation", "<|im_end|>"),
                                                ("chatml-plain", "<|im_end|>"),
                                                ("llama3", "<|eot_id|>")])
def test_exact_mask_with_tool_turns(tiny_model_dir, template_name, end):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    template = {"chatml-generation": None, "chatml-plain": _chatml_without_generation_tags(),
                "llama3": LLAMA3_TOOL_TEMPLATE}[template_name]
    conv = to_conversation(TOOL_CONVERSATION)
    res = ChatRenderer(tok, chat_template=template)(conv)
    call = f"<tool_call>\n{CALL_JSON}\n</tool_call>" if end == "<|im_end|>" else CALL_JSON
    # the tool call and both answers are trained with their end-of-turn token; the tool result
    # ("84"), the tool schema, system and user turns are not
    assert trained_segments(tok, res.input_ids, res.labels) == [
        call + end, "12*7 = 84." + end, "You are welcome." + end]
    text = tok.decode(res.input_ids)
    assert "84" + end in text and '"calculator"' in text.split(end)[0]  # schema rendered, untrained
