"""A run config: the YAML file ``sage-finetune train`` reads, its ``section.key=value`` overrides,
and the trainer it describes.

    method: lora              # a registered trainer name
    training: {...}           # TrainingConfig fields
    lora: {...}               # LoRAConfig fields
    data: {...}               # DataConfig fields
    quantization: {...}       # QuantizationConfig (method qlora)
    lora_plus: {...}          # LoRAPlusConfig (method lora_plus)
    freeze: {...}             # FreezeConfig (method freeze)
    agent: {...}              # AgentConfig (method agent)
    preference: {...}         # PreferenceConfig (method dpo)
    callbacks: [...]          # registered callback names, or {name: ..., option: value} mappings

The sections and their classes come from one table, :data:`..config.SECTIONS`; which method takes
which optional section from each trainer's ``extra_section``. run_config.yaml, written by every run,
is itself a valid run config.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ._version import __version__
from .config import SECTIONS, AgentConfig, PreferenceConfig
from .errors import ConfigError, UsageError, did_you_mean

__all__ = ["load_run_config", "apply_overrides", "make_trainer", "TRAINER_SECTIONS", "TOP_LEVEL"]


# Optional sections that only some methods take (a trainer's ``extra_section``): section -> the
# create_trainer keyword it becomes
TRAINER_SECTIONS = {s: f"{s}_config" for s in SECTIONS if s not in ("training", "lora", "data")}
# callbacks: a list of registered names, or {name: ..., option: value, ...} mappings
# version: written into run_config.yaml (which is itself a valid run config) by the version that ran it
TOP_LEVEL = ("method", *SECTIONS, "callbacks", "version")


# What PyYAML raises besides YAMLError: tagged scalars (!!timestamp, !!float, !!int, !!bool) are built by
# Python code that raises its own errors on a bad value, and deep nesting recurses
_YAML_BUILD_ERRORS = (ValueError, TypeError, AttributeError, KeyError, OverflowError, RecursionError)


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, *_YAML_BUILD_ERRORS):
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw config mapping."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r}: expected section.key=value (e.g. training.learning_rate=1e-4)")
        key, _, text = item.partition("=")
        value = _parse_value(text)
        if key in ("method", "callbacks"):
            raw[key] = value
            continue
        if "." in key:
            section, _, name = key.partition(".")
            if section not in SECTIONS:
                raise UsageError(f"override {item!r}: unknown section {section!r}"
                                 + did_you_mean(section, SECTIONS) + f"; sections: {', '.join(SECTIONS)}")
            options = [f.name for f in dataclasses.fields(SECTIONS[section])]
            if name not in options:  # the command line's mistake, not the config file's
                raise UsageError(f"override {item!r}: unknown option {name!r} in section {section!r}"
                                 + did_you_mean(name, options) + f"; 'sage-finetune options {section}' lists them")
        else:
            owners = [s for s, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
            if len(owners) != 1:
                every = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
                what = "is in several sections" if owners else "is not a known option"
                raise UsageError(f"override {item!r}: {key!r} {what}; write section.key"
                                 + did_you_mean(key, every))
            section, name = owners[0], key
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UsageError(f"config section {section!r} must be a mapping")
        raw[section][name] = value
    return raw


def load_run_config(path: str | None, overrides: list[str] = ()) -> dict[str, Any]:
    """Read a YAML run config (safely), apply overrides and validate it into dataclasses:
    ``{"method": str, "training": TrainingConfig, "lora": LoRAConfig|None, "data": DataConfig}`` plus
    ``quantization``, ``lora_plus`` and ``freeze`` (their config class, or None when absent)."""
    import yaml

    raw: Any = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise UsageError(f"{path}: is a directory; expected a YAML run config file")
        if not p.is_file():
            raise UsageError(f"{path}: no such config file")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            problem = str(getattr(exc, "problem", None) or exc)
            if isinstance(exc, yaml.constructor.ConstructorError) and "python/" in problem:
                # safe_load refuses the tags that build Python objects (and could run code)
                raise UsageError(f"{where}: YAML tags that create Python objects (!!python/...) are not allowed; "
                                 "a run config holds plain data only (mappings, lists, strings, numbers, "
                                 "true/false)") from None
            raise UsageError(f"{where}: invalid YAML ({problem})") from None
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not UTF-8 text") from None
        except _YAML_BUILD_ERRORS as exc:
            what = "nested too deeply" if isinstance(exc, RecursionError) else \
                f"a tagged value cannot be built: {type(exc).__name__}: {exc}"
            raise UsageError(f"{path}: invalid YAML ({what})") from None
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
        if not isinstance(raw, dict):
            raise UsageError(f"{path}: expected a mapping with method, training, lora, data")
        from .utils.user_code import trust_config_dir

        trust_config_dir(p.parent)  # data.formatting_func may name a file beside the config
    where = str(path or "the command line")
    for key in raw:
        if key not in TOP_LEVEL:
            raise UsageError(f"{where}: unknown top-level key {key!r}" + did_you_mean(str(key), TOP_LEVEL)
                             + f"; expected {', '.join(TOP_LEVEL)}")
    written_by = raw.pop("version", None)
    if written_by is not None and str(written_by) != __version__:
        import logging

        logging.getLogger(__name__).warning("%s was written by isage-finetune %s; this is %s, so a re-run may "
                                            "differ where defaults changed", where, written_by, __version__)
    raw = apply_overrides(raw, list(overrides))
    method = raw.get("method", "lora")
    if not isinstance(method, str):  # `method: []` or `method=[x]`: a name is looked up in the registry
        from .registry import registered_trainers

        by = next((f"override {o!r}" for o in reversed(list(overrides)) if o.partition("=")[0] == "method"), where)
        raise UsageError(f"{by}: 'method' must be the name of a method (one of {', '.join(registered_trainers())}); "
                         f"got {method!r} ({type(method).__name__})")
    out: dict[str, Any] = {"method": method}
    for section, cls in SECTIONS.items():
        body = raw.get(section)
        if body is not None and not isinstance(body, dict):
            raise UsageError(f"{where}: section {section!r} must be a mapping of options")
        if (section == "lora" or section in TRAINER_SECTIONS) and body is None:
            out[section] = None
            continue
        if section == "data" and path is not None and isinstance((body or {}).get("formatting_func"), str):
            body = {**body, "formatting_func": _formatting_func_beside(body["formatting_func"], Path(path))}
        try:
            out[section] = cls.from_dict(body or {}, where=f"{where} [{section}]")
        except ConfigError as exc:
            raise ConfigError(_blame(str(exc), cls, section, list(overrides), where)) from None
    out["callbacks"] = _callback_specs(raw.get("callbacks"), where)
    return out


def _blame(message: str, cls: type, section: str, overrides: list[str], where: str) -> str:
    """A section's error, named after what set the option: a ``section.key=value`` override on the
    command line, else the config file."""
    for item in reversed(overrides):  # the last override of an option is the one that counts
        key = item.partition("=")[0]
        name = key.partition(".")[2] if "." in key else key
        if key.partition(".")[0] in (section, name) and message.startswith(f"{cls.__name__}.{name}:"):
            return f"override {item!r}: {message}"
    place = f"{where} [{section}]"
    return message if place in message else f"{place}: {message}"  # named once


def _callback_specs(raw: Any, where: str) -> list[dict[str, Any]]:
    """``callbacks:`` entries as ``{"name": ..., **options}``, names checked against the registry."""
    from .registry import registered_callbacks

    if raw is None:
        return []
    if not isinstance(raw, list):
        raise UsageError(f"{where}: 'callbacks' must be a list of names or {{name: ..., options}} mappings")
    specs = []
    for i, item in enumerate(raw):
        spec = {"name": item} if isinstance(item, str) else dict(item) if isinstance(item, dict) else None
        if spec is None or not isinstance(spec.get("name"), str):
            raise UsageError(f"{where}: callbacks[{i}] must be a name or a mapping with a 'name'")
        if spec["name"] not in registered_callbacks():
            raise UsageError(f"{where}: callbacks[{i}]: unknown callback {spec['name']!r}"
                             + did_you_mean(spec["name"], registered_callbacks())
                             + f"; registered callbacks: {', '.join(registered_callbacks())}")
        specs.append(spec)
    return specs


def _make_callbacks(specs: list[dict[str, Any]]) -> list[Any]:
    import inspect

    from .registry import get_callback_class

    callbacks = []
    for i, spec in enumerate(specs):
        cls = get_callback_class(spec["name"])
        options = {k: v for k, v in spec.items() if k != "name"}
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = [k for k in options if k not in accepted]
        if unknown:
            raise UsageError(f"callbacks[{i}] ({spec['name']}): unknown option {unknown[0]!r}"
                             + did_you_mean(unknown[0], accepted) + f"; options: {', '.join(accepted)}")
        try:
            callbacks.append(cls(**options))
        except (ValueError, TypeError, ImportError) as exc:
            raise UsageError(f"callbacks[{i}] ({spec['name']}): {exc}") from None
    return callbacks


def _formatting_func_beside(spec: str, config_file: Path) -> str:
    """``data.formatting_func: my_format.py:f`` may name a file beside the config: make such a
    relative path absolute (a file relative to the current directory keeps precedence)."""
    file, sep, name = spec.rpartition(":")
    if not sep or not file or os.path.isabs(file) or os.path.isfile(file):
        return spec
    beside = config_file.resolve().parent / file
    return f"{beside}:{name}" if beside.is_file() else spec


def make_trainer(cfg: dict[str, Any]) -> Any:
    from .registry import create_trainer, get_trainer_class, registered_trainers

    kwargs: dict[str, Any] = {"training_config": cfg["training"], "data_config": cfg["data"]}
    if cfg["lora"] is not None:
        kwargs["lora_config"] = cfg["lora"]
    callbacks = _make_callbacks(cfg.get("callbacks") or [])
    if callbacks:
        kwargs["callbacks"] = callbacks
    # method: agent wraps another method; its sections are checked against that one
    # method: dpo (the preference section) likewise
    inner = (cfg.get("agent") or AgentConfig()).method if cfg["method"] == "agent" else \
        (cfg.get("preference") or PreferenceConfig()).method if cfg["method"] == "dpo" else cfg["method"]
    for section, option in TRAINER_SECTIONS.items():
        if cfg.get(section) is None:
            continue
        if option not in _trainer_options(cfg["method"]) and option not in _trainer_options(inner):
            users = [m for m in registered_trainers() if option in _trainer_options(m)]
            raise ConfigError(f"config section {section!r} is not used by method {cfg['method']!r}; "
                              f"it is for method {' or '.join(users)}")
        kwargs[option] = cfg[section]
    if cfg.get("lora") is not None and inner in registered_trainers() \
            and not getattr(get_trainer_class(inner), "uses_lora", True):
        chosen = f"method {inner!r}" if inner == cfg["method"] else \
            f"{'agent' if cfg['method'] == 'agent' else 'preference'}.method {inner!r}"
        raise ConfigError(f"config section 'lora' is not used by {chosen} (no adapter: the model's own weights "
                          "train); remove the lora: section from the config file, or choose lora, qlora, dora or "
                          "lora_plus")
    trainer = create_trainer(cfg["method"], **kwargs)
    if cfg.get("callbacks"):
        trainer.run_config_extra["callbacks"] = cfg["callbacks"]
    return trainer


def _trainer_options(method: str) -> list[str]:
    """The keyword argument of the method's own config section (``freeze`` -> ``freeze_config``)."""
    from .registry import get_trainer_class

    option = getattr(get_trainer_class(method), "section_option", None)
    return [o for o in [option() if option else None] if o]
