"""How conversations are rendered, decided in one place.

:func:`render_options` turns a :class:`DataConfig` and a tokenizer into :class:`RenderOptions`: the
exact chat template text (and where it came from), the system prompt, the agent rendering, the
dataset-wide tools and the masking options. Training, ``evaluate``, ``generate``, the agent
evaluation, ``sage-finetune data inspect`` and loaders' ``preprocess`` all render with what it
returns, and :func:`install_chat_template` writes the same template into the tokenizer, so every
tokenizer a run saves (adapter, model, merged model, checkpoints) is served the way it was trained.

Which template (first match wins):

1. ``data.chat_template`` naming a file: that file's text;
2. ``data.chat_template`` holding Jinja (it contains ``{``): that text;
3. ``data.chat_template`` naming one of the tokenizer's named templates (a tokenizer may carry
   several, e.g. ``default`` and ``tool_use``): that one;
4. unset: the tokenizer's template (its ``default`` entry when it has several);
5. none at all: :data:`.render.FALLBACK_CHAT_TEMPLATE`, which is then saved with the model too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from .render import FALLBACK_CHAT_TEMPLATE

__all__ = ["ChatTemplate", "RenderOptions", "resolve_chat_template", "render_options", "install_chat_template",
           "end_of_turn_token_ids"]


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved chat template: its Jinja ``text`` and a human-readable ``source``."""

    text: str
    source: str


def resolve_chat_template(setting: str | None, tokenizer: Any, option: str = "data.chat_template") -> ChatTemplate:
    """The template a conversation is rendered with (see the module docstring for the order)."""
    own = getattr(tokenizer, "chat_template", None)
    if setting:
        if os.path.isfile(setting):
            try:
                return ChatTemplate(Path(setting).read_text(encoding="utf-8"), f"file {setting}")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{option}: cannot read {setting}: {exc}") from None
        if "{" in setting:
            return ChatTemplate(setting, f"{option} (inline)")
        if isinstance(own, dict) and setting in own:
            return ChatTemplate(own[setting], f"the tokenizer's {setting!r} template")
        names = f"; the tokenizer's named templates: {', '.join(sorted(own))}" if isinstance(own, dict) else ""
        raise ConfigError(f"{option}: {setting}: no such file; expected a Jinja template file, the template text "
                          f"itself, or the name of one of the tokenizer's templates{names}")
    if isinstance(own, dict):
        if "default" in own:
            return ChatTemplate(own["default"], "the tokenizer's 'default' template")
        if len(own) == 1:
            (name, text), = own.items()
            return ChatTemplate(text, f"the tokenizer's {name!r} template")
        raise ConfigError(f"{option}: the tokenizer has several chat templates ({', '.join(sorted(own))}) and none "
                          "is called 'default'; set data.chat_template to the name of the one to train with")
    if own:
        return ChatTemplate(own, "the tokenizer's template")
    return ChatTemplate(FALLBACK_CHAT_TEMPLATE, "the built-in fallback (the tokenizer has no chat template)")


def install_chat_template(tokenizer: Any, template: ChatTemplate) -> None:
    """Make ``template`` the tokenizer's only chat template, so that whatever saves this tokenizer
    saves the template training used (serving must render prompts exactly as training did). A
    tokenizer's other named templates are dropped: ``apply_chat_template`` would pick its
    ``tool_use`` entry whenever tools are passed, which is not the template that was trained."""
    tokenizer.chat_template = template.text


def end_of_turn_token_ids(tokenizer: Any, template: str) -> list[int]:
    """The special token(s) the template closes an assistant turn with (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``, the eos...), found by rendering a probe turn and reading the
    first token after the reply. Empty when that token is ordinary text."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    try:
        prompt = tokenizer.apply_chat_template(probe[:1], chat_template=template, tokenize=False,
                                               add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(probe, chat_template=template, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render the probe: no extra stop tokens
        return []
    reply_at = whole.find("Hello.", len(prompt) if whole.startswith(prompt) else 0)
    if reply_at < 0:
        return []
    rest = whole[reply_at + len("Hello."):].lstrip(" ")
    ids = tokenizer(rest, add_special_tokens=False)["input_ids"][:1] if rest else []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    return [i for i in ids if i in special]


@dataclass
class RenderOptions:
    """Everything that decides how records become token ids and labels."""

    chat_template: ChatTemplate
    fmt: str = "auto"
    system_prompt: str | None = None
    agent_format: str = "react"  # resolved: react or tool_calls
    tools: list[dict[str, Any]] | None = None
    train_on_prompt: bool = False
    mask_history: bool = False
    max_seq_length: int | None = None
    on_error: str = "raise"
    reasoning: str = "train"
    control_tokens_in_content: str = "text"
    formatting_func: Callable | None = field(default=None, repr=False)

    def tokenize_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`.pipeline.tokenize_records` / ``prepare_records``."""
        return dict(fmt=self.fmt, max_seq_length=self.max_seq_length, train_on_prompt=self.train_on_prompt,
                    mask_history=self.mask_history, chat_template=self.chat_template.text,
                    system_prompt=self.system_prompt, formatting_func=self.formatting_func, on_error=self.on_error,
                    agent_format=self.agent_format, tools=self.tools, reasoning=self.reasoning,
                    control_tokens_in_content=self.control_tokens_in_content)

    def preference_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`.preference.tokenize_preference_records` /
        ``tokenize_unpaired_records``: every option preference scoring honours (training and
        ``data inspect`` both pass these). The others are refused by the preference trainer
        (train_on_prompt, formatting_func) or are what it does anyway (mask_history: the last reply)."""
        return dict(chat_template=self.chat_template.text, max_seq_length=self.max_seq_length,
                    system_prompt=self.system_prompt, on_error=self.on_error, reasoning=self.reasoning,
                    control_tokens_in_content=self.control_tokens_in_content)


def render_options(data_config: Any, tokenizer: Any, *, max_seq_length: int | None,
                   formatting_func: Callable | None = None,
                   tools: list[dict[str, Any]] | None = None) -> RenderOptions:
    """Resolve ``data_config`` (a :class:`DataConfig`) against ``tokenizer``. ``tools`` overrides
    ``data_config.tools_file`` (already read)."""
    from .trajectory import resolve_agent_format

    template = resolve_chat_template(data_config.chat_template, tokenizer)
    if tools is None and data_config.tools_file:
        from .trajectory import load_tools

        tools = load_tools(data_config.tools_file)
    return RenderOptions(chat_template=template, fmt=data_config.format, system_prompt=data_config.system_prompt,
                         agent_format=resolve_agent_format(data_config.agent_format, template.text), tools=tools,
                         train_on_prompt=data_config.train_on_prompt, mask_history=data_config.mask_history,
                         max_seq_length=max_seq_length, on_error=data_config.on_error,
                         reasoning=data_config.reasoning, control_tokens_in_content=data_config.control_tokens_in_content,
                         formatting_func=formatting_func)
