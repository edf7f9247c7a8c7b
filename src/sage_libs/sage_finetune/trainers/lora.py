"""``lora``: low-rank adapters through PEFT on a frozen base model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..utils.io import atomic_dir
from ..utils.processes import is_main_process
from .base import BaseTrainer

__all__ = ["LoRATrainer", "linear_module_names", "check_target_modules", "check_modules_to_save", "peft_lora_config"]


def linear_module_names(model: Any) -> list[str]:
    """The distinct last-name parts of the model's linear layers (what target_modules matches),
    excluding the output head."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            leaf = name.rsplit(".", 1)[-1]
            if leaf != "lm_head":
                names.add(leaf)
    return sorted(names)


def check_target_modules(model: Any, target_modules: Any) -> None:
    """Fail before training when a target module name matches nothing in the model."""
    if target_modules == "all-linear" or not isinstance(target_modules, list):
        return
    module_names = [name for name, _ in model.named_modules()]
    for target in target_modules:
        if not any(n == target or n.endswith("." + target) for n in module_names):
            raise ConfigError(
                f"lora.target_modules: {target!r} matches no module of this model; its linear layers are "
                f"{', '.join(linear_module_names(model))} (or use 'all-linear')")


def check_modules_to_save(model: Any, modules_to_save: list[str] | None) -> None:
    """Fail before training when a ``modules_to_save`` name matches nothing (PEFT ignores it silently)."""
    module_names = [name for name, _ in model.named_modules()]
    for target in modules_to_save or []:
        if not any(n == target or n.endswith("." + target) for n in module_names):
            raise ConfigError(f"lora.modules_to_save: {target!r} matches no module of this model "
                              "(e.g. lm_head or embed_tokens)")


def peft_lora_config(lc: Any) -> Any:
    """Our :class:`LoRAConfig` as a ``peft.LoraConfig``."""
    from peft import LoraConfig

    return LoraConfig(
        r=lc.r, lora_alpha=lc.lora_alpha, target_modules=lc.resolved_target_modules,
        lora_dropout=lc.lora_dropout, bias=lc.bias, task_type=lc.task_type, use_rslora=lc.use_rslora,
        use_dora=lc.use_dora, init_lora_weights=lc.init_lora_weights, modules_to_save=lc.modules_to_save,
        layers_to_transform=lc.layers_to_transform)


class LoRATrainer(BaseTrainer):
    """LoRA fine-tuning: the base stays frozen, only the adapter (and ``modules_to_save``) train."""

    method = "lora"
    uses_lora = True
    _initial_adapter: Any = None  # PiSSA/OLoRA: the adapter as initialised, for the conversion on save

    def peft_config(self) -> Any:
        return peft_lora_config(self.lora_config)

    def apply_adapter(self, model: Any) -> Any:
        from peft import get_peft_model

        check_target_modules(model, self.lora_config.resolved_target_modules)
        check_modules_to_save(model, self.lora_config.modules_to_save)
        model = get_peft_model(model, self.peft_config())
        if self.lora_config.mutates_base:
            # PiSSA/OLoRA subtract their initial adapter from the base weights. To save an adapter that
            # loads onto the ORIGINAL base, PEFT needs the initial adapter (it saves A.B - A0.B0 as a
            # plain LoRA of rank 2r); keep it in a temporary folder that lives as long as the trainer.
            self._initial_adapter = tempfile.TemporaryDirectory(prefix="sage-ft-init-")
            model.save_pretrained(os.path.join(self._initial_adapter.name, "initial"), safe_serialization=True)
        return model

    def save_adapter(self, output_dir: str | os.PathLike) -> None:
        """Write the adapter; PiSSA/OLoRA adapters converted so that they apply to the original base."""
        kwargs: dict[str, Any] = {}
        if self._initial_adapter is not None:
            kwargs["path_initial_model_for_weight_conversion"] = os.path.join(self._initial_adapter.name, "initial")
        self.model.save_pretrained(str(output_dir), safe_serialization=True, **kwargs)

    def write_weights(self, output_dir: str | os.PathLike) -> None:
        self.save_adapter(output_dir)

    def merge_and_save(self, output_dir: str | os.PathLike) -> str:
        """Merge the adapter into a freshly loaded full-precision copy of the base and save it.

        The live (possibly quantized) training model is left untouched, so training or
        generation can go on after this call.
        """
        from peft import PeftModel

        self.setup()
        if not is_main_process():
            return str(output_dir)
        base = self.load_merge_base()
        with tempfile.TemporaryDirectory(prefix="sage-ft-adapter-") as adapter_dir:
            self.save_adapter(adapter_dir)
            merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        self.set_generation_stops(merged)
        with atomic_dir(output_dir) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
        return str(output_dir)

    def load_merge_base(self) -> Any:
        """The unquantized base to merge into (QLoRA overrides nothing here: this already loads it
        in the checkpoint's own precision)."""
        from transformers import AutoModelForCausalLM

        tc = self.training_config
        return AutoModelForCausalLM.from_pretrained(tc.model_name_or_path, **BaseTrainer.model_load_kwargs(self))

    def load_model(self, model_path: str | os.PathLike) -> None:
        """Load an adapter directory onto the base model (or a full model directory)."""
        path = Path(model_path)
        if not (path / "adapter_config.json").exists():
            return super().load_model(path)
        from peft import PeftModel
        from transformers import AutoTokenizer

        from ..utils.model_files import check_adapter_dir

        check_adapter_dir(path, allow_pickle_weights=self.training_config.allow_pickle_weights,
                          option="load_model")
        if (path / "tokenizer_config.json").exists():
            self.adopt_tokenizer(AutoTokenizer.from_pretrained(path), saved=True)
        else:
            self.setup_tokenizer()
        base = self.load_base_model()
        self.model = PeftModel.from_pretrained(base, path, is_trainable=True)
        self.hf_trainer = None
        self._initial_adapter = None  # a saved adapter is plain LoRA on the original base
