"""What llama.cpp expects of each supported architecture: its GGUF architecture name, the
hyper-parameters it reads, the tensor names (through gguf-py's own mapping) and the q/k row order.

llama.cpp computes rotary embeddings on interleaved pairs for the ``llama`` architecture, while
Hugging Face's Llama and Mistral checkpoints use the rotate-half layout: their q and k projection
rows are permuted on the way out (and transformers' GGUF loader permutes them back). Qwen2 and
Qwen3 (llama.cpp's NEOX rope) keep the Hugging Face order.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

__all__ = ["ARCHITECTURES", "supported_model_types", "gguf_arch_name", "write_hparams", "permute_qk",
           "gguf_tensors", "rope_freqs"]

# Hugging Face model_type -> (llama.cpp architecture, q/k rows permuted)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "llama": ("llama", True),
    "mistral": ("llama", True),  # llama.cpp converts Mistral's HF checkpoints as llama
    "qwen2": ("qwen2", False),
    "qwen3": ("qwen3", False),
}


def supported_model_types() -> str:
    return ", ".join(ARCHITECTURES)


def gguf_arch_name(model_type: str) -> str:
    return ARCHITECTURES[model_type][0]


def _head_dim(config: Any) -> int:
    head_dim = getattr(config, "head_dim", None)
    return int(head_dim) if head_dim else config.hidden_size // config.num_attention_heads


def _rope(config: Any) -> tuple[float, dict[str, Any]]:
    """``(rope_theta, scaling)``: transformers 5 keeps both in ``rope_parameters``, 4.x in
    ``rope_theta`` and ``rope_scaling``."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = dict(getattr(config, "rope_scaling", None) or params or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    return float(theta), (scaling if kind not in (None, "default") else {})


def write_hparams(writer: Any, config: Any, file_type: int) -> None:
    """The architecture's hyper-parameters, under llama.cpp's key names."""
    import gguf

    n_head, n_kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = _head_dim(config)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(n_head))
    writer.add_head_count_kv(int(n_kv))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    theta, scaling = _rope(config)
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(head_dim)  # transformers reads it back as llama's head_dim
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in ("linear", "yarn") and scaling.get("factor"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if kind == "linear" else gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        if kind == "yarn" and scaling.get("original_max_position_embeddings"):
            writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    writer.add_file_type(file_type)


def rope_freqs(config: Any) -> Any | None:
    """Llama 3.1's rope scaling as llama.cpp takes it: a ``rope_freqs`` tensor of per-dimension
    divisors of the frequencies (None when the model has no ``llama3`` rope scaling)."""
    import numpy as np

    theta, scaling = _rope(config)
    if scaling.get("rope_type", scaling.get("type")) != "llama3":
        return None
    dim = _head_dim(config)
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    divisors = []
    for freq in 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            divisors.append(1.0)
        elif wavelen > low_wavelen:
            divisors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            divisors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(divisors, dtype=np.float32)


def permute_qk(weights: Any, n_head: int) -> Any:
    """Hugging Face's rotate-half row order -> llama.cpp's interleaved pairs, per head (a weight
    matrix or a bias vector)."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_tensors(model_type: str, config: Any, state: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...], Any]]:
    """``(gguf_name, shape, load)`` for every tensor to write, in the state dict's order; ``load()``
    gives the float32 array (one tensor in memory at a time). Names come from
    ``gguf.get_tensor_name_map``; q/k rows are permuted where llama.cpp wants it; the output matrix
    is left out when the embeddings are tied. A tensor without a llama.cpp name raises a ValueError."""
    import gguf

    arch_name, permute = ARCHITECTURES[model_type]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    names = gguf.get_tensor_name_map(arch, int(config.num_hidden_layers))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"tensor {hf_name!r} has no llama.cpp name for the {arch_name} architecture")
        heads = None
        if permute and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            heads = n_head
        elif permute and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            heads = n_kv
        yield name, tuple(tensor.shape), _loader(tensor, heads)
    freqs = rope_freqs(config)
    if freqs is not None:
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", tuple(freqs.shape), lambda: freqs


def _loader(tensor: Any, heads: int | None) -> Any:
    def load() -> Any:
        data = tensor.detach().float().cpu().numpy()
        return permute_qk(data, heads) if heads else data

    return load
