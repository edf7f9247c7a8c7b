"""``sage-finetune options [SECTION]``: every run-config option with its type, default and help.

Read from the config dataclasses' field metadata (:func:`..config.config_help`), the registered
trainers (``method``) and callbacks (``callbacks``), so this listing cannot drift from what the
config accepts. Standard library only: listing options never imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import shutil
import textwrap
import typing
from typing import Any

from ..config_fields import _type_name, config_help
from ..errors import ConfigError, did_you_mean

__all__ = ["describe_fields", "render_options", "TOP_LEVEL_HELP"]

TOP_LEVEL_HELP = {
    "method": "The fine-tuning method: a registered trainer name.",
    "callbacks": "A list of registered callback names, or {name: ..., option: value} mappings.",
}


def describe_fields(cls: type) -> list[dict[str, Any]]:
    """name, type, default (``required`` when there is none), constraints and help of each field."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    rows = []
    for name, help_text, default in config_help(cls):
        meta = fields[name].metadata
        constraints = []
        if meta.get("choices"):
            constraints.append("one of " + ", ".join(map(str, meta["choices"])))
        for key, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if meta.get(key) is not None:
                constraints.append(f"{word} {_yaml(meta[key])}")
        required = fields[name].default is dataclasses.MISSING and fields[name].default_factory is dataclasses.MISSING
        rows.append({"name": name, "type": _type_name(hints[name]), "default": None if required else default,
                     "required": required, "constraints": constraints, "help": help_text})
    return rows


def _yaml(value: Any) -> str:
    """A value as it is written in a YAML config."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if value == "" or value.strip() != value or value in ("null", "true", "false") else value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _wrap(text: str, width: int, indent: str) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent) or [indent.rstrip()]


def _field_lines(section: str, row: dict[str, Any], width: int) -> list[str]:
    facts = [row["type"], "required" if row["required"] else f"default {_yaml(row['default'])}", *row["constraints"]]
    lines = _wrap(f"{section}.{row['name']}  ({'; '.join(facts)})", width, "  ")
    return lines + _wrap(row["help"], width, "      ")


def _first_line(doc: str | None) -> str:
    return (inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ").replace("``", "") if doc else "").strip()


def _method_lines(width: int) -> list[str]:
    from ..registry import get_trainer_class, registered_trainers

    lines = _wrap(f"method  (a string; default lora) {TOP_LEVEL_HELP['method']}", width, "  ")
    for name in registered_trainers():
        lines += _wrap(f"{name}: {_first_line(get_trainer_class(name).__doc__)}", width, "      ")
    return lines


def _callback_lines(width: int) -> list[str]:
    from ..registry import get_callback_class, registered_callbacks

    lines = _wrap(f"callbacks  (a list; default []) {TOP_LEVEL_HELP['callbacks']}", width, "  ")
    for name in registered_callbacks():
        cls = get_callback_class(name)
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        options = ", ".join(f"{p.name}: ..." if p.default is p.empty else f"{p.name}: {_yaml(p.default)}" for p in params)
        lines += _wrap(f"- {{name: {name}{', ' if options else ''}{options}}}", width, "      ")
        lines += _wrap(_first_line(cls.__doc__), width, "          ")
    return lines


def render_options(query: str | None, sections: dict[str, type], *, width: int | None = None) -> str:
    """The listing for ``sage-finetune options [QUERY]``: QUERY is a section (``training``), one
    option (``training.learning_rate`` or a bare ``learning_rate``), ``method`` or ``callbacks``;
    none lists everything. An unknown QUERY raises :class:`ConfigError`."""
    width = width or max(60, min(shutil.get_terminal_size((100, 24)).columns, 110)) - 1
    names = [*sections, *TOP_LEVEL_HELP]
    if query is not None and "." not in query and query not in names:
        owners = [s for s, cls in sections.items() if query in {f.name for f in dataclasses.fields(cls)}]
        if not owners:
            every = names + [f.name for cls in sections.values() for f in dataclasses.fields(cls)]
            raise ConfigError(f"options {query!r}: not a config section or option" + did_you_mean(query, every)
                              + f"; sections: {', '.join(names)}")
        return "".join(line + "\n" for s in owners for line in _one_option(s, query, sections, width))
    if query is not None and "." in query:
        section, _, name = query.partition(".")
        return "".join(line + "\n" for line in _one_option(section, name, sections, width))
    out: list[str] = []
    if query is None:
        out += _wrap("A run config is a YAML file with these top-level keys (sections); any option can also be "
                     "set on the command line as section.key=value (the value is read as YAML). "
                     "`sage-finetune options SECTION` lists one section.", width, "")
        out.append("")
    if query in (None, "method"):
        out += ["method"] + _method_lines(width) + [""]
    for section, cls in sections.items():
        if query not in (None, section):
            continue
        out += _wrap(f"{section}:  {_first_line(cls.__doc__)}", width, "")
        for row in describe_fields(cls):
            out += _field_lines(section, row, width)
        out.append("")
    if query in (None, "callbacks"):
        out += ["callbacks"] + _callback_lines(width) + [""]
    return "\n".join(out).rstrip() + "\n"


def _one_option(section: str, name: str, sections: dict[str, type], width: int) -> list[str]:
    if section not in sections:
        raise ConfigError(f"options {section}.{name}: unknown section {section!r}" + did_you_mean(section, sections)
                          + f"; sections: {', '.join(sections)}")
    rows = {row["name"]: row for row in describe_fields(sections[section])}
    if name not in rows:
        raise ConfigError(f"options {section}.{name}: {sections[section].__name__} has no option {name!r}"
                          + did_you_mean(name, rows))
    return _field_lines(section, rows[name], width)


# -- the command ----------------------------------------------------------------------------------

def add_parser(sub: Any) -> None:
    p = sub.add_parser("options", help="list every config option with its type, default and help",
                       description="List the run config's options (from the config classes) with type, "
                                   "default, allowed values and help.")
    p.add_argument("section", nargs="?",
                   help=f"one section ({', '.join(_top_level())}) or one option (training.learning_rate); "
                        "default: all")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Every config option with its type, default and help (no torch import)."""
    from ..config import SECTIONS

    print(render_options(args.section, SECTIONS), end="")
    return 0




def _top_level() -> tuple[str, ...]:
    from ..run_config import TOP_LEVEL

    return TOP_LEVEL
