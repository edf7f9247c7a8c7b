"""Which chat template a run renders with, decided in one place.

Training, ``evaluate``, ``generate``, ``chat``, the agent evaluation, ``data inspect``, the
tokenized-data cache key and loaders' ``preprocess`` all render with the template
:func:`resolve_chat_template` returns (carried in :class:`.rendering.RenderOptions`), and
:func:`install_chat_template` writes that same template into the tokenizer, so every tokenizer a run
saves (adapter, model, merged model, checkpoints) is served the way it was trained.

Which template (first match wins):

1. ``data.chat_template`` naming a file: that file's text;
2. ``data.chat_template`` holding Jinja (it contains ``{``): that text;
3. ``data.chat_template`` naming one of the tokenizer's named templates (a tokenizer may carry
   several, e.g. ``default`` and ``tool_use``): that one;
4. unset: the tokenizer's template (its ``default`` entry when it has several, its only entry when
   it has one);
5. none at all: :data:`FALLBACK_CHAT_TEMPLATE`, which is then saved with the model too.

One template renders every conversation of a run, with tools or without: ``apply_chat_template``
would switch to a ``tool_use`` entry whenever tools are passed, which is not what was trained (name
``tool_use`` in ``data.chat_template`` to train with that one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataFormatError

__all__ = ["FALLBACK_CHAT_TEMPLATE", "ChatTemplate", "read_template_file", "resolve_chat_template",
           "check_chat_template", "template_error", "install_chat_template",
           "end_of_turn_token_ids"]

# Used when the tokenizer has no chat template. Plain-text role headers, each ending in a newline
# (not a space: a trailing space would merge with the reply's first word and blur the boundary);
# the end of each assistant turn is the tokenizer's eos token, so the model learns to stop.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ 'System:\n' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'User:\n' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'tool' -%}{{ 'Tool:\n' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'Assistant:\n' + message['content'] }}"
    "{%- if message.get('tool_calls') -%}{%- for call in message['tool_calls'] -%}"
    "{{ '\n<tool_call>' + (call['function'] | tojson) + '</tool_call>' }}"
    "{%- endfor -%}{%- endif -%}"
    "{{ eos_token + '\n\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved chat template: its Jinja ``text`` and a human-readable ``source``."""

    text: str
    source: str
    user_set: bool = False  # chosen by data.chat_template (error messages blame that option)


def read_template_file(path: str, option: str = "data.chat_template") -> str:
    """The text of a chat template file; an unreadable or empty one (a 0-byte file would render every
    conversation as nothing, and be saved so with the model) is a :class:`ConfigError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{option}: cannot read {path}: {exc}") from None
    if not text.strip():
        raise ConfigError(f"{option}: {path} is empty; expected a Jinja chat template (the text that renders "
                          "the messages)")
    return text


def resolve_chat_template(setting: "str | ChatTemplate | None", tokenizer: Any,
                          option: str = "data.chat_template") -> ChatTemplate:
    """The template a conversation is rendered with (see the module docstring for the order); a
    :class:`ChatTemplate` is already resolved and is returned as it is."""
    if isinstance(setting, ChatTemplate):
        return setting
    own = getattr(tokenizer, "chat_template", None)
    if setting:
        if os.path.isfile(setting):
            return ChatTemplate(read_template_file(setting, option), f"file {setting}", True)
        if "{" in setting:
            return ChatTemplate(setting, f"{option} (inline)", True)
        if isinstance(own, dict) and setting in own:
            return ChatTemplate(own[setting], f"the tokenizer's {setting!r} template", True)
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


def _compile(template: str) -> None:
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # pragma: no cover - another transformers: a plain sandboxed parse
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        ImmutableSandboxedEnvironment().parse(template)
        return
    _compile_jinja_template(template)


def check_chat_template(value: str | None, option: str = "data.chat_template") -> None:
    """A template (text, or a file) that does not even parse: ``data.chat_template: FILE:LINE:
    Jinja syntax error (...)``, before the tokenizer or the model is loaded."""
    if not value:
        return
    import jinja2

    is_file = "{" not in value and os.path.isfile(value)
    text = read_template_file(value, option) if is_file else value
    try:
        _compile(text)
    except jinja2.TemplateSyntaxError as exc:
        where = f"{value}:{exc.lineno}" if is_file else f"line {exc.lineno} of the template"
        raise ConfigError(f"{option}: {where}: Jinja syntax error ({exc.message})") from None


def template_error(exc: BaseException, where: str, user_template: bool) -> BaseException:
    """What a chat template raised while rendering the record at ``where``, as one line: a syntax
    error or a sandbox refusal is a ConfigError (the template is wrong, every record would fail); a
    template's own ``raise_exception`` or an undefined value is a DataFormatError (this record)."""
    import jinja2

    if not isinstance(exc, jinja2.TemplateError):
        return exc
    option = ("data.chat_template" if user_template
              else "the tokenizer's chat template (set data.chat_template to override it)")
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return ConfigError(f"{option}: line {exc.lineno} of the template: Jinja syntax error ({exc.message})")
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return ConfigError(f"{option}: the template does something the sandbox forbids ({exc}) while rendering "
                           f"{where}; a chat template may only format the messages")
    return DataFormatError(f"{where}: the chat template cannot render this record: {type(exc).__name__}: {exc}")
