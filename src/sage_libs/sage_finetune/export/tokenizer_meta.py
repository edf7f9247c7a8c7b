"""The tokenizer as GGUF metadata: the vocabulary with token types (and scores), the merges, the
pre-tokenizer name, the special token ids, add-bos/add-eos and the chat template.

Two shapes of ``tokenizer.json`` are written: byte-level BPE (GPT-2 style: Llama 3, Qwen, SmolLM;
``tokenizer.ggml.model = gpt2``) and BPE with byte fallback over ``▁``-spelled pieces (the
SentencePiece shape of Llama 2 and Mistral; ``tokenizer.ggml.model = llama``). A tokenizer is saved
to a scratch folder first, so that a slow tokenizer is read through its fast conversion.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["TokenizerError", "write_tokenizer", "pre_tokenizer_name", "tokenizer_kind"]

# The pre-tokenizer split patterns of the families llama.cpp knows by name (tokenizer.ggml.pre).
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {_LLAMA3: "llama-bpe", _QWEN2: "qwen2"}


class TokenizerError(ValueError):
    """A tokenizer this exporter cannot describe to llama.cpp."""


def tokenizer_kind(tokenizer_json: dict[str, Any]) -> str:
    """``gpt2`` (byte-level BPE) or ``llama`` (BPE with byte fallback); a TokenizerError otherwise."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") == "BPE":
        return "llama" if model.get("byte_fallback") else "gpt2"
    raise TokenizerError(f"a {model.get('type') or 'unknown'} tokenizer model cannot be exported; supported: "
                         "byte-level BPE (GPT-2 style) and BPE with byte fallback (SentencePiece/Llama style)")


def _walk(node: Any) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [n for child in node.get("pretokenizers", node.get("normalizers", [])) for n in _walk(child)]
    return [node]


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE (``tokenizer.ggml.pre``),
    recognised from the split pattern of ``tokenizer.json``; ``default`` when unknown (llama.cpp
    then uses its generic split, which may cut some text differently)."""
    steps = _walk(tokenizer_json.get("pre_tokenizer"))
    types = [s.get("type") for s in steps]
    for step in steps:
        if step.get("type") == "Split":
            pattern = (step.get("pattern") or {}).get("Regex")
            if pattern in _SPLITS:
                return _SPLITS[pattern]
    if types == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if types == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # GPT-2's split after single digits (SmolLM, StarCoder)
    return "default"


def _add_space_prefix(tokenizer_json: dict[str, Any]) -> bool:
    for step in _walk(tokenizer_json.get("pre_tokenizer")):
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") != "never" and step.get("add_prefix_space", True)
    return any(s.get("type") == "Prepend" for s in _walk(tokenizer_json.get("normalizer")))


def _adds(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding adds bos / eos: what the tokenizer does, not what a flag claims."""
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return (bool(ids) and bos is not None and ids[0] == bos), (bool(ids) and eos is not None and ids[-1] == eos)


def _vocab(tokenizer: Any, kind: str, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    if max(by_id) >= n_vocab:
        raise TokenizerError(f"the tokenizer has {max(by_id) + 1} tokens but the model's embeddings only "
                             f"{n_vocab} rows; resize the embeddings (model.resize_token_embeddings) first")
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:  # embedding rows past the tokenizer (vocabularies padded to a multiple)
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(gguf.TokenType.USER_DEFINED)
            continue
        if i in added:
            kind_of = gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            token = added[i].content
            score = -1000.0 if kind == "llama" else 0.0
        elif kind == "llama" and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            kind_of, score = gguf.TokenType.BYTE, 0.0
        elif kind == "llama" and token == tokenizer.unk_token:
            kind_of, score = gguf.TokenType.UNKNOWN, 0.0
        else:
            # SentencePiece merges pieces by score: keep the vocabulary's order (earlier = merged first)
            kind_of, score = gguf.TokenType.NORMAL, (-float(i) if kind == "llama" else 0.0)
        tokens.append(token)
        scores.append(score)
        types.append(int(kind_of))
    return tokens, scores, types


def write_tokenizer(writer: Any, tokenizer: Any, n_vocab: int, scratch: str | Path) -> dict[str, Any]:
    """Write the tokenizer's metadata; returns what the Modelfile needs (``chat_template``,
    ``stop_tokens``)."""
    import gguf

    scratch = Path(scratch)
    tokenizer.save_pretrained(scratch)
    tj_file = scratch / "tokenizer.json"
    if not tj_file.is_file():
        raise TokenizerError("the tokenizer has no fast (tokenizer.json) form; only fast tokenizers are exported")
    tokenizer_json = json.loads(tj_file.read_text(encoding="utf-8"))
    kind = tokenizer_kind(tokenizer_json)
    tokens, scores, types = _vocab(tokenizer, kind, n_vocab)
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        pre = pre_tokenizer_name(tokenizer_json)
        if pre == "default":
            print("sage-finetune export: warning: the tokenizer's pre-tokenizer is not one llama.cpp knows by name; "
                  "written as 'default' (llama.cpp may split some text differently)", file=sys.stderr)
        writer.add_tokenizer_pre(pre)
    else:
        writer.add_tokenizer_pre("default")
        writer.add_add_space_prefix(_add_space_prefix(tokenizer_json))
    writer.add_token_list(tokens)
    if kind == "llama":
        writer.add_token_scores(scores)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(scratch, load_merges=True, n_vocab=n_vocab)
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
           "pad": tokenizer.pad_token_id}
    for name, token_id in ids.items():  # the loaded tokenizer's own ids win over the files' guesses
        if token_id is not None and token_id < n_vocab:
            special.special_token_ids[name] = int(token_id)
    add_bos, add_eos = _adds(tokenizer)
    special.add_special_token.update({"bos": add_bos, "eos": add_eos})
    special.chat_template = tokenizer.chat_template or None
    special.add_to_gguf(writer, quiet=True)
    return {"chat_template": tokenizer.chat_template or None, "eos_token": tokenizer.eos_token,
            "bos_token": tokenizer.bos_token if add_bos else None}
