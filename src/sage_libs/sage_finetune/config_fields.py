"""The machinery behind the config dataclasses of :mod:`.config`: fields with help strings and
limits (:func:`_opt`), type checks against the annotations, ``from_dict`` with did-you-mean errors,
``to_dict``/``replace``, and :func:`coerce_config` for configs that come as dicts or as another
library's dataclasses (SAGE's ``TrainingConfig``)."""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from dataclasses import field
from typing import Any, Literal, Union

from .errors import ConfigError, did_you_mean

__all__ = ["coerce_config", "config_help"]


def _opt(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = None,
         choices: tuple | None = None, ge: float | None = None, gt: float | None = None,
         le: float | None = None, lt: float | None = None, trajectory: bool = True, hf: bool | str = False):
    """A dataclass field with a help string and optional validation metadata. ``trajectory``: whether
    the option changes what is trained (the run identity fingerprints those, run/identity.py); false
    for where and how often outputs are written, logging, and execution details that compute the same
    numbers. ``hf``: the option is passed to ``transformers.TrainingArguments`` as it is (true) or
    under another name (a string); trainers/hf_args.py reads this."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "trajectory": trajectory,
            "hf": hf}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------
# Type checking against the annotations (a small subset of typing: enough for configs).
# --------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true/false"
    if tp is str:
        return "a string"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(tp)
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


class _Config:
    """Validation, dict conversion and did-you-mean for the config dataclasses."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        name = type(self).__name__
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            tp = hints[f.name]
            # YAML writes 1e-4 as a string under YAML 1.1 rules; accept numeric strings for floats.
            if isinstance(value, str) and _matches(1.0, tp) and not _matches(value, tp):
                try:
                    value = float(value)
                    setattr(self, f.name, value)
                except ValueError:
                    pass
            # YAML 1.1 also reads an unquoted `no` (or `off`) as false: `save_strategy: no` means "no"
            if value is False and "no" in (f.metadata.get("choices") or ()) and not _matches(value, tp):
                value = "no"
                setattr(self, f.name, value)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, f.name, value)
            if not _matches(value, tp):
                raise ConfigError(
                    f"{name}.{f.name}: expected {_type_name(tp)}, got {value!r} "
                    f"({type(value).__name__})"
                )
            meta = f.metadata
            if meta.get("choices") and value is not None and isinstance(value, str):
                if value not in meta["choices"]:
                    raise ConfigError(
                        f"{name}.{f.name}: {value!r} is not one of {', '.join(map(repr, meta['choices']))}"
                        + did_you_mean(value, meta["choices"])
                    )
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name}.{f.name}: must be a finite number, got {value!r}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                for key, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                                      ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
                    bound = meta.get(key)
                    if bound is not None and not ok(value, bound):
                        raise ConfigError(f"{name}.{f.name}: must be {word} {bound}, got {value!r}")
        self._validate()

    def _validate(self) -> None:
        """Cross-field checks; subclasses override."""

    # ---- conversion -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, where: str | None = None):
        """Build from a mapping; unknown keys raise a ConfigError with a did-you-mean."""
        data = dict(data or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            key = unknown[0]
            place = f" in {where}" if where else ""
            raise ConfigError(
                f"{cls.__name__}: unknown option {key!r}{place}" + did_you_mean(key, names)
                + f". Known options: {', '.join(names)}"
            )
        try:
            return cls(**data)
        except TypeError as exc:  # a required field is missing
            missing = [f.name for f in dataclasses.fields(cls)
                       if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                       and f.name not in data]
            if missing:
                place = f" in {where}" if where else ""
                raise ConfigError(f"{cls.__name__}: missing required option {missing[0]!r}{place}") from None
            raise ConfigError(f"{cls.__name__}: {exc}") from None

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    if isinstance(value, _Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_help(cls: type) -> list[tuple[str, str, Any]]:
    """(name, help, default) for every field of a config class (``"(required)"`` when it has no
    default); ``sage-finetune options`` lists them with their types and allowed values."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        out.append((f.name, f.metadata.get("help", ""), default))
    return out


# -- configs from elsewhere (dicts, SAGE's dataclasses) ------------------------------------------------
def coerce_config(cls: type, value: Any, name: str) -> Any:
    """Accept our dataclass, a dict, or another config object with the same field names (e.g.
    SAGE's ``TrainingConfig``)."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value, where=name)
    if dataclasses.is_dataclass(value):
        return cls.from_dict(_installed_trackers_only(dataclasses.asdict(value)), where=name)
    if hasattr(value, "to_dict"):
        return cls.from_dict(_installed_trackers_only(dict(value.to_dict())), where=name)
    raise ConfigError(f"{name}: expected a {cls.__name__} or a dict, got {type(value).__name__}")


def _installed_trackers_only(fields: dict[str, Any]) -> dict[str, Any]:
    """SAGE's TrainingConfig defaults to report_to=["tensorboard"]; a SAGE user without the
    tensorboard package should still train, so trackers that are not installed are dropped
    (with a warning) for configs coming from another library. Our own config fails loudly."""
    import importlib.util

    trackers = fields.get("report_to")
    if isinstance(trackers, list):
        missing = [t for t in trackers if t in ("tensorboard", "wandb") and importlib.util.find_spec(t) is None]
        if missing:
            logging.getLogger(__name__).warning("report_to: %s not installed, not reporting there (pip install %s)",
                                                ", ".join(missing), " ".join(missing))
            fields = {**fields, "report_to": [t for t in trackers if t not in missing]}
    return fields
