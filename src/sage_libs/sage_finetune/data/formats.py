"""Record formats -> :class:`Conversation`.

Supported formats (``DataConfig.format``), detected per record when ``auto``:

- ``alpaca``: ``{"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}``
- ``messages`` (OpenAI): ``{"messages": [{"role", "content", "tool_calls"?, "reasoning_content"?}, ...],
  "tools"?}`` (``reasoning``/``thinking`` are read as ``reasoning_content``)
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value"} or {"role", "content"}]}``
- ``prompt_completion``: ``{"prompt": str, "completion": str}``
- ``text``: ``{"text": str}`` (no roles: every token is trained, like pre-training)
- ``trajectory``: ``{"task", "trajectory": [{"thought", "action", "input"}, {"observation"}, ...],
  "tools"?}`` (agent runs; see :mod:`.trajectory`)

Pure functions, standard library only.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataFormatError
from .conversation import Conversation, Message

__all__ = ["detect_format", "to_conversation", "FORMAT_FIELDS"]

# The fields that identify each format (used for detection and in error messages).
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "trajectory": ("task", "trajectory"),
    "text": ("text",),
}

_REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")

_SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "system": "system", "observation": "tool", "tool": "tool", "function": "tool",
}


def _expected() -> str:
    return "; ".join(f"{fmt}: {', '.join(fields)}" for fmt, fields in FORMAT_FIELDS.items())


def detect_format(record: Any, where: str = "record") -> str:
    """Name the format of one record from its fields."""
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for fmt, fields in FORMAT_FIELDS.items():
        if all(f in record for f in fields):
            return fmt
    keys = ", ".join(sorted(map(str, record))) or "(none)"
    hint = ""
    if "instruction" in record and "output" not in record:
        hint = " (an Alpaca record needs 'output')"
    elif "prompt" in record and "completion" not in record:
        hint = " (a prompt/completion record needs 'completion')"
    raise DataFormatError(f"{where}: cannot tell the format from the fields ({keys}){hint}. "
                          f"Expected one of - {_expected()}")


def _text(value: Any, where: str, name: str, *, allow_empty: bool = True) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataFormatError(f"{where}: field {name!r} is empty")
    return value


def _from_alpaca(rec: dict, where: str) -> Conversation:
    instruction = _text(rec.get("instruction"), where, "instruction", allow_empty=False)
    extra = _text(rec.get("input"), where, "input")
    output = _text(rec.get("output"), where, "output", allow_empty=False)
    messages: list[Message] = []
    if rec.get("system"):
        messages.append(Message("system", _text(rec["system"], where, "system")))
    for j, turn in enumerate(rec.get("history") or []):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise DataFormatError(f"{where}: history[{j}] must be a [user, assistant] pair")
        messages.append(Message("user", _text(turn[0], where, f"history[{j}][0]", allow_empty=False)))
        messages.append(Message("assistant", _text(turn[1], where, f"history[{j}][1]", allow_empty=False)))
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages.append(Message("user", prompt))
    messages.append(Message("assistant", output))
    return Conversation(messages)


def _message(raw: Any, where: str, i: int, role_key: str, content_key: str, role_map: dict | None) -> Message:
    if not isinstance(raw, dict):
        raise DataFormatError(f"{where}: message {i} must be an object with {role_key!r} and {content_key!r}")
    if role_key not in raw:
        raise DataFormatError(f"{where}: message {i} has no {role_key!r} field (fields: {', '.join(map(str, raw))})")
    role = raw[role_key]
    if not isinstance(role, str):  # an object or a list as a role: not a role name (nor hashable)
        raise DataFormatError(f"{where}: message {i} has {role_key}={role!r} ({type(role).__name__}); expected a role "
                              f"name such as {', '.join(role_map or ('system', 'user', 'assistant', 'tool'))}")
    if role_map is not None:
        if role not in role_map:
            raise DataFormatError(f"{where}: message {i} has {role_key}={role!r}; expected one of "
                                  f"{', '.join(role_map)}")
        role = role_map[role]
    content = raw.get(content_key)
    if content is None:
        content = ""
    tool_calls = raw.get("tool_calls")
    if tool_calls is not None and not isinstance(tool_calls, list):
        raise DataFormatError(f"{where}: message {i} tool_calls must be a list")
    # an assistant's thinking, under the names transformers' chat templates accept for it
    reasoning = next((raw[k] for k in _REASONING_FIELDS if raw.get(k) is not None), None)
    if reasoning is not None and not isinstance(reasoning, str):
        raise DataFormatError(f"{where}: message {i} reasoning_content must be a string, got {type(reasoning).__name__}")
    return Message(role=role, content=content, tool_calls=tool_calls or None,
                   name=raw.get("name"), tool_call_id=raw.get("tool_call_id"), reasoning_content=reasoning)


def _from_messages(rec: dict, where: str, key: str = "messages") -> Conversation:
    raw = rec.get(key)
    if not isinstance(raw, list):
        raise DataFormatError(f"{where}: field {key!r} must be a list of messages")
    messages = [_message(m, where, i, "role", "content", None) for i, m in enumerate(raw)]
    tools = rec.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise DataFormatError(f"{where}: field 'tools' must be a list of tool schemas")
    return Conversation(messages, tools=tools or None)


def _from_sharegpt(rec: dict, where: str) -> Conversation:
    raw = rec.get("conversations")
    if not isinstance(raw, list):
        raise DataFormatError(f"{where}: field 'conversations' must be a list of messages")
    messages = []
    for i, m in enumerate(raw):
        if isinstance(m, dict) and "from" in m:
            messages.append(_message(m, where, i, "from", "value", _SHAREGPT_ROLES))
        else:
            messages.append(_message(m, where, i, "role", "content", _SHAREGPT_ROLES))
    if rec.get("system") and (not messages or messages[0].role != "system"):
        messages.insert(0, Message("system", _text(rec["system"], where, "system")))
    tools = rec.get("tools")
    return Conversation(messages, tools=tools if isinstance(tools, list) else None)


def _from_prompt_completion(rec: dict, where: str) -> Conversation:
    prompt, completion = rec.get("prompt"), rec.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt/completion
        msgs = [_message(m, where, i, "role", "content", None) for i, m in enumerate(prompt + completion)]
        return Conversation(msgs)
    return Conversation([Message("user", _text(prompt, where, "prompt", allow_empty=False)),
                         Message("assistant", _text(completion, where, "completion", allow_empty=False))])


_CONVERTERS = {
    "alpaca": _from_alpaca,
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "prompt_completion": _from_prompt_completion,
}


def to_conversation(record: Any, fmt: str = "auto", *, where: str = "record",
                    system_prompt: str | None = None, agent_format: str = "react",
                    tools: list[dict[str, Any]] | None = None) -> Conversation:
    """Map one record to a validated :class:`Conversation`.

    ``fmt='text'`` records have no conversation; use :func:`record_text` for them.
    ``agent_format`` (react or tool_calls) applies to trajectory records; ``tools`` (the dataset-wide
    schemas of ``data.tools_file``) to every record that has none of its own.
    """
    if fmt == "auto":
        fmt = detect_format(record, where)
    elif not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if fmt == "text":
        raise DataFormatError(f"{where}: a plain-text record has no conversation")
    if fmt not in FORMAT_FIELDS:
        raise DataFormatError(f"{where}: unknown format {fmt!r}; expected one of {', '.join(FORMAT_FIELDS)}")
    missing = [f for f in FORMAT_FIELDS[fmt] if f not in record]
    if missing:
        raise DataFormatError(f"{where}: missing field {missing[0]!r} for the {fmt} format "
                              f"(record fields: {', '.join(map(str, record)) or 'none'}; "
                              f"expected: {', '.join(FORMAT_FIELDS[fmt])})")
    if fmt == "trajectory":
        from .trajectory import trajectory_to_conversation

        return trajectory_to_conversation(record, where=where, style=agent_format, tools=tools,
                                          system_prompt=system_prompt)
    conv = _CONVERTERS[fmt](record, where)
    if tools and conv.tools is None:
        conv.tools = tools
    if system_prompt and conv.messages and conv.messages[0].role != "system":
        conv.messages.insert(0, Message("system", system_prompt))
    return conv.validate(where)


def record_text(record: Any, where: str = "record") -> str:
    """The text of a ``text`` record."""
    if not isinstance(record, dict) or "text" not in record:
        raise DataFormatError(f"{where}: a text record needs a 'text' field")
    return _text(record["text"], where, "text", allow_empty=False)
