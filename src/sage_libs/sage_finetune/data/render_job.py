"""One conversation being rendered by a :class:`.render.ChatRenderer`: its messages, template and the
renders of its prefixes, cached. The renderer's span finders (:mod:`.turn_locator`,
:mod:`.control_text`) work on these."""

from __future__ import annotations

from typing import Any

from ..errors import DataFormatError, TemplateError
from .conversation import Conversation
from .templates import template_error

__all__ = ["RenderJob"]


class RenderJob:
    """One conversation being rendered: its messages, template and a cache of renders keyed by
    (number of messages, add_generation_prompt)."""

    __slots__ = ("renderer", "conv", "chat", "tools", "template", "where", "plain", "cache")

    def __init__(self, renderer: Any, conv: Conversation, chat: list[dict], tools: Any, template: str,
                 where: str, plain: bool) -> None:
        self.renderer, self.conv, self.chat, self.tools = renderer, conv, chat, tools
        self.template, self.where, self.plain = template, where, plain
        self.cache: dict[tuple[int, bool], str] = {}

    @property
    def full(self) -> str:
        return self.render(len(self.chat), False)

    def render(self, n: int, add_generation_prompt: bool) -> str:
        key = (n, add_generation_prompt)
        text = self.cache.get(key)
        if text is None:
            text = self.cache[key] = self._checked(self.chat[:n], add_generation_prompt, self.plain)
        return text

    def render_messages(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """A render of other messages (a probe or a changed copy), not cached."""
        return self._checked(messages, add_generation_prompt, False)

    def _checked(self, messages: list[dict], add_generation_prompt: bool, plain: bool) -> str:
        try:
            return self.renderer._render_batch([messages], self.tools, add_generation_prompt, plain, self.template)[0]
        except DataFormatError:
            raise
        except Exception as exc:
            _raise_template_problem(exc, self.where, self.renderer.options.chat_template.user_set)
            raise  # pragma: no cover - _raise_template_problem always raises


def _raise_template_problem(exc: Exception, where: str, user_template: bool) -> None:
    """A template that does not compile or that the sandbox stops is a configuration error naming
    the template's origin (every record fails: :func:`.templates.template_error`); one
    that refuses a conversation (raise_exception, a missing field) is that record's error."""
    try:
        import jinja2
    except ImportError:  # pragma: no cover - transformers needs jinja2
        jinja2 = None
    if jinja2 is not None and isinstance(exc, (jinja2.TemplateSyntaxError, jinja2.exceptions.SecurityError)):
        raise template_error(exc, where, user_template) from exc
    if jinja2 is not None and isinstance(exc, jinja2.TemplateError) and type(exc) is jinja2.TemplateError:
        reason = str(exc)  # the template's own raise_exception message
    else:
        reason = f"{type(exc).__name__}: {exc}"
    raise TemplateError(f"{where}: the chat template refuses this conversation: {reason}") from exc
