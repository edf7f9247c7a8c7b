"""Agent trajectories: rendering, exact masks, validation, action parsing."""

import json

import pytest

from sage_libs.sage_finetune.data.conversation import DataFormatError
from sage_libs.sage_finetune.data.formats import to_conversation
from sage_libs.sage_finetune.data.render import ChatRenderer
from sage_libs.sage_finetune.data.trajectory import check_tool_call, parse_action

from .test_render import trained_segments

TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}]

RECORD = {"task": "What is 17 * 6?", "tools": TOOLS, "trajectory": [
    {"thought": "I need to compute 17 * 6.", "action": "calculator", "input": {"expression": "17 * 6"}},
    {"observation": "102"},
    {"thought": "I have the result.", "action": "finish", "input": {"answer": "102"}}]}


def test_react_rendering_and_exact_mask(tiny_tokenizer):
    conv = to_conversation(RECORD, agent_format="react")
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert "- calculator(expression): Evaluate arithmetic." in conv.messages[0].content
    res = ChatRenderer(tiny_tokenizer)(conv)
    # thoughts and actions trained, each with its end-of-turn token; the observation "102" is not
    assert trained_segments(tiny_tokenizer, res.input_ids, res.labels) == [
        'Thought: I need to compute 17 * 6.\nAction: calculator\nAction Input: {"expression": "17 * 6"}<|im_end|>',
        'Thought: I have the result.\nAction: finish\nAction Input: {"answer": "102"}<|im_end|>']
    assert "<|im_start|>tool\n102<|im_end|>" in tiny_tokenizer.decode(res.input_ids)


def test_tool_calls_rendering_and_exact_mask(tiny_tokenizer):
    conv = to_conversation(RECORD, agent_format="tool_calls")
    assert [t["function"]["name"] for t in conv.tools] == ["calculator", "finish"]
    res = ChatRenderer(tiny_tokenizer)(conv)
    assert trained_segments(tiny_tokenizer, res.input_ids, res.labels) == [
        'I need to compute 17 * 6.<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 6"}}'
        '\n</tool_call><|im_end|>',
        'I have the result.<tool_call>\n{"name": "finish", "arguments": {"answer": "102"}}\n</tool_call><|im_end|>']
    text = tiny_tokenizer.decode(res.input_ids)
    assert "<|im_start|>tool\n102<|im_end|>" in text and "# Tools" in text


def steps(*items):
    return {"task": "t", "tools": TOOLS, "trajectory": list(items)}


CALC = {"thought": "compute", "action": "calculator", "input": {"expression": "1 + 1"}}
FIN = {"thought": "done", "action": "finish", "input": {"answer": "2"}}


@pytest.mark.parametrize("record, message", [
    (steps({"thought": "x", "action": "search", "input": {"query": "q"}}, {"observation": "o"}, FIN),
     "r:1: step 0: unknown tool 'search' (tools: calculator, finish)"),
    (steps(CALC, {"observation": "2"}), "r:1: the trajectory has no final answer"),
    (steps({"observation": "2"}, FIN), "r:1: step 0 is an observation with no action before it"),
    (steps(CALC, {"observation": "2"}, {"observation": "3"}, FIN),
     "r:1: step 2 is an observation with no action before it"),
    (steps({"thought": "x", "action": "calculator"}, FIN), "r:1: step 0 (action 'calculator') has no 'input'"),
    (steps({"thought": "x", "action": "calculator", "input": {"expr": "1"}}, {"observation": "1"}, FIN),
     "r:1: step 0: 'calculator' is missing required argument 'expression'"),
    (steps(FIN, CALC), "r:1: step 1 comes after the finish action"),
    ({"task": "", "trajectory": [FIN]}, "r:1: field 'task' must be a non-empty string"),
])
def test_malformed_trajectories(record, message):
    with pytest.raises(DataFormatError) as err:
        to_conversation(record, where="r:1")
    assert message in str(err.value)


def test_empty_thought_is_a_counted_warning(tiny_tokenizer):
    from sage_libs.sage_finetune.data.pipeline import tokenize_records

    rec = steps({"thought": "", "action": "calculator", "input": {"expression": "1 + 1"}}, {"observation": "2"}, FIN)
    columns, stats = tokenize_records([rec], tiny_tokenizer, agent_format="react")
    assert stats.examples == 1 and stats.warnings == 1
    assert stats.errors == ["warning: record 0: step 0: empty thought"]


def test_trajectory_loader_dataset_tools_and_validation(tmp_path, tiny_tokenizer):
    from sage_libs.sage_finetune import create_loader

    (tmp_path / "tools.json").write_text(json.dumps(TOOLS))
    f = tmp_path / "t.jsonl"
    rec = {k: v for k, v in RECORD.items() if k != "tools"}
    f.write_text(json.dumps(rec) + "\n" + json.dumps({"instruction": "x", "output": "y"}) + "\n")
    loader = create_loader("trajectory", tools_file=str(tmp_path / "tools.json"))
    with pytest.raises(DataFormatError, match=r"t.jsonl:2: a alpaca record; the trajectory loader reads"):
        loader.load(f)
    f.write_text(json.dumps(rec) + "\n")
    ds = loader.preprocess(loader.load(f), tiny_tokenizer, agent_format="react")
    assert len(ds) == 1 and loader.last_stats.formats == {"trajectory": 1}


@pytest.mark.parametrize("text, expected", [
    ('Thought: go\nAction: calculator\nAction Input: {"expression": "2 * 3"}', ("calculator", {"expression": "2 * 3"}, None)),
    ('ok<tool_call>\n{"name": "finish", "arguments": {"answer": "6"}}\n</tool_call>', ("finish", {"answer": "6"}, None)),
    ('{"name": "lookup", "arguments": "{\\"entity\\": \\"Japan\\"}"}', ("lookup", {"entity": "Japan"}, None)),
    ("I do not know", (None, None, "no action found")),
])
def test_parse_action(text, expected):
    assert parse_action(text) == expected


def test_check_tool_call():
    assert check_tool_call(TOOLS, "calculator", {"expression": "1"}) is None
    assert check_tool_call(TOOLS, "finish", {}) == "'finish' is missing required argument 'answer'"
    assert "unknown tool 'search'" in check_tool_call(TOOLS, "search", {})
    assert "must be a JSON object" in check_tool_call(TOOLS, "calculator", "1 + 1")
