"""Tiny models of each family GGUF export supports, with random weights, saved with save_pretrained:
Llama (the session's tiny_model_dir: byte-level BPE, ChatML), Mistral (a SentencePiece-style BPE
with byte fallback and an [INST] template), Qwen2 and Qwen3 (Qwen's pre-tokenizer split, ChatML)."""

from __future__ import annotations

from pathlib import Path

from sage_libs.sage_finetune.utils.tiny import CHATML_TEMPLATE, _BASE_CORPUS

MISTRAL_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}"
                    "{% endif %}{% endfor %}")
TEXTS = [_BASE_CORPUS, "Hello there, how are you doing today? The answer is 42, not 1234. Ünïcödé text: naïve café.",
         "def add(a, b):\n    return a + b\n\nprint(add(1, 2))"]


def _bpe(texts, vocab_size, *, byte_fallback):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if byte_fallback:
        tok = Tokenizer(models.BPE(byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False)
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    data = __import__("json").loads(tok.to_str())["model"]
    return data["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in data["merges"]]


def spm_tokenizer(vocab_size: int = 400):
    """A Llama-2/Mistral-shaped tokenizer: <unk> <s> </s>, the 256 byte tokens, then BPE pieces."""
    from transformers import LlamaTokenizer

    learned, merges = _bpe(TEXTS, vocab_size, byte_fallback=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for token, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=merges)
    tok.chat_template = MISTRAL_TEMPLATE
    return tok


def qwen_tokenizer(vocab_size: int = 400):
    """A Qwen2-shaped tokenizer (Qwen's split pattern, byte-level BPE) with ChatML's special tokens."""
    from transformers import Qwen2Tokenizer

    vocab, merges = _bpe(TEXTS, vocab_size, byte_fallback=False)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_family(out: Path, family: str, *, seed: int = 0, tie: bool = False) -> Path:
    """Save a 2-layer ``family`` model ('mistral', 'qwen2', 'qwen3') with random weights and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config, Qwen3Config

    tok = spm_tokenizer() if family == "mistral" else qwen_tokenizer()
    cls = {"mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
    extra = {"head_dim": 128} if family == "qwen3" else {}  # transformers reads no head_dim back: 128 as in Qwen3
    config = cls(vocab_size=len(tok) + 8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                 tie_word_embeddings=tie, **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the init's: logits that differ clearly between tokens
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.1)
            if family == "qwen2" and p.ndim == 1 and p.shape[0] != 64:  # the q/k/v biases
                p.normal_(0.0, 0.1)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
