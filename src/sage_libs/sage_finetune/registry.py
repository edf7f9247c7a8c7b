"""Name -> class registries for trainers, loaders and callbacks.

Built-in entries are stored as ``"module:Class"`` strings and imported on first use, so that
``import sage_libs.sage_finetune`` stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

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


def _api(reg: _Registry) -> tuple[Callable, ...]:
    def register(name: str, cls: type, *, overwrite: bool = False) -> None:
        reg.register(name, cls, overwrite=overwrite)

    def unregister(name: str) -> None:
        reg.unregister(name)

    def create(name: str, **kwargs: Any) -> Any:
        return reg.create(name, **kwargs)

    def registered() -> list[str]:
        return reg.names()

    def get(name: str) -> type:
        return reg.get(name)

    for fn, verb in ((register, "register_"), (unregister, "unregister_"), (create, "create_"),
                     (registered, "registered_"), (get, "get_")):
        plural = "strategies" if reg.kind == "strategy" else f"{reg.kind}s"
        fn.__name__ = f"{verb}{plural}" if verb == "registered_" else f"{verb}{reg.kind}"
        fn.__doc__ = {
            "register_": f"Register a {reg.kind} class under ``name`` (duplicate -> FineTuneRegistryError).",
            "unregister_": f"Remove the {reg.kind} registered under ``name``.",
            "create_": f"Instantiate the {reg.kind} registered under ``name`` with ``kwargs``.",
            "registered_": f"Sorted names of all registered {reg.kind}s.",
            "get_": f"The {reg.kind} class registered under ``name``.",
        }[verb]
    return register, unregister, create, registered, get


register_trainer, unregister_trainer, create_trainer, registered_trainers, get_trainer_class = _api(_trainers)
register_loader, unregister_loader, create_loader, registered_loaders, get_loader_class = _api(_loaders)
register_callback, unregister_callback, create_callback, registered_callbacks, get_callback_class = _api(_callbacks)
register_strategy, unregister_strategy, create_strategy, registered_strategies, get_strategy_class = _api(_strategies)
