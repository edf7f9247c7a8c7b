"""Name -> class registries for trainers, loaders and callbacks.

Built-in entries are stored as ``"module:Class"`` strings and imported on first use, so that
``import sage_libs.sage_finetune`` stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import FineTuneRegistryError, did_you_mean  # noqa: F401 (re-exported)
from .interface import DatasetLoader, FineTuner, TrainingCallback, TrainingStrategy

__all__ = [
    "FineTuneRegistryError",
    "register_trainer", "register_loader", "register_callback", "register_strategy",
    "unregister_trainer", "unregister_loader", "unregister_callback", "unregister_strategy",
    "create_trainer", "create_loader", "create_callback", "create_strategy",
    "registered_trainers", "registered_loaders", "registered_callbacks", "registered_strategies",
    "get_trainer_class", "get_loader_class", "get_callback_class", "get_strategy_class",
    "registered_classes",
]


_PKG = "sage_libs.sage_finetune"


class _Registry:
    def __init__(self, kind: str, base: type) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, Any] = {}  # name -> class or "module:Class"

    def register(self, name: str, cls: Any, *, overwrite: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if not isinstance(cls, str) and not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"register_{self.kind}({name!r}, ...): expected a subclass of "
                            f"{self.base.__name__}, got {cls!r}")
        if name in self._entries and not overwrite and self._entries[name] is not cls:
            raise FineTuneRegistryError(
                f"{self.kind} {name!r} is already registered ({self._describe(name)}); "
                f"unregister_{self.kind}({name!r}) first or pass overwrite=True")
        self._entries[name] = cls

    def unregister(self, name: str) -> None:
        if name not in self._entries:
            raise FineTuneRegistryError(self._unknown(name))
        del self._entries[name]

    def get(self, name: str) -> type:
        if name not in self._entries:
            raise FineTuneRegistryError(self._unknown(name))
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def _describe(self, name: str) -> str:
        entry = self._entries[name]
        return entry if isinstance(entry, str) else f"{entry.__module__}.{entry.__qualname__}"

    def _unknown(self, name: str) -> str:
        names = self.names()
        return f"unknown {self.kind} {name!r}{did_you_mean(name, names)}; registered {self.kind}s: {', '.join(names) or '(none)'}"


_trainers = _Registry("trainer", FineTuner)
_loaders = _Registry("loader", DatasetLoader)
_callbacks = _Registry("callback", TrainingCallback)
_strategies = _Registry("strategy", TrainingStrategy)

# The built-in names, as "module:Class" relative to this package (imported on first use).
_BUILTINS: dict[_Registry, dict[str, str]] = {
    _trainers: {
        "lora": "trainers.lora:LoRATrainer",
        "qlora": "trainers.qlora:QLoRATrainer",
        "dora": "trainers.dora:DoRATrainer",
        "lora_plus": "trainers.lora_plus:LoRAPlusTrainer",
        "full": "trainers.full:FullTrainer",
        "freeze": "trainers.freeze:FreezeTrainer",
        "agent": "trainers.agent:AgentTrainer",
        "dpo": "trainers.preference:PreferenceTrainer",
    },
    _loaders: {
        "jsonl": "loaders.jsonl:JSONLLoader",
        "instruction": "loaders.instruction:InstructionLoader",
        "parquet": "loaders.parquet:ParquetLoader",
        "huggingface": "loaders.huggingface:HFDatasetLoader",
        "trajectory": "loaders.trajectory:TrajectoryLoader",
    },
    _callbacks: {
        "tensorboard": "callbacks.tensorboard:TensorBoardCallback",
        "wandb": "callbacks.wandb:WandbCallback",
        "early_stop": "callbacks.early_stop:EarlyStopCallback",
    },
    _strategies: {
        "lora": "strategies:LoRAStrategy",
        "dora": "strategies:DoRAStrategy",
        "rslora": "strategies:RSLoRAStrategy",
        "pissa": "strategies:PiSSAStrategy",
        "lora_plus": "strategies:LoRAPlusStrategy",
        "full": "strategies:FullStrategy",
    },
}
for _registry, _entries in _BUILTINS.items():
    for _name, _target in _entries.items():
        _registry.register(_name, f"{_PKG}.{_target}")


def registered_classes() -> dict[str, dict[str, type]]:
    """Every registered class by kind (imports them), for registration into SAGE's factory."""
    return {reg.kind: {name: reg.get(name) for name in reg.names()}
            for reg in (_trainers, _loaders, _callbacks, _strategies)}


# -- the public functions, one set per kind ------------------------------------------------------------
def register_trainer(name: str, cls: type[FineTuner], *, overwrite: bool = False) -> None:
    """Register a trainer class under ``name`` (a name registered twice: :class:`FineTuneRegistryError`)."""
    _trainers.register(name, cls, overwrite=overwrite)


def unregister_trainer(name: str) -> None:
    """Remove the trainer registered under ``name``."""
    _trainers.unregister(name)


def create_trainer(name: str, **kwargs: Any) -> Any:
    """An instance of the trainer registered under ``name``, built with ``kwargs``."""
    return _trainers.create(name, **kwargs)


def registered_trainers() -> list[str]:
    """The sorted names of all registered trainers."""
    return _trainers.names()


def get_trainer_class(name: str) -> type[FineTuner]:
    """The trainer class registered under ``name`` (imported on first use)."""
    return _trainers.get(name)


def register_loader(name: str, cls: type[DatasetLoader], *, overwrite: bool = False) -> None:
    """Register a loader class under ``name`` (a name registered twice: :class:`FineTuneRegistryError`)."""
    _loaders.register(name, cls, overwrite=overwrite)


def unregister_loader(name: str) -> None:
    """Remove the loader registered under ``name``."""
    _loaders.unregister(name)


def create_loader(name: str, **kwargs: Any) -> Any:
    """An instance of the loader registered under ``name``, built with ``kwargs``."""
    return _loaders.create(name, **kwargs)


def registered_loaders() -> list[str]:
    """The sorted names of all registered loaders."""
    return _loaders.names()


def get_loader_class(name: str) -> type[DatasetLoader]:
    """The loader class registered under ``name`` (imported on first use)."""
    return _loaders.get(name)


def register_callback(name: str, cls: type[TrainingCallback], *, overwrite: bool = False) -> None:
    """Register a callback class under ``name`` (a name registered twice: :class:`FineTuneRegistryError`)."""
    _callbacks.register(name, cls, overwrite=overwrite)


def unregister_callback(name: str) -> None:
    """Remove the callback registered under ``name``."""
    _callbacks.unregister(name)


def create_callback(name: str, **kwargs: Any) -> Any:
    """An instance of the callback registered under ``name``, built with ``kwargs``."""
    return _callbacks.create(name, **kwargs)


def registered_callbacks() -> list[str]:
    """The sorted names of all registered callbacks."""
    return _callbacks.names()


def get_callback_class(name: str) -> type[TrainingCallback]:
    """The callback class registered under ``name`` (imported on first use)."""
    return _callbacks.get(name)


def register_strategy(name: str, cls: type[TrainingStrategy], *, overwrite: bool = False) -> None:
    """Register a strategy class under ``name`` (a name registered twice: :class:`FineTuneRegistryError`)."""
    _strategies.register(name, cls, overwrite=overwrite)


def unregister_strategy(name: str) -> None:
    """Remove the strategy registered under ``name``."""
    _strategies.unregister(name)


def create_strategy(name: str, **kwargs: Any) -> Any:
    """An instance of the strategy registered under ``name``, built with ``kwargs``."""
    return _strategies.create(name, **kwargs)


def registered_strategies() -> list[str]:
    """The sorted names of all registered strategies."""
    return _strategies.names()


def get_strategy_class(name: str) -> type[TrainingStrategy]:
    """The strategy class registered under ``name`` (imported on first use)."""
    return _strategies.get(name)
