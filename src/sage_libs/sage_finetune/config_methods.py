"""The methods' own configuration sections (``quantization:`` for qlora, ``lora_plus:``,
``freeze:``, ``agent:``, ``preference:``): dataclasses like those of :mod:`.config`, which lists
them in its ``SECTIONS`` table. Standard library only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .config_fields import _Config, _opt
from .errors import ConfigError

__all__ = ["QuantizationConfig", "LoRAPlusConfig", "FreezeConfig", "AgentConfig", "PreferenceConfig"]


@dataclass
class QuantizationConfig(_Config):
    """bitsandbytes quantization of the frozen base for ``qlora`` (mapped onto
    ``transformers.BitsAndBytesConfig``). The default is the QLoRA paper's: 4-bit NF4 with double
    quantization."""

    load_in_4bit: Union[bool, None] = _opt(None, "Quantize the base to 4 bits; null: true unless load_in_8bit is true.")
    load_in_8bit: bool = _opt(False, "Quantize the base to 8 bits (LLM.int8) instead of 4.")
    bnb_4bit_compute_dtype: Union[str, None] = _opt(
        None, "dtype the 4-bit layers compute in; null: bfloat16 on a GPU that supports it, float16 on an older "
              "GPU, float32 on the CPU.", choices=("float16", "bfloat16", "float32"))
    bnb_4bit_quant_type: str = _opt("nf4", "4-bit data type: nf4 (NormalFloat, suits normally distributed weights) "
                                           "or fp4.", choices=("nf4", "fp4"))
    bnb_4bit_use_double_quant: bool = _opt(True, "Also quantize the quantization constants (~0.4 bit per weight less).")

    def __post_init__(self) -> None:
        dtype = self.bnb_4bit_compute_dtype
        if dtype is not None and type(dtype).__name__ == "dtype":  # torch.bfloat16 -> "bfloat16"
            self.bnb_4bit_compute_dtype = str(dtype).removeprefix("torch.")
        super().__post_init__()

    def _validate(self) -> None:
        if self.load_in_4bit is None:
            self.load_in_4bit = not self.load_in_8bit
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("QuantizationConfig: load_in_4bit and load_in_8bit are both true; choose one")
        if not (self.load_in_4bit or self.load_in_8bit):
            raise ConfigError("QuantizationConfig: load_in_4bit and load_in_8bit are both false; qlora needs one "
                              "of them (method lora trains on an unquantized base)")


@dataclass
class LoRAPlusConfig(_Config):
    """LoRA+ (Hayou et al. 2024): the B matrices learn ``lora_lr_ratio`` times faster than the A
    matrices, which use ``training.learning_rate``."""

    lora_lr_ratio: float = _opt(16.0, "Learning rate of the lora_B matrices divided by that of lora_A "
                                      "(the paper suggests 16; lower training.learning_rate a little).", ge=1)
    lora_lr_embedding: Union[float, None] = _opt(
        None, "Learning rate of LoRA matrices on embedding layers; null: 1e-6, as in the LoRA+ reference code.", gt=0)


@dataclass
class FreezeConfig(_Config):
    """Freeze tuning: train only the last decoder layers of the model in full, the rest stays frozen."""

    trainable_layers: int = _opt(2, "Train every parameter of the last N decoder layers.", ge=1)
    train_embeddings: bool = _opt(False, "Also train the input embeddings.")
    train_lm_head: bool = _opt(False, "Also train the output head (lm_head); with tied embeddings this is "
                                      "the same matrix as the input embeddings.")


@dataclass
class AgentConfig(_Config):
    """Agent SFT (``method: agent``): which fine-tuning method runs underneath, and the
    next-action evaluation on held-out trajectories."""

    method: str = _opt("lora", "The fine-tuning method underneath: lora, qlora, dora, lora_plus, full, freeze.")
    eval_max_new_tokens: int = _opt(96, "Tokens generated per step when evaluating the next action.", ge=1)
    eval_max_trajectories: Union[int, None] = _opt(None, "Evaluate at most this many held-out trajectories "
                                                         "(null: all).", ge=1)


@dataclass
class PreferenceConfig(_Config):
    """Preference optimization (``method: dpo``): DPO and its variants on (prompt, chosen, rejected)
    pairs, with any fine-tuning method underneath."""

    method: str = _opt("lora", "The fine-tuning method underneath: lora, qlora, dora, lora_plus, full, freeze. Adapter "
                               "methods use the base model (adapter disabled) as the reference; full and freeze a "
                               "frozen copy, unless precompute_ref_log_probs is true.")
    loss_type: str = _opt("sigmoid", "sigmoid: DPO (with label_smoothing > 0: conservative DPO); ipo: IPO "
                                     "(length-averaged log-ratios); orpo: ORPO and simpo: SimPO (both without a "
                                     "reference model); kto: KTO on unpaired records (prompt, completion, label).",
                          choices=("sigmoid", "ipo", "orpo", "simpo", "kto"))
    beta: float = _opt(0.1, "DPO's beta (how far the policy may move from the reference); IPO's tau; ORPO's lambda "
                            "(weight of the odds-ratio term); SimPO's beta (reward scale, the paper uses 2 to 2.5).",
                       gt=0)
    label_smoothing: float = _opt(0.0, "sigmoid loss only: the assumed probability that a preference label is "
                                       "flipped (conservative DPO); 0: plain DPO.", ge=0, lt=0.5)
    simpo_gamma: float = _opt(0.5, "simpo loss only: the target reward margin gamma.", ge=0)
    desirable_weight: float = _opt(1.0, "kto loss only: the weight of the desirable (label: true) examples' losses. "
                                        "With unbalanced data, KTO suggests desirable_weight * n_desirable / "
                                        "(undesirable_weight * n_undesirable) between 1 and 4/3.", gt=0)
    undesirable_weight: float = _opt(1.0, "kto loss only: the weight of the undesirable (label: false) examples' "
                                          "losses.", gt=0)
    precompute_ref_log_probs: bool = _opt(False, "Compute the reference log-probabilities of every pair once before "
                                                 "training (no reference forward per step, no frozen copy for full "
                                                 "fine-tuning).")
    disable_dropout: bool = _opt(True, "Turn dropout off in the model (incl. LoRA dropout), so the policy and the "
                                       "reference see the same network.")

    def _validate(self) -> None:
        if self.method in ("dpo", "agent"):
            raise ConfigError(f"preference.method: must be a fine-tuning method such as lora, qlora, dora or full, "
                              f"not {self.method!r}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ConfigError(f"preference.label_smoothing applies to loss_type sigmoid only, not {self.loss_type!r}")
        if (self.desirable_weight, self.undesirable_weight) != (1.0, 1.0) and self.loss_type != "kto":
            raise ConfigError(f"preference.desirable_weight / undesirable_weight apply to loss_type kto only, not "
                              f"{self.loss_type!r}")
        if self.loss_type == "kto" and self.precompute_ref_log_probs:
            raise ConfigError("preference.precompute_ref_log_probs: not with loss_type kto; its KL estimate scores "
                              "prompts with other records' completions of the same batch, known only per batch")
