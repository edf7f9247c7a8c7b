import pytest

from sage_libs.sage_finetune.data.conversation import DataFormatError
from sage_libs.sage_finetune.data.formats import detect_format, to_conversation


def chat(conv):
    return [(m.role, m.content) for m in conv.messages]


def test_alpaca_with_input_system_and_history():
    rec = {"instruction": "Translate", "input": "hola", "output": "hello", "system": "Be brief.",
           "history": [["Hi", "Hello!"]]}
    assert detect_format(rec) == "alpaca"
    assert chat(to_conversation(rec)) == [
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"),
        ("user", "Translate\n\nhola"), ("assistant", "hello")]


def test_alpaca_empty_input():
    assert chat(to_conversation({"instruction": "Say hi", "input": "", "output": "hi"})) == [
        ("user", "Say hi"), ("assistant", "hi")]


def test_messages_keep_tools_and_tool_calls():
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    rec = {"messages": [{"role": "user", "content": "1+2?"},
                        {"role": "assistant", "content": "", "tool_calls": [call]},
                        {"role": "tool", "content": "3"},
                        {"role": "assistant", "content": "3"}],
           "tools": [{"type": "function", "function": {"name": "add"}}]}
    conv = to_conversation(rec)
    assert conv.tools == rec["tools"]
    assert conv.to_chat()[1] == {"role": "assistant", "content": "", "tool_calls": [call]}


def test_sharegpt_from_value():
    rec = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                             {"from": "gpt", "value": "A"}]}
    assert detect_format(rec) == "sharegpt"
    assert chat(to_conversation(rec)) == [("system", "S"), ("user", "Q"), ("assistant", "A")]


def test_prompt_completion():
    assert chat(to_conversation({"prompt": "Q", "completion": "A"})) == [("user", "Q"), ("assistant", "A")]


def test_system_prompt_added_only_when_missing():
    conv = to_conversation({"prompt": "Q", "completion": "A"}, system_prompt="Sys")
    assert chat(conv)[0] == ("system", "Sys")
    conv = to_conversation({"messages": [{"role": "system", "content": "Own"}, {"role": "user", "content": "Q"},
                                         {"role": "assistant", "content": "A"}]}, system_prompt="Sys")
    assert chat(conv)[0] == ("system", "Own")


@pytest.mark.parametrize("record, message", [
    ({"instruction": "x", "outptu": "y"},
     "data.jsonl:7: cannot tell the format from the fields (instruction, outptu) (an Alpaca record needs 'output')"),
    ({"instruction": "x", "output": ""}, "data.jsonl:7: field 'output' is empty"),
    ({"messages": [{"role": "assistant", "content": "A"}]},
     "data.jsonl:7: message 0 (assistant) must follow a user or tool message, not the start"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q2"},
                   {"role": "assistant", "content": "A"}]},
     "data.jsonl:7: messages 0 and 1 are both user messages"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]},
     "data.jsonl:7: message 1 (assistant) is empty"),
    ({"messages": [{"role": "user", "content": "Q"}]}, "data.jsonl:7: no assistant message"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"}]},
     "data.jsonl:7: message 1 has role 'bot'; expected one of system, user, assistant, tool"),
    ({"messages": [{"content": "Q"}]}, "data.jsonl:7: message 0 has no 'role' field"),
    ({"conversations": [{"from": "robot", "value": "A"}]}, "data.jsonl:7: message 0 has from='robot'"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                   {"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                   {"role": "assistant", "content": "A"}]},
     "data.jsonl:7: message 2 is a system message; only the first message may be one"),
])
def test_bad_records_name_the_place_and_problem(record, message):
    with pytest.raises(DataFormatError) as err:
        to_conversation(record, where="data.jsonl:7")
    assert message in str(err.value)


def test_explicit_format_missing_field():
    with pytest.raises(DataFormatError, match=r"missing field 'messages' for the messages format"):
        to_conversation({"conversations": []}, "messages", where="r")
