"""The canonical conversation every record format is mapped to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DataFormatError  # noqa: F401 (re-exported)

__all__ = ["Message", "Conversation", "DataFormatError", "ROLES", "IGNORE_INDEX"]

ROLES = ("system", "user", "assistant", "tool")
IGNORE_INDEX = -100  # the label of a token that is not trained (what torch's cross-entropy skips)


@dataclass
class Message:
    """One chat message. ``tool_calls`` follows the OpenAI shape:
    ``[{"type": "function", "function": {"name": ..., "arguments": {...}}}]``. ``reasoning_content``
    is an assistant's thinking, rendered by templates that support it (see ``DataConfig.reasoning``)."""

    role: str
    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning_content is not None:
            out["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass
class Conversation:
    """An ordered list of messages, plus the tool schemas the assistant may call."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_chat(self) -> list[dict[str, Any]]:
        """The messages as the dicts ``tokenizer.apply_chat_template`` expects."""
        return [m.to_dict() for m in self.messages]

    def validate(self, where: str = "record") -> "Conversation":
        """Check the role order: [system] then user/assistant turns (tool results after an
        assistant tool call), at least one assistant reply, no empty assistant reply."""
        if not self.messages:
            raise DataFormatError(f"{where}: the conversation has no messages")
        prev = None
        seen_assistant = False
        for i, m in enumerate(self.messages):
            if m.role not in ROLES:
                raise DataFormatError(f"{where}: message {i} has role {m.role!r}; expected one of {', '.join(ROLES)}")
            if not isinstance(m.content, str):
                raise DataFormatError(f"{where}: message {i} ({m.role}) content must be a string, "
                                      f"got {type(m.content).__name__}")
            if m.role == "system" and i != 0:
                raise DataFormatError(f"{where}: message {i} is a system message; only the first message may be one")
            if m.reasoning_content is not None and not isinstance(m.reasoning_content, str):
                raise DataFormatError(f"{where}: message {i} ({m.role}) reasoning_content must be a string, "
                                      f"got {type(m.reasoning_content).__name__}")
            if m.role == "assistant":
                if prev not in ("user", "tool"):
                    raise DataFormatError(f"{where}: message {i} (assistant) must follow a user or tool message, "
                                          f"not {prev or 'the start'}")
                if not m.content.strip() and not m.tool_calls:
                    raise DataFormatError(f"{where}: message {i} (assistant) is empty; an assistant reply needs text "
                                          "or tool_calls")
                seen_assistant = True
            if m.role == "user" and prev == "user":
                raise DataFormatError(f"{where}: messages {i - 1} and {i} are both user messages; "
                                      "expected user and assistant to alternate")
            if m.role == "tool" and prev not in ("assistant", "tool"):
                raise DataFormatError(f"{where}: message {i} (tool) must follow an assistant message with tool_calls")
            prev = m.role
        if not seen_assistant:
            raise DataFormatError(f"{where}: no assistant message; there is nothing to train on")
        return self
