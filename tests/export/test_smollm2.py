"""SmolLM2-135M-Instruct as llama.cpp wrote it (Q4_1), dequantized by transformers and exported
again as q4_1: every tensor byte-identical to llama.cpp's (names, types, shapes, bytes), and the
metadata that matters equal. The SmolLM2 fixtures load the model once per session (~20 s)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

ESSENTIAL_KEYS = ("general.architecture", "llama.context_length", "llama.embedding_length", "llama.block_count",
                  "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                  "llama.rope.freq_base", "llama.rope.dimension_count", "llama.attention.layer_norm_rms_epsilon",
                  "llama.vocab_size", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
                  "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
                  "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
                  "tokenizer.chat_template")


def test_q4_1_re_export_is_byte_identical_to_llama_cpp(smollm2_gguf, smollm2_hf_dir, tmp_path):
    import gguf

    from sage_libs.sage_finetune.export import export_gguf

    ours = gguf.GGUFReader(export_gguf(smollm2_hf_dir, tmp_path / "smollm2.gguf", "q4_1"))
    theirs = gguf.GGUFReader(smollm2_gguf)
    mine = {t.name: t for t in ours.tensors}
    ref = {t.name: t for t in theirs.tensors}
    assert sorted(mine) == sorted(ref) and len(ref) == 272
    for name, t in ref.items():
        m = mine[name]
        assert (m.tensor_type, list(m.shape)) == (t.tensor_type, list(t.shape)), name
        assert m.data.tobytes() == t.data.tobytes(), name
    for key in ESSENTIAL_KEYS:
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
    # transformers' rebuilt tokenizer no longer splits digits apart, so the pre-tokenizer is GPT-2's
    assert theirs.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert ours.fields["tokenizer.ggml.pre"].contents() == "gpt-2"


def test_smollm2_modelfile(smollm2_hf_dir, tmp_path):
    from sage_libs.sage_finetune.export import export_gguf

    export_gguf(smollm2_hf_dir, tmp_path / "smol.gguf", "q8_0")
    text = (tmp_path / "Modelfile").read_text()
    assert "FROM ./smol.gguf\n" in text and "<|im_start|>{{ .Role }}" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER num_ctx 8192" in text
