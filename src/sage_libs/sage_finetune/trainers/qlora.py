"""``qlora``: LoRA on a base quantized to 4 or 8 bits by bitsandbytes (Dettmers et al. 2023).

Only loading changes: the base is loaded through ``BitsAndBytesConfig`` and prepared with
``peft.prepare_model_for_kbit_training``. Merging goes into the base reloaded unquantized (see
:meth:`LoRATrainer.merge_and_save`), never into the 4-bit weights, which would round the adapter away.

CPUs with AVX-512 BF16 (recent Xeons, AMD Zen 4/5): bitsandbytes (>= 0.49) repacks a 4-bit weight
in place into a CPU-only layout on the first no-grad forward in eval mode (an evaluation, a
``generate``). Its kernel for that layout has no backward, so every training step after the first
evaluation would compute wrong gradients, silently. A model this trainer owns therefore never
repacks (:func:`keep_4bit_layout_trainable`), and a guard checks before every optimizer step that
no layer was repacked anyway (:class:`RepackedWeightGuard`). The packed layout also stores the
block scales in bfloat16, so evaluating through it would not measure the weights being trained.
8-bit layers (``load_in_8bit``) have no CPU-specific layout in bitsandbytes 0.50 and need nothing.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..config import QuantizationConfig
from ..errors import ConfigError, TrainingError
from ..utils.processes import local_rank
from .lora import LoRATrainer

__all__ = ["QLoRATrainer", "keep_4bit_layout_trainable", "repacked_4bit_layers"]

# bitsandbytes' per-layer switch for the CPU repacking (set from the CPU's features at construction)
_REPACK_SWITCH = "support_avx512bf16_for_cpu"


def keep_4bit_layout_trainable(model: Any) -> int:
    """Turn off bitsandbytes' in-place CPU repacking on every 4-bit layer of ``model``; returns the
    number of layers switched off (0 on a CPU or bitsandbytes without the packed path)."""
    n = 0
    for module in model.modules():
        if getattr(module, _REPACK_SWITCH, False):
            setattr(module, _REPACK_SWITCH, False)
            n += 1
    return n


def repacked_4bit_layers(model: Any) -> list[str]:
    """Names of the layers whose 4-bit weight is in bitsandbytes' CPU inference layout."""
    return [name for name, module in model.named_modules()
            if not hasattr(module, "base_layer")  # a PEFT wrapper shows its base layer's weight
            and getattr(getattr(getattr(module, "weight", None), "quant_state", None), "packing_format_for_cpu", False)]


def _repacked_error(layers: list[str]) -> TrainingError:
    return TrainingError(
        f"qlora: {len(layers)} 4-bit layer(s) (first: {layers[0]}) were repacked by bitsandbytes into its CPU "
        "inference layout, which has no backward kernel: training on would compute wrong gradients. This "
        "bitsandbytes version repacks in a way isage-finetune does not know how to prevent; please report "
        "the bitsandbytes version, and train on a GPU or with another bitsandbytes version meanwhile")


def _repacked_weight_guard() -> Any:
    from transformers import TrainerCallback

    class RepackedWeightGuard(TrainerCallback):
        """Stops before an optimizer step would train through a repacked 4-bit weight."""

        def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            layers = repacked_4bit_layers(model) if model is not None else []
            if layers:
                raise _repacked_error(layers)

    return RepackedWeightGuard()


class QLoRATrainer(LoRATrainer):
    """LoRA on a quantized, frozen base.

    Args:
        quantization_config: :class:`QuantizationConfig` or a dict such as ``{"load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4"}`` or ``{"load_in_8bit": True}``; default 4-bit NF4 with
            double quantization.
    """

    method = "qlora"

    extra_section = "quantization"
    quantization_config: QuantizationConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("qlora: the bitsandbytes package is not installed; "
                              "pip install bitsandbytes (the [qlora] extra: pip install -e '.[qlora]' in a checkout)")

    def _use_cuda(self) -> bool:
        from ..utils.processes import run_device

        return run_device(self.training_config) == "cuda"

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
        kwargs["device_map"] = {"": local_rank()} if self._use_cuda() else "cpu"
        return kwargs

    def load_base_model(self) -> Any:
        from peft import prepare_model_for_kbit_training

        model = super().load_base_model()
        keep_4bit_layout_trainable(model)  # see the module docstring: never train through a repacked weight
        # Freezes the base and upcasts the remaining non-quantized weights (norms, embeddings) to float32
        # for stable training. Gradient checkpointing is left to the HF Trainer, as for every method
        # (training.gradient_checkpointing -> TrainingArguments).
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    def _hf_callbacks(self, step_losses: Any) -> list[Any]:
        return [*super()._hf_callbacks(step_losses), _repacked_weight_guard()]
