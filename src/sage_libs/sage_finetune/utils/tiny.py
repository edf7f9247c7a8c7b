"""Build a tiny causal LM and a locally trained tokenizer, saved like a hub model.

Used by the tests and the demo, because nothing can be downloaded from a model hub here: the
result is a normal model directory that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load, exactly as they would load ``Qwen/Qwen2.5-0.5B``.

    sage-finetune tiny-model ./tiny-model --corpus examples/data/*.jsonl
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = ["CHATML_TEMPLATE", "SPECIAL_TOKENS", "train_tokenizer", "build_tiny_model", "corpus_texts"]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# ChatML with {% generation %} markers (so HF's return_assistant_tokens_mask works too) and a
# simple tool-calling layout: tool schemas in the system turn, calls as <tool_call> JSON.
CHATML_TEMPLATE = (
    "{%- if tools -%}"
    "{{ '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] + '\n\n' }}{%- endif -%}"
    "{{ '# Tools\n' }}{%- for tool in tools -%}{{ tool | tojson }}{{ '\n' }}{%- endfor -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and tools -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- generation -%}"
    "{{ message['content'] }}"
    "{%- if message.get('tool_calls') -%}{%- for call in message['tool_calls'] -%}"
    "{{ '<tool_call>\n' + (call['function'] | tojson) + '\n</tool_call>' }}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>' }}"
    "{%- endgeneration -%}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

_BASE_CORPUS = (
    "The quick brown fox jumps over the lazy dog. You are a helpful assistant. "
    "User: What is two plus two? Assistant: Two plus two is four. "
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 = + - * / ( ) [ ] { } : , . ? ! \" ' "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday search calculator lookup answer "
    "thought action input observation finish tool call result query"
)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def corpus_texts(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Every string value in JSON/JSONL files, and the lines of text files."""
    for path in paths:
        path = Path(path)
        with path.open(encoding="utf-8") as fh:
            if path.suffix in (".jsonl", ".json"):
                text = fh.read()
                try:
                    docs = [json.loads(text)] if path.suffix == ".json" else [
                        json.loads(line) for line in text.splitlines() if line.strip()]
                except json.JSONDecodeError:
                    docs = [text]
                for doc in docs:
                    yield from _strings(doc)
            else:
                yield from fh


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, chat_template: str = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer trained on ``texts``, wrapped as a HF fast tokenizer with
    bos/eos/pad and a ChatML chat template (``<|im_end|>`` ends every turn and is the eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_BASE_CORPUS, *texts], trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"], model_max_length=2048)
    wrapped.chat_template = chat_template
    return wrapped


def build_tiny_model(output_dir: str | os.PathLike, *, arch: str = "llama", texts: Iterable[str] | None = None,
                     corpus_files: Iterable[str | os.PathLike] = (), vocab_size: int = 1024, hidden_size: int = 64,
                     num_hidden_layers: int = 2, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                     intermediate_size: int = 128, max_position_embeddings: int = 2048, seed: int = 0,
                     chat_template: str | None = CHATML_TEMPLATE, pretrain_steps: int = 0,
                     progress: Any = None) -> Path:
    """Write an ``arch`` ('llama' or 'qwen2') model and its tokenizer to ``output_dir`` in
    safetensors, loadable with ``from_pretrained``. Returns the directory.

    With ``pretrain_steps`` > 0 the model is first trained as a plain language model on the corpus
    strings (no chat format), so that it behaves like a small *base* model: fine-tuning then
    teaches it the chat format and the tasks, as it would a real base model; ``progress(step, steps,
    loss)`` is then called every 10% of the steps.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    all_texts = list(texts or []) + list(corpus_texts(corpus_files))
    tokenizer = train_tokenizer(all_texts, vocab_size=vocab_size, chat_template=chat_template or CHATML_TEMPLATE)
    if chat_template is None:
        tokenizer.chat_template = None
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}.get(arch)
    if config_cls is None:
        raise ValueError(f"arch {arch!r} is not supported; expected 'llama' or 'qwen2'")
    config = config_cls(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if pretrain_steps > 0:
        _pretrain(model, tokenizer, all_texts or [_BASE_CORPUS], pretrain_steps, seed, progress=progress)
    from .io import follow_umask, tree_state

    out = Path(output_dir)
    before = tree_state(out)  # the folder may hold other files: only ours get the umask's modes
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    follow_umask(out, written_since=before)  # safetensors writes model.safetensors 0600
    return out


def _pretrain(model: Any, tokenizer: Any, texts: list[str], steps: int, seed: int,
              window: int = 64, batch_size: int = 16, lr: float = 3e-3, progress: Any = None) -> None:
    """A few hundred steps of next-token prediction on random windows of the corpus.
    ``progress(step, steps, loss)``, if given, is called every 10% of the steps."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.bos_token_id)  # document separator
    if len(ids) <= window + 1:
        ids = ids * (window // max(len(ids), 1) + 2)
    stream = torch.tensor(ids)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps))
    model.train()
    every = max(1, steps // 10)
    for step in range(steps):
        starts = torch.randint(0, len(stream) - window - 1, (batch_size,), generator=gen)
        batch = torch.stack([stream[s: s + window] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if progress is not None and ((step + 1) % every == 0 or step + 1 == steps):
            progress(step + 1, steps, loss.item())
    model.eval()
