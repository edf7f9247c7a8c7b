"""GGUF export checked by transformers' GGUF loader: logits, tokenizer, chat template, tied
embeddings, an adapter (export of an adapter == merge, then export), per family and type.

Measured on the tiny models (max |logit difference| / max |logit|, 2-layer random models):
f32 0 exactly; f16 <= 1.1e-3; bf16 <= 8.4e-3; q8_0 <= 2.5e-2; q4_0/q4_1 up to ~0.6, q5_0 ~0.2 (random
weights of std 0.1 are hard to quantize). The bounds asserted below leave a margin."""

from __future__ import annotations

import pytest

from .conftest import FAMILIES, load_gguf

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

# relative bounds (max abs diff / max abs logit); f32 must be exact
# (4/5-bit types on random 2-layer models: only a sanity bound, the files load and stay close)
BOUNDS = {"f32": 0.0, "f16": 5e-3, "bf16": 3e-2, "q8_0": 6e-2, "q4_0": 1.0, "q4_1": 1.0, "q5_0": 0.5}
TEXTS = ["Hello there, how are you doing today? The answer is 12345.", "naïve café: Ünïcödé 42\n\n  indented",
         "<|im_start|>user\nhi<|im_end|>", "def f(x):\n    return x * 2"]


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("qtype", list(BOUNDS))
def test_logits_round_trip(family, qtype, family_dirs, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sage_libs.sage_finetune.export import export_gguf

    src = family_dirs[family]
    out = export_gguf(src, tmp_path / f"{family}.gguf", qtype)
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(src)(TEXTS[0])["input_ids"]
    model, _ = load_gguf(out)
    a, b = _logits(ref, ids), _logits(model, ids)
    rel = ((a - b).abs().max() / a.abs().max()).item()
    print(f"{family} {qtype}: max abs diff {(a - b).abs().max().item():.3g}, relative {rel:.3g}")
    if qtype == "f32":
        assert torch.equal(a, b)
    else:
        assert rel <= BOUNDS[qtype]


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_and_chat_template_round_trip(family, family_dirs, tmp_path):
    from transformers import AutoTokenizer

    from sage_libs.sage_finetune.export import export_gguf

    src = family_dirs[family]
    out = export_gguf(src, tmp_path / "m.gguf", "f32", modelfile=False)
    ref = AutoTokenizer.from_pretrained(src)
    _, tok = load_gguf(out)
    for text in TEXTS:
        assert tok(text)["input_ids"] == ref(text)["input_ids"], text
    assert tok.chat_template == ref.chat_template
    messages = [{"role": "user", "content": "Name 3 colours."}, {"role": "assistant", "content": "Red, green, blue."}]
    assert tok.apply_chat_template(messages, tokenize=False) == ref.apply_chat_template(messages, tokenize=False)
    assert (tok.bos_token_id, tok.eos_token_id) == (ref.bos_token_id, ref.eos_token_id)
    assert not (tmp_path / "Modelfile").exists()


def test_file_layout_tied_embeddings_and_types(family_dirs, tmp_path):
    import gguf

    from sage_libs.sage_finetune.export import export_gguf

    tied = gguf.GGUFReader(export_gguf(family_dirs["qwen3"], tmp_path / "q3.gguf", "q4_0"))
    types = {t.name: t.tensor_type.name for t in tied.tensors}
    assert "output.weight" not in types and types["token_embd.weight"] == "Q8_0"  # tied: the output's type
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["blk.0.attn_q_norm.weight"] == "F32"
    assert tied.fields["general.architecture"].contents() == "qwen3"
    assert tied.fields["qwen3.attention.key_length"].contents() == 128
    untied = gguf.GGUFReader(export_gguf(family_dirs["llama"], tmp_path / "l.gguf", "f16"))
    types = {t.name: t.tensor_type.name for t in untied.tensors}
    assert types["output.weight"] == "F16" and types["output_norm.weight"] == "F32"
    assert untied.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_F16)
    assert untied.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    mistral = gguf.GGUFReader(export_gguf(family_dirs["mistral"], tmp_path / "m.gguf", "f16"))
    assert mistral.fields["general.architecture"].contents() == "llama"
    assert mistral.fields["tokenizer.ggml.model"].contents() == "llama"
    qwen2 = gguf.GGUFReader(export_gguf(family_dirs["qwen2"], tmp_path / "q2.gguf", "f16"))
    assert qwen2.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert qwen2.fields["tokenizer.ggml.tokens"].contents()[-1].startswith("[PAD")  # vocab padded past the tokenizer


def test_adapter_export_is_merge_then_export(lora_adapter, tmp_path):
    """An adapter folder exports to the same tensors as ``sage-finetune merge`` then export."""
    import gguf

    from sage_libs.sage_finetune.cli import main
    from sage_libs.sage_finetune.export import export_gguf

    direct = gguf.GGUFReader(export_gguf(lora_adapter, tmp_path / "a.gguf", "f32"))
    assert main(["merge", "--adapter", str(lora_adapter), "--output", str(tmp_path / "merged")]) == 0
    via_merge = gguf.GGUFReader(export_gguf(tmp_path / "merged", tmp_path / "m.gguf", "f32"))
    a = {t.name: t.data.tobytes() for t in direct.tensors}
    b = {t.name: t.data.tobytes() for t in via_merge.tensors}
    assert a == b
    base = gguf.GGUFReader(export_gguf(_base_of(lora_adapter), tmp_path / "b.gguf", "f32"))
    assert {t.name: t.data.tobytes() for t in base.tensors}["blk.0.attn_q.weight"] != a["blk.0.attn_q.weight"]


def _base_of(adapter):
    import json

    return json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_rope_scaling_metadata(tiny_model_dir, tmp_path):
    """Linear / YaRN scaling as metadata keys, Llama 3.1's as a rope_freqs tensor (transformers'
    loader ignores both on reload; llama.cpp honours them)."""
    import json
    import shutil

    import gguf

    from sage_libs.sage_finetune.export import export_gguf

    for kind, extra in (("linear", {"factor": 2.0}),
                        ("llama3", {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 256})):
        src = tmp_path / kind
        shutil.copytree(tiny_model_dir, src)
        config = json.loads((src / "config.json").read_text())
        config["rope_scaling"] = config["rope_parameters"] = {"rope_type": kind, "rope_theta": 10000.0, **extra}
        (src / "config.json").write_text(json.dumps(config))
        reader = gguf.GGUFReader(export_gguf(src, tmp_path / f"{kind}.gguf", "f32"))
        names = {t.name: t for t in reader.tensors}
        if kind == "linear":
            assert reader.fields["llama.rope.scaling.type"].contents() == "linear"
            assert reader.fields["llama.rope.scaling.factor"].contents() == 2.0
        else:
            freqs = names["rope_freqs.weight"].data
            assert freqs.shape == (8,) and freqs[0] == 1.0 and freqs[-1] == 8.0
