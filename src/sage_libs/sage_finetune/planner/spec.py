"""What a model is made of, read from its ``config.json`` alone (no weights, no torch).

:class:`ModelSpec` holds the shapes a memory and time plan needs: hidden size, layers, attention
heads and key/value heads, MLP width, vocabulary, tied head, biases and the checkpoint dtype.
From them it derives the parameter count of every part and the linear layers LoRA can adapt
(name, in features, out features), which is exactly what ``target_modules`` matches.

Dense decoder-only transformers are covered: Llama, Mistral, Qwen2/2.5/3, Gemma, Phi-3 (fused
``qkv_proj`` / ``gate_up_proj``), GPT-2/NeoX-style non-gated MLPs. Mixture-of-experts configs are
read as their dense equivalent per token (the experts' weights all count towards memory, a token
pays for ``num_experts_per_tok`` of them) and flagged in :attr:`ModelSpec.notes`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModelSpec", "Linear", "DTYPE_BYTES", "read_model_config", "dtype_bytes"]

DTYPE_BYTES = {"float32": 4, "float": 4, "fp32": 4, "float16": 2, "half": 2, "fp16": 2, "bfloat16": 2,
               "bf16": 2, "float64": 8, "int8": 1, "uint8": 1, "float8_e4m3fn": 1}


def dtype_bytes(name: str | None, default: int = 4) -> int:
    if not name:
        return default
    return DTYPE_BYTES.get(str(name).removeprefix("torch."), default)


# model_type -> non-gated MLP (fc1 -> act -> fc2) and names of its linear layers
_NON_GATED = {"gpt2", "gpt_neox", "gptj", "opt", "falcon", "bloom", "phi", "starcoder2", "gpt_bigcode"}
_FUSED_QKV = {"phi3"}


@dataclass(frozen=True)
class Linear:
    """One linear layer of a decoder layer (``name`` as ``target_modules`` matches it)."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False
    kind: str = "attn"  # "attn_in" (reads the normed input), "attn_out", "mlp_in", "mlp_out"

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass
class ModelSpec:
    """The shapes of a decoder-only causal LM (see the module docstring)."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    gated_mlp: bool = True
    qk_norm: bool = False
    dtype: str = "float32"
    num_experts: int = 0
    experts_per_token: int = 0
    max_position_embeddings: int | None = None
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ModelSpec":
        """From a ``config.json`` mapping (a multimodal config's ``text_config`` is used)."""
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        get = text.get
        model_type = str(get("model_type") or config.get("model_type") or "llama")
        hidden = int(get("hidden_size") or get("n_embd") or get("d_model"))
        layers = int(get("num_hidden_layers") or get("n_layer") or get("num_layers"))
        heads = int(get("num_attention_heads") or get("n_head"))
        kv = int(get("num_key_value_heads") or get("num_kv_heads") or (1 if get("multi_query") else heads))
        head_dim = int(get("head_dim") or hidden // heads)
        inter = get("intermediate_size") or get("n_inner") or get("ffn_dim") or 4 * hidden
        experts = int(get("num_local_experts") or get("num_experts") or get("n_routed_experts") or 0)
        notes = []
        if experts:
            inter = get("moe_intermediate_size") or inter
            notes.append(f"mixture of experts ({experts} experts, {get('num_experts_per_tok', 2)} per token): "
                         "read as dense layers; memory counts every expert, time the routed ones")
        tie = get("tie_word_embeddings", config.get("tie_word_embeddings"))
        if tie is None:  # transformers' PretrainedConfig default
            tie = model_type in ("gpt2", "gemma", "gemma2", "gemma3_text", "opt", "bloom", "gpt_bigcode")
        dtype = config.get("dtype") or config.get("torch_dtype") or get("dtype") or get("torch_dtype") or "float32"
        return cls(model_type=model_type, hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv,
                   head_dim=head_dim, intermediate_size=int(inter), vocab_size=int(get("vocab_size")),
                   tie_word_embeddings=bool(tie),
                   attention_bias=bool(get("attention_bias", model_type in ("qwen2", "qwen2_moe")) or get("qkv_bias")),
                   mlp_bias=bool(get("mlp_bias", model_type in _NON_GATED)),
                   gated_mlp=model_type not in _NON_GATED, qk_norm=model_type in ("qwen3", "qwen3_moe", "olmo2"),
                   dtype=str(dtype).removeprefix("torch."), num_experts=experts,
                   experts_per_token=int(get("num_experts_per_tok") or (2 if experts else 0)),
                   max_position_embeddings=get("max_position_embeddings"), notes=notes)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> "ModelSpec":
        return cls.from_config(read_model_config(name_or_path))

    # ------------------------------------------------------------------------------------------
    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linears(self) -> list[Linear]:
        """The linear layers of one decoder layer (an MoE layer's experts counted once each)."""
        h, i = self.hidden_size, self.intermediate_size
        bias = self.attention_bias
        if self.model_type in _FUSED_QKV:
            attn = [Linear("qkv_proj", h, self.q_width + 2 * self.kv_width, bias, "attn_in")]
        else:
            attn = [Linear("q_proj", h, self.q_width, bias, "attn_in"), Linear("k_proj", h, self.kv_width, bias, "attn_in"),
                    Linear("v_proj", h, self.kv_width, bias, "attn_in")]
        attn.append(Linear("o_proj", self.q_width, h, False, "attn_out"))
        experts = max(self.num_experts, 1)
        if not self.gated_mlp:
            mlp = [Linear("fc1", h, i, self.mlp_bias, "mlp_in"), Linear("fc2", i, h, self.mlp_bias, "mlp_out")]
        elif self.model_type in _FUSED_QKV:
            mlp = [Linear("gate_up_proj", h, 2 * i, self.mlp_bias, "mlp_in"), Linear("down_proj", i, h, self.mlp_bias, "mlp_out")]
        else:
            mlp = [Linear("gate_proj", h, i, self.mlp_bias, "mlp_in"), Linear("up_proj", h, i, self.mlp_bias, "mlp_in"),
                   Linear("down_proj", i, h, self.mlp_bias, "mlp_out")]
        return attn + [m for _ in range(experts) for m in mlp]

    def norm_params_per_layer(self) -> int:
        return 2 * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0) + (
            2 * self.hidden_size if not self.gated_mlp else 0)  # LayerNorm biases

    def router_params_per_layer(self) -> int:
        return self.hidden_size * self.num_experts if self.num_experts else 0

    def layer_params(self) -> int:
        return sum(m.params for m in self.linears()) + self.norm_params_per_layer() + self.router_params_per_layer()

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """The LM head's own parameters (0 when tied to the input embeddings)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def final_norm_params(self) -> int:
        return self.hidden_size * (1 if self.gated_mlp else 2)

    @property
    def total_params(self) -> int:
        return self.embedding_params + self.num_layers * self.layer_params() + self.final_norm_params + self.head_params

    def matmul_params_per_token(self) -> int:
        """Weights of the decoder layers' linear layers one token goes through (routed experts only)."""
        per_layer = 0
        experts_seen = 0
        for m in self.linears():
            if m.kind in ("mlp_in", "mlp_out") and self.num_experts:
                experts_seen += 1
                continue
            per_layer += m.in_features * m.out_features
        if self.num_experts:
            mlp = [m for m in self.linears() if m.kind in ("mlp_in", "mlp_out")][: experts_seen // self.num_experts]
            per_layer += self.experts_per_token * sum(m.in_features * m.out_features for m in mlp)
        return self.num_layers * per_layer


def read_model_config(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a local model directory, or of a hub model already in the local HF cache
    (nothing is downloaded). Raises FileNotFoundError when neither exists."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    if path.is_file() and path.name.endswith(".json"):
        return json.loads(path.read_text(encoding="utf-8"))
    try:  # a hub id: only what is cached already
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), "config.json")
        if isinstance(cached, str) and os.path.isfile(cached):
            return json.loads(Path(cached).read_text(encoding="utf-8"))
    except ImportError:
        pass
    raise FileNotFoundError(f"{name_or_path}: no config.json (a local model directory, or a hub model in the local "
                            "cache, is needed to plan without downloading)")


def weights_file_bytes(name_or_path: str | os.PathLike) -> int | None:
    """Total size of a local model's safetensors files (None when not local)."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return None
    total = sum(f.stat().st_size for f in path.iterdir() if f.name.endswith(".safetensors"))
    return total or None
