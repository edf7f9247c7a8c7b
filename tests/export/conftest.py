"""Fixtures of the GGUF export tests: one tiny model folder per family, a LoRA adapter, and the
llama.cpp-written SmolLM2 file rebuilt as a Hugging Face folder (dequantized once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


@pytest.fixture(scope="session")
def family_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    from .models import build_family

    root = tmp_path_factory.mktemp("export-families")
    dirs = {"llama": tiny_model_dir}
    for family in FAMILIES[1:]:
        dirs[family] = build_family(root / family, family, tie=family == "qwen3")  # qwen3: tied embeddings
    return dirs


@pytest.fixture(scope="session")
def lora_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny Llama with non-zero B matrices (so that merging changes the model),
    saved with its tokenizer as ``train`` saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    out = tmp_path_factory.mktemp("export-adapter") / "adapter"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2_gguf, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct dequantized by transformers' GGUF loader and rebuilt without its GGUF
    quantizer (docs: facts), saved with save_pretrained with the tokenizer the loader built."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    del loaded
    out = tmp_path_factory.mktemp("smollm2-hf")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def load_gguf(path: Path):
    """transformers' GGUF loader (an implementation we did not write): ``(model, tokenizer)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
