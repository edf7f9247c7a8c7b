"""Agent trajectories -> :class:`Conversation`, and assistant turns -> actions (for evaluation).

A trajectory record::

    {"task": "What is 17 * 6?",
     "tools": [{"type": "function", "function": {"name": "calculator", "parameters": {...}}}],
     "trajectory": [
        {"thought": "I need to compute 17 * 6.", "action": "calculator", "input": {"expression": "17 * 6"}},
        {"observation": "102"},
        {"thought": "I have the result.", "action": "finish", "input": {"answer": "102"}}]}

becomes ``user(task)``, then per step an **assistant** turn (thought + action: trained) and a
**tool** turn (observation: never trained). ``finish`` is a built-in action that ends the episode;
it is rendered like any other action so that every assistant turn has one shape.

Two renderings (``DataConfig.agent_format``):

- ``react``: assistant text ``Thought: ...\\nAction: NAME\\nAction Input: {JSON}``, with a system
  prompt that lists the tools. Works with any chat template.
- ``tool_calls``: the thought as content plus an OpenAI ``tool_calls`` entry; the tools go to the
  chat template (``tools=``), which renders them its own way. ``auto`` picks this when the
  template handles ``tool_calls``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from .conversation import Conversation, Message

__all__ = ["FINISH", "REACT_SYSTEM_PROMPT", "trajectory_to_conversation", "parse_action", "tool_names", "load_tools",
           "next_action_cases",
           "check_tool_call", "resolve_agent_format"]

FINISH = "finish"
FINISH_SCHEMA = {"type": "function", "function": {
    "name": FINISH, "description": "End the task with the final answer.",
    "parameters": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}}

REACT_SYSTEM_PROMPT = (
    "You solve tasks with tools. Answer in this form:\n"
    "Thought: your reasoning\nAction: a tool name\nAction Input: the arguments as JSON\n"
    "End with the action finish and the input {\"answer\": ...}.\nTools:\n{tools}"
)


def tool_names(tools: list[dict[str, Any]] | None) -> set[str]:
    """The callable names: the schema's tools plus the built-in ``finish``."""
    return {FINISH} | {_fn(t)["name"] for t in tools or [] if _fn(t).get("name")}


def _schema(tools: list[dict[str, Any]] | None, name: str) -> dict[str, Any] | None:
    return next((_fn(t) for t in [*(tools or []), FINISH_SCHEMA] if _fn(t).get("name") == name), None)


def check_tool_call(tools: list[dict[str, Any]] | None, name: str, arguments: Any) -> str | None:
    """Why a call is invalid (unknown tool, arguments not an object, missing required ones),
    or None when it is valid."""
    if tools is not None and name not in tool_names(tools):
        return f"unknown tool {name!r} (tools: {', '.join(sorted(tool_names(tools)))})"
    if not isinstance(arguments, dict):
        return f"arguments of {name!r} must be a JSON object, got {type(arguments).__name__}"
    schema = _schema(tools, name)
    required = ((schema or {}).get("parameters") or {}).get("required") or []
    missing = [r for r in required if r not in arguments]
    if missing:
        return f"{name!r} is missing required argument {missing[0]!r}"
    return None


def _fn(tool: Any) -> dict[str, Any]:
    fn = tool.get("function", tool) if isinstance(tool, dict) else None
    return fn if isinstance(fn, dict) else {}


def _tools_text(tools: list[dict[str, Any]] | None) -> str:
    """One line per tool for the ReAct system prompt: ``- name(arg, ...): description``."""
    listed = list(tools or [])
    if FINISH not in {_fn(t).get("name") for t in listed}:
        listed.append(FINISH_SCHEMA)
    lines = []
    for tool in listed:
        fn = _fn(tool)
        params = ", ".join((fn.get("parameters") or {}).get("properties") or {})
        description = fn.get("description")
        lines.append(f"- {fn.get('name')}({params})" + (f": {description}" if description else ""))
    return "\n".join(lines)


def resolve_agent_format(agent_format: str, chat_template: str | None) -> str:
    """``auto`` -> ``tool_calls`` when the chat template renders tool calls, else ``react``."""
    if agent_format != "auto":
        return agent_format
    return "tool_calls" if chat_template and "tool_calls" in chat_template else "react"


def react_text(thought: str, action: str, arguments: Any) -> str:
    head = f"Thought: {thought}\n" if thought else ""
    return f"{head}Action: {action}\nAction Input: {json.dumps(arguments, ensure_ascii=False)}"


def trajectory_to_conversation(record: dict[str, Any], *, where: str = "record", style: str = "react",
                               tools: list[dict[str, Any]] | None = None,
                               system_prompt: str | None = None) -> Conversation:
    """Validate a trajectory record and render it as a conversation.

    Errors (:class:`DataFormatError`): no task, an observation with no action before it, a step
    without ``action`` or ``input``, an action not in the tools schema, missing required
    arguments, a step after ``finish``, no final ``finish``. Counted warnings (in
    ``conversation.meta["warnings"]``): empty thoughts.
    """
    task = record.get("task")
    if not isinstance(task, str) or not task.strip():
        raise DataFormatError(f"{where}: field 'task' must be a non-empty string")
    steps = record.get("trajectory")
    if not isinstance(steps, list) or not steps:
        raise DataFormatError(f"{where}: field 'trajectory' must be a non-empty list of steps")
    tools = record.get("tools", tools)
    if tools is not None and not isinstance(tools, list):
        raise DataFormatError(f"{where}: field 'tools' must be a list of tool schemas")
    warnings: list[str] = []
    messages: list[Message] = []
    system = record.get("system") or system_prompt
    if style == "react":
        system = (system + "\n\n" if system else "") + REACT_SYSTEM_PROMPT.replace("{tools}", _tools_text(tools))
    if system:
        messages.append(Message("system", system))
    messages.append(Message("user", task))
    last = None  # "action" | "observation"
    finished = False
    for i, step in enumerate(steps):
        here = f"{where}: step {i}"
        if not isinstance(step, dict):
            raise DataFormatError(f"{here} must be an object")
        if finished:
            raise DataFormatError(f"{here} comes after the finish action; finish must be the last step")
        if "observation" in step and "action" not in step:
            if last != "action":
                raise DataFormatError(f"{here} is an observation with no action before it")
            messages.append(Message("tool", str(step["observation"]), name=messages[-1].tool_calls[0]["function"]["name"]
                                    if messages[-1].tool_calls else None))
            last = "observation"
            continue
        if "action" not in step:
            raise DataFormatError(f"{here} has neither 'action' nor 'observation' (fields: {', '.join(step) or 'none'})")
        action = step["action"]
        if "input" not in step:
            raise DataFormatError(f"{here} (action {action!r}) has no 'input'; give the arguments as an object")
        problem = check_tool_call(tools, action, step["input"])
        if problem:
            raise DataFormatError(f"{here}: {problem}")
        thought = step.get("thought") or ""
        if not isinstance(thought, str):
            raise DataFormatError(f"{here}: 'thought' must be a string")
        if not thought.strip():
            warnings.append(f"{here}: empty thought")
        if style == "react":
            messages.append(Message("assistant", react_text(thought.strip(), action, step["input"])))
        else:
            messages.append(Message("assistant", thought.strip(), tool_calls=[
                {"type": "function", "function": {"name": action, "arguments": step["input"]}}]))
        if "observation" in step:  # an action step that carries its own observation
            messages.append(Message("tool", str(step["observation"]), name=action))
        last = "action"
        finished = action == FINISH
    if not finished:
        raise DataFormatError(f"{where}: the trajectory has no final answer; end it with the action "
                              f"'{FINISH}' and input {{\"answer\": ...}}")
    if style == "tool_calls":
        # the template must show finish like any other tool, or the model meets an undeclared call
        declared = list(tools or [])
        if FINISH not in {_fn(t).get("name") for t in declared}:
            declared.append(FINISH_SCHEMA)
        conv = Conversation(messages, tools=declared)
    else:
        conv = Conversation(messages)
    conv.meta["warnings"] = warnings
    return conv.validate(where)


_REACT = re.compile(r"Action:\s*(?P<name>[\w.\-]+)\s*\n\s*Action Input:\s*(?P<args>\{.*\})", re.S)


def parse_action(text: str) -> tuple[str | None, Any, str | None]:
    """(action name, arguments, error) from generated assistant text in either rendering: a ReAct
    ``Action:``/``Action Input:`` pair, or the first JSON object with ``name`` and ``arguments``
    (how most chat templates write a tool call)."""
    m = _REACT.search(text)
    if m:
        try:
            return m.group("name"), json.loads(_first_json_object(m.group("args")) or ""), None
        except json.JSONDecodeError as exc:
            return m.group("name"), None, f"Action Input is not valid JSON ({exc.msg})"
    start = text.find("{")
    while start != -1:
        candidate = _first_json_object(text[start:])
        if candidate:
            try:
                obj = json.loads(candidate)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and "name" in obj:
                args = obj.get("arguments", obj.get("parameters", {}))
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except json.JSONDecodeError:
                        return obj["name"], None, "arguments are not valid JSON"
                return obj["name"], args, None
        start = text.find("{", start + 1)
    return None, None, "no action found"


def _first_json_object(text: str) -> str | None:
    """The balanced ``{...}`` at the start of ``text`` (string-aware), or None."""
    depth, in_str, escape = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[: i + 1]
    return None


def next_action_cases(conv: Conversation) -> list[tuple[list[dict[str, Any]], str, Any]]:
    """For each assistant turn of a rendered trajectory: (the messages before it, expected action,
    expected arguments). The evaluation asks the model for each of these next actions."""
    cases = []
    messages = conv.to_chat()
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if m.get("tool_calls"):
            fn = m["tool_calls"][0]["function"]
            name, args = fn["name"], fn["arguments"]
        else:
            name, args, _ = parse_action(m["content"])
        cases.append((messages[:i], name, args))
    return cases


def load_tools(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Tool schemas from a JSON file (a list in OpenAI function format)."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{p}: no such tools file")
    try:
        tools = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{p}: not a JSON tools list ({exc})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataFormatError(f"{p}: expected a JSON list of tool schemas")
    return tools
