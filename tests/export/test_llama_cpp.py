"""Opt-in tier: llama.cpp itself (llama-cpp-python) runs the exported files, and its greedy
generation equals transformers' on a few prompts. Run with ``scripts/llama_cpp_tier.sh`` (it builds
llama-cpp-python from source into .venv-llamacpp, ~30 min on 2 cores) or ``pytest --run-slow`` in an
environment where ``llama_cpp`` imports."""

from __future__ import annotations

import importlib.util

import pytest

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_per_module"),
              pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed here; "
                                 "scripts/llama_cpp_tier.sh builds it and runs this tier")]

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers."]
NEW_TOKENS = 16


def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed here; "
                                                   "scripts/llama_cpp_tier.sh builds it and runs this tier")


def _hf_greedy(model, ids):
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0, len(ids):].tolist()


def _cpp_greedy(llm, ids, eos):
    got = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        got.append(int(token))
        if len(got) == NEW_TOKENS or token in eos:
            break
    return got


@pytest.mark.parametrize("qtype", ["f32", "f16"])
def test_smollm2_greedy_generation_matches_transformers(qtype, smollm2_hf_dir, tmp_path):
    llama_cpp = _llama_cpp()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sage_libs.sage_finetune.export import export_gguf

    out = export_gguf(smollm2_hf_dir, tmp_path / f"smol-{qtype}.gguf", qtype)
    tok = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32).eval()
    if qtype == "f16":  # the same weights llama.cpp computes with
        model = model.half().float()
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=512, n_threads=2, verbose=False)
    eos = {tok.eos_token_id}
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5: a BatchEncoding
        assert llm.tokenize(tok.decode(ids).encode(), add_bos=False, special=True) == ids
        hf = [t for t in _hf_greedy(model, ids)]
        hf = hf[:hf.index(tok.eos_token_id) + 1] if tok.eos_token_id in hf else hf
        assert _cpp_greedy(llm, ids, eos) == hf, prompt


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_tiny_families_greedy_generation_matches_transformers(family, family_dirs, tmp_path):
    llama_cpp = _llama_cpp()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sage_libs.sage_finetune.export import export_gguf

    out = export_gguf(family_dirs[family], tmp_path / f"{family}.gguf", "f32")
    tok = AutoTokenizer.from_pretrained(family_dirs[family])
    model = AutoModelForCausalLM.from_pretrained(family_dirs[family], dtype=torch.float32).eval()
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=2, verbose=False)
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        assert _cpp_greedy(llm, ids, set()) == _hf_greedy(model, ids)[:NEW_TOKENS], prompt
