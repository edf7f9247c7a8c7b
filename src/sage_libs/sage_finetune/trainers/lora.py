"""``lora``: low-rank adapters through PEFT on a frozen base model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..utils.io import atomic_dir
from ..utils.processes import is_main_process
from .base import BaseTrainer
from ..models.loading import load_causal_lm

__all__ = ["LoRATrainer"]


class LoRATrainer(BaseTrainer):
    """LoRA fine-tuning: the base stays frozen, only the adapter (and ``modules_to_save``) train."""

    method = "lora"
    uses_lora = True
    _initial_adapter: Any = None  # PiSSA/OLoRA: the adapter as initialised, for the conversion on save

    @property
    def frozen_base(self) -> bool:
        # modules_to_save train full copies of their modules, and lora.bias trains the base's
        # biases: those keep the checkpoint's precision
        return not self.lora_config.modules_to_save and self.lora_config.bias == "none"

    def apply_adapter(self, model: Any) -> Any:
        from ..methods.lora import apply_lora

        model, self._initial_adapter = apply_lora(model, self.lora_config)
        return model

    def save_adapter(self, output_dir: str | os.PathLike) -> None:
        """Write the adapter; PiSSA/OLoRA adapters converted so that they apply to the original base."""
        from ..methods.lora import save_lora_adapter

        save_lora_adapter(self.model, output_dir, self._initial_adapter)

    def write_weights(self, output_dir: str | os.PathLike) -> None:
        self.save_adapter(output_dir)

    def merge_and_save(self, output_dir: str | os.PathLike) -> str:
        """Merge the adapter into a freshly loaded full-precision copy of the base and save it.

        The live (possibly quantized) training model is left untouched, so training or
        generation can go on after this call.
        """
        from ..utils.noise import known_noise_dropped

        with known_noise_dropped():  # called from Python as well as from a run
            return self._merge_and_save(output_dir)

    def _merge_and_save(self, output_dir: str | os.PathLike) -> str:
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
        from ..models.loading import model_load_kwargs

        tc = self.training_config
        return load_causal_lm(tc.model_name_or_path, model_load_kwargs(tc), allow_pickle_weights=tc.allow_pickle_weights,
                              training=False)

    def load_model(self, model_path: str | os.PathLike) -> None:
        """Load an adapter directory onto the base model (or a full model directory)."""
        path = Path(model_path)
        if not (path / "adapter_config.json").exists():
            return super().load_model(path)
        from peft import PeftModel
        from transformers import AutoTokenizer

        from ..models.files import check_adapter_dir

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
