"""Write a small Hugging Face Llama folder as a GGUF file, as llama.cpp's converter would (test helper).

Only what the tests need: Llama, F32/F16 tensors, a byte-level BPE (``gpt2``) vocabulary with its
merges, special token ids and the chat template. Linear weights are F16 unless ``f32``; 1-D tensors
(norms) stay F32, as llama.cpp keeps them. ``arch`` overrides ``general.architecture`` (to write a
file of an architecture transformers cannot load)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Hugging Face names -> GGUF names of a Llama (``{i}``: the layer)
_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (rotary halves interleaved), as ``convert_hf_to_gguf.py`` writes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf: str) -> str:
    parts = hf.split(".")
    if hf.startswith("model.layers."):
        i = parts[2]
        key = ".".join(parts[:2] + ["{i}"] + parts[3:])
        return _NAMES[key].replace("{i}", i)
    return _NAMES[hf]


def write_llama_gguf(model_dir: str | Path, out: str | Path, *, f32: bool = False, arch: str = "llama",
                     name: str = "tiny llama") -> Path:
    import gguf
    from safetensors.numpy import load_file

    model_dir, out = Path(model_dir), Path(out)
    config = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    template_file = model_dir / "chat_template.jinja"
    template = template_file.read_text() if template_file.exists() else tok_config.get("chat_template")
    state = load_file(str(model_dir / "model.safetensors"))
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    hidden = config["hidden_size"]

    writer = gguf.GGUFWriter(out, arch)
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(hidden // n_head)
    writer.add_rope_freq_base(float(config.get("rope_theta") or config.get("rope_parameters", {}).get("rope_theta",
                                                                                                     10000.0)))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if f32 else gguf.LlamaFileType.MOSTLY_F16)

    # vocabulary: every id in order, the added (special) tokens marked CONTROL
    vocab = dict(tok["model"]["vocab"])
    special = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    vocab.update(special)
    by_id = {i: t for t, i in vocab.items()}
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids = {k: config.get(f"{k}_token_id") for k in ("bos", "eos", "pad")}
    writer.add_bos_token_id(ids["bos"])
    writer.add_eos_token_id(ids["eos"])
    if ids["pad"] is not None:
        writer.add_pad_token_id(ids["pad"])
    writer.add_add_bos_token(False)
    if template:
        writer.add_chat_template(template)

    tied = config.get("tie_word_embeddings", False)
    for hf_name, tensor in state.items():
        if tied and hf_name == "lm_head.weight":
            continue
        data = tensor.astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        if data.ndim > 1 and not f32:
            data = data.astype(np.float16)
        writer.add_tensor(_gguf_name(hf_name), data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
