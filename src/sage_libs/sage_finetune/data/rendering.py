"""How conversations are rendered: every option, in one object.

:class:`RenderOptions` holds everything that decides how records become token ids and labels: the
chat template (decided by :func:`.templates.resolve_chat_template`), the record format, the system
prompt, the agent rendering and dataset-wide tools, and the masking options. One object travels
the whole way: training, ``evaluate``, ``generate``, the agent evaluation, ``data inspect``,
loaders' ``preprocess``, the preference path and the tokenized-data cache key all take it, and
:class:`.render.ChatRenderer` renders with it. :func:`render_options` builds it from a run's
``DataConfig``; :meth:`RenderOptions.build` from keyword arguments (the library's small functions,
``tokenize_records(records, tokenizer, max_seq_length=512)``, accept either).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError, TemplateError
from .templates import FALLBACK_CHAT_TEMPLATE, ChatTemplate, resolve_chat_template

__all__ = ["RenderOptions", "render_options", "refuse_for_preference", "REASONING_MODES", "CONTROL_TOKEN_MODES"]

REASONING_MODES = ("train", "mask", "drop")
CONTROL_TOKEN_MODES = ("text", "control", "refuse")


@dataclass
class RenderOptions:
    """Everything that decides how records become token ids and labels (``DataConfig`` documents
    each option; :mod:`.render` what the masking options do)."""

    chat_template: ChatTemplate
    fmt: str = "auto"
    system_prompt: str | None = None
    agent_format: str = "auto"  # resolved on creation: react or tool_calls
    tools: list[dict[str, Any]] | None = None
    train_on_prompt: bool = False
    mask_history: bool = False
    max_seq_length: int | None = None
    on_error: str = "raise"
    reasoning: str = "train"
    control_tokens_in_content: str = "text"
    formatting_func: Callable | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from .trajectory import resolve_agent_format

        if self.reasoning not in REASONING_MODES:
            raise ValueError(f"reasoning={self.reasoning!r}: expected one of {', '.join(REASONING_MODES)}")
        if self.control_tokens_in_content not in CONTROL_TOKEN_MODES:
            raise ValueError(f"control_tokens_in_content={self.control_tokens_in_content!r}: expected one of "
                             f"{', '.join(CONTROL_TOKEN_MODES)}")
        self.agent_format = resolve_agent_format(self.agent_format, self.chat_template.text)

    @classmethod
    def build(cls, tokenizer: Any, options: "RenderOptions | None" = None, **settings: Any) -> "RenderOptions":
        """``options`` with ``settings`` (field names) changed, or new options from ``settings``;
        ``chat_template`` may be a template text, a file, the name of one of the tokenizer's
        templates or unset (:func:`.templates.resolve_chat_template`). Refuses the built-in
        fallback template for a tokenizer without an eos token (it closes replies with eos)."""
        if "chat_template" in settings or options is None:
            settings["chat_template"] = resolve_chat_template(settings.get("chat_template"), tokenizer,
                                                              option="chat_template")
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown rendering option(s): {', '.join(unknown)}")
        if options is None:
            built = cls(**settings)
        else:
            if "chat_template" in settings and "agent_format" not in settings:
                settings["agent_format"] = "auto"  # re-resolved against the new template (unless given)
            built = dataclasses.replace(options, **settings) if settings else options
        if built.chat_template.text == FALLBACK_CHAT_TEMPLATE and getattr(tokenizer, "eos_token", None) is None:
            raise TemplateError(
                "the tokenizer has no chat template and no eos token: the fallback template closes every "
                "assistant reply with the eos token (so the model learns to stop). Set data.chat_template, or "
                "give the tokenizer an eos token (tokenizer.eos_token = ...)")
        return built

    def cache_fields(self) -> dict[str, Any]:
        """The options as the tokenized-data cache keys them (all but ``formatting_func``: a run
        with one is not cached)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "formatting_func"}
        fields["chat_template"] = self.chat_template.text
        return fields


def refuse_for_preference(*, train_on_prompt: bool, formatting_func: Any) -> None:
    """The rendering options preference training cannot honour, refused in one line each (the
    trainer before it loads anything, the tokenizing functions for library callers). It scores the
    last reply of each prompt (so ``mask_history`` is what it does anyway) and honours every other
    option."""
    if train_on_prompt:
        raise ConfigError("data.train_on_prompt: preference training scores the replies only; set it to false")
    if formatting_func is not None:
        raise ConfigError("formatting_func: not used by preference training; give records with prompt, chosen "
                          "and rejected fields (see docs/preference.md)")


def render_options(data_config: Any, tokenizer: Any, *, max_seq_length: int | None,
                   formatting_func: Callable | None = None,
                   tools: list[dict[str, Any]] | None = None) -> RenderOptions:
    """Resolve ``data_config`` (a :class:`DataConfig`) against ``tokenizer``. ``tools`` overrides
    ``data_config.tools_file`` (already read)."""
    template = resolve_chat_template(data_config.chat_template, tokenizer)
    if tools is None and data_config.tools_file:
        from .trajectory import load_tools

        tools = load_tools(data_config.tools_file)
    return RenderOptions.build(tokenizer, chat_template=template, fmt=data_config.format,
                               system_prompt=data_config.system_prompt,
                               agent_format=data_config.agent_format, tools=tools,
                               train_on_prompt=data_config.train_on_prompt, mask_history=data_config.mask_history,
                               max_seq_length=max_seq_length, on_error=data_config.on_error,
                               reasoning=data_config.reasoning,
                               control_tokens_in_content=data_config.control_tokens_in_content,
                               formatting_func=formatting_func)
