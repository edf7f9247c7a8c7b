"""Checks of bad input that need neither the data nor the model weights, and the translation of
errors raised by user code and templates into one line naming the option or the file:line."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, DataFormatError

__all__ = ["check_chat_template", "check_data_argument", "check_lora_rank", "template_error",
           "formatting_func_error"]


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

    from ..data.templates import read_template_file

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


def formatting_func_error(exc: BaseException, func: Callable, where: str) -> DataFormatError:
    """``data.jsonl:3: formatting_func to_messages (my_format.py:5) raised KeyError: 'q'``."""
    code = getattr(func, "__code__", None)
    home = code.co_filename if code is not None else None
    frames = traceback.extract_tb(exc.__traceback__)
    frame = next((f for f in reversed(frames) if f.filename == home), frames[-1] if frames else None)
    at = f" ({frame.filename}:{frame.lineno})" if frame is not None else ""
    name = getattr(func, "__qualname__", None) or type(func).__name__
    return DataFormatError(f"{where}: formatting_func {name}{at} raised {type(exc).__name__}: {exc}")


def check_data_argument(option: str, data: Any) -> None:
    """train()/evaluate() data must be a path, a list of paths, records or a dataset."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return
    if isinstance(data, (bytes, dict, int, float, bool)) or not (
            hasattr(data, "__iter__") or hasattr(data, "__getitem__")):
        raise ConfigError(f"{option}: expected a data file path, a list of paths, a list of records (dicts) or a "
                          f"datasets.Dataset; got {type(data).__name__}"
                          + (" (a single record: wrap it in a list)" if isinstance(data, dict) else ""))


def check_lora_rank(r: int, model_name_or_path: str) -> None:
    """``lora.r`` above the model's width (``hidden_size`` in its config.json) adds no capacity: every
    adapted layer has the width on one side, so its update's rank cannot exceed it; it only costs
    memory (r = 1,000,000 on a 64-wide model asks for gigabytes)."""
    config = Path(model_name_or_path).expanduser() / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    width = data.get("hidden_size") or data.get("text_config", {}).get("hidden_size") or data.get("d_model")
    if isinstance(width, int) and r > width:
        raise ConfigError(f"lora.r: {r} is more than the model's hidden_size ({width}, in {config}); the update of "
                          f"a layer of width {width} has rank at most {width}, so a higher rank adds only memory; use "
                          f"at most {width} (8 to 64 is typical)")
