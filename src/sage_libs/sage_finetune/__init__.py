"""isage-finetune: fine-tune LLMs with LoRA, QLoRA, DoRA, LoRA+, full fine-tuning and agent SFT.

Importing this package is cheap: torch, transformers and peft load only when a trainer or loader
is created. Quick start::

    from sage_libs.sage_finetune import TrainingConfig, LoRAConfig, create_trainer, create_loader

    train = create_loader("jsonl").load("data/train.jsonl")
    trainer = create_trainer("lora", training_config=TrainingConfig(model_name_or_path="...",
                             output_dir="out"), lora_config=LoRAConfig(r=8))
    metrics = trainer.train(train)
    trainer.save_model("out/adapter")
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .config import DataConfig, FreezeConfig, LoRAConfig, LoRAPlusConfig, QuantizationConfig, TrainingConfig
from .errors import ConfigError, FineTuneRegistryError
from .interface import DatasetLoader, FineTuner, TrainingCallback, TrainingStrategy
from .registry import (
    create_callback,
    create_loader,
    create_strategy,
    create_trainer,
    register_callback,
    register_loader,
    register_strategy,
    register_trainer,
    registered_callbacks,
    registered_loaders,
    registered_strategies,
    registered_trainers,
    unregister_callback,
    unregister_loader,
    unregister_strategy,
    unregister_trainer,
)
# Heavy classes, imported on first attribute access (PEP 562).
_LAZY = {
    "BaseTrainer": "trainers.base",
    "TrainingError": "trainers.base",
    "NonFiniteLossError": "trainers.base",
    "TrainingInterrupted": "trainers.base",
    "LoRATrainer": "trainers.lora",
    "QLoRATrainer": "trainers.qlora",
    "DoRATrainer": "trainers.dora",
    "LoRAPlusTrainer": "trainers.lora_plus",
    "FullTrainer": "trainers.full",
    "FreezeTrainer": "trainers.freeze",
    "JSONLLoader": "loaders.jsonl",
    "InstructionLoader": "loaders.instruction",
    "ParquetLoader": "loaders.parquet",
    "HFDatasetLoader": "loaders.huggingface",
    "TrajectoryLoader": "loaders.trajectory",
    "AgentTrainer": "trainers.agent",
    "Conversation": "data.conversation",
    "Message": "data.conversation",
    "ChatSession": "serving",
    "RenderOptions": "data.rendering",
    "export_gguf": "export",
}

__all__ = [
    "__version__",
    "TrainingConfig", "LoRAConfig", "DataConfig", "ConfigError",
    "QuantizationConfig", "LoRAPlusConfig", "FreezeConfig",
    "FineTuner", "DatasetLoader", "TrainingCallback", "TrainingStrategy",
    "FineTuneRegistryError",
    "create_trainer", "create_loader", "create_callback", "create_strategy",
    "register_trainer", "register_loader", "register_callback", "register_strategy",
    "unregister_trainer", "unregister_loader", "unregister_callback", "unregister_strategy",
    "registered_trainers", "registered_loaders", "registered_callbacks", "registered_strategies",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# Join SAGE's factory when SAGE is already loaded (isage_finetune does it when SAGE loads later).
from ._register import register_with_sage_if_loaded  # noqa: E402

register_with_sage_if_loaded()
