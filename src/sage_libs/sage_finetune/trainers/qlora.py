"""``qlora``: LoRA on a base quantized to 4 or 8 bits by bitsandbytes (Dettmers et al. 2023).

Only loading changes: the base is loaded through ``BitsAndBytesConfig`` and prepared with
``peft.prepare_model_for_kbit_training``. Merging goes into the base reloaded unquantized (see
:meth:`LoRATrainer.merge_and_save`), never into the 4-bit weights, which would round the adapter away.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from ..config import ConfigError, QuantizationConfig
from .base import coerce_config
from .lora import LoRATrainer

__all__ = ["QLoRATrainer"]


class QLoRATrainer(LoRATrainer):
    """LoRA on a quantized, frozen base.

    Args:
        quantization_config: :class:`QuantizationConfig` or a dict such as ``{"load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4"}`` or ``{"load_in_8bit": True}``; default 4-bit NF4 with
            double quantization.
    """

    method = "qlora"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.quantization_config: QuantizationConfig = coerce_config(
            QuantizationConfig, self.options.get("quantization_config"), "quantization_config") or QuantizationConfig()
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("qlora: the bitsandbytes package is not installed; "
                              "pip install isage-finetune[qlora]")

    @classmethod
    def known_options(cls) -> list[str]:
        return [*super().known_options(), "quantization_config"]

    def _use_cuda(self) -> bool:
        import torch

        return torch.cuda.is_available() and not self.training_config.use_cpu

    def compute_dtype(self) -> Any:
        """The dtype the 4-bit layers compute in (``bnb_4bit_compute_dtype``, or a default that
        suits the device: bfloat16/float16 on a GPU, float32 on the CPU)."""
        import torch

        name = self.quantization_config.bnb_4bit_compute_dtype
        if name is None:
            if self._use_cuda():
                name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            else:
                name = "float32"
        return getattr(torch, name)

    def bnb_config(self) -> Any:
        from transformers import BitsAndBytesConfig

        qc = self.quantization_config
        return BitsAndBytesConfig(
            load_in_4bit=qc.load_in_4bit, load_in_8bit=qc.load_in_8bit, bnb_4bit_compute_dtype=self.compute_dtype(),
            bnb_4bit_quant_type=qc.bnb_4bit_quant_type, bnb_4bit_use_double_quant=qc.bnb_4bit_use_double_quant)

    def model_load_kwargs(self) -> dict[str, Any]:
        kwargs = super().model_load_kwargs()
        kwargs["quantization_config"] = self.bnb_config()
        # Quantized weights cannot be moved after loading: place the whole model on this process's
        # device now (under torchrun each rank holds a full copy on its own GPU).
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))} if self._use_cuda() else "cpu"
        return kwargs

    def load_base_model(self) -> Any:
        from peft import prepare_model_for_kbit_training

        model = super().load_base_model()
        # Freezes the base and upcasts the remaining non-quantized weights (norms, embeddings) to float32
        # for stable training. Gradient checkpointing is left to the HF Trainer, as for every method
        # (training.gradient_checkpointing -> TrainingArguments).
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    def resolved_config(self) -> dict[str, Any]:
        out = super().resolved_config()
        out["quantization"] = self.quantization_config.to_dict()
        return out
