"""Talk to a fine-tuned model the way it was trained.

A saved adapter, model or merged model carries the chat template its run trained with (see
:mod:`.data.rendering`); this module renders prompts with that template and stops generation at its
end-of-turn token(s). ``trainer.generate``, :class:`ChatSession` and ``sage-finetune chat`` all go
through :func:`generate_reply`::

    from sage_libs.sage_finetune.serving import ChatSession

    chat = ChatSession.load("outputs/lora-tiny/adapter", system="Be brief.")
    print(chat.ask("What is 3 + 4?"))      # multi-turn: the history is kept
    chat.reset()
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError

__all__ = ["ChatSession", "load_chat_model", "generate_reply", "continue_ids", "stop_token_ids",
           "add_generation_stops"]


def load_chat_model(path: str | os.PathLike, *, base: str | None = None, dtype: str = "auto",
                    trust_remote_code: bool = False, allow_pickle_weights: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a merged/full model directory, or from an adapter directory
    applied to ``base`` (default: the base recorded in the adapter). The tokenizer comes from the
    directory (it carries the training template), else from the base."""
    from transformers import AutoTokenizer

    from .models.loading import load_causal_lm, load_kwargs
    from .models.files import adapter_base, base_option, check_adapter_dir, check_model_dir, resolve_model

    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"chat: {p} is not a directory; expected a saved adapter, model or merged model")
    kwargs = load_kwargs(dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle_weights=allow_pickle_weights)
    has_tokenizer = (p / "tokenizer_config.json").exists()
    if (p / "adapter_config.json").exists():
        from peft import PeftModel

        check_adapter_dir(p, allow_pickle_weights=allow_pickle_weights, option="chat")
        option = base_option(p, base, command="chat")
        base = adapter_base(p, base, command="chat", allow_pickle_weights=allow_pickle_weights)
        base_model = load_causal_lm(base, kwargs, allow_pickle_weights=allow_pickle_weights, option=option,
                                    training=False)
        model = PeftModel.from_pretrained(base_model, str(p))
        tokenizer_dir = str(p) if has_tokenizer else resolve_model(base, option=option, weights=False)
    else:
        check_model_dir(str(p), allow_pickle_weights=allow_pickle_weights, option="chat")
        model = load_causal_lm(str(p), kwargs, allow_pickle_weights=allow_pickle_weights, option="chat",
                               training=False)
        tokenizer_dir = str(p)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code)
    model.eval()
    return model, tokenizer


def stop_token_ids(tokenizer: Any, model: Any = None, chat_template: str | None = None) -> list[int]:
    """Where a reply ends: the template's end-of-turn token(s), the tokenizer's eos and the
    model's ``generation_config.eos_token_id``."""
    from .data.templates import end_of_turn_token_ids, resolve_chat_template

    template = chat_template or resolve_chat_template(None, tokenizer).text
    ids = list(end_of_turn_token_ids(tokenizer, template))
    extra: list[Any] = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    extra += configured if isinstance(configured, list) else [configured]
    for i in extra:
        if i is not None and i not in ids:
            ids.append(int(i))
    return ids


def _text_streamer(tokenizer: Any, on_text: Callable[[str], Any]) -> Any:
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate_reply(model: Any, tokenizer: Any, messages: list[dict[str, Any]], *, chat_template: str | None = None,
                   tools: list[dict[str, Any]] | None = None, max_new_tokens: int = 256,
                   on_text: Callable[[str], Any] | None = None, **generate_kwargs: Any) -> str:
    """The assistant's next reply to ``messages``: rendered with ``chat_template`` (default: the
    tokenizer's, else the fallback, exactly as training resolves it), greedy unless sampling
    options are given, stopped at :func:`stop_token_ids`. ``on_text`` receives the reply as it
    is generated."""
    from .data.templates import resolve_chat_template

    template = chat_template or resolve_chat_template(None, tokenizer).text
    text = tokenizer.apply_chat_template(messages, chat_template=template, tools=tools, tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    generate_kwargs.setdefault("eos_token_id", stop_token_ids(tokenizer, model, template))
    if on_text is not None:
        generate_kwargs["streamer"] = _text_streamer(tokenizer, on_text)
    return continue_ids(model, tokenizer, ids, max_new_tokens=max_new_tokens, **generate_kwargs)


def continue_ids(model: Any, tokenizer: Any, ids: Any, *, max_new_tokens: int, **generate_kwargs: Any) -> str:
    """The decoded continuation of the token ids ``ids`` (a 1 x n tensor): greedy unless sampling
    options are given, in eval mode (the model's mode is restored), special tokens dropped."""
    import torch

    device = next(model.parameters()).device
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                               else tokenizer.eos_token_id)
    generate_kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                                 max_new_tokens=max_new_tokens, use_cache=True, **generate_kwargs)
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


class ChatSession:
    """A multi-turn conversation with a model; the history is kept until :meth:`reset`.

    Args:
        model, tokenizer: e.g. from :func:`load_chat_model` (or ``trainer.model, trainer.tokenizer``).
        system: a system message put before every conversation.
        max_new_tokens: the longest reply.
        generate_kwargs: passed to ``model.generate`` (e.g. ``do_sample=True, temperature=0.7``).
    """

    def __init__(self, model: Any, tokenizer: Any, *, system: str | None = None, max_new_tokens: int = 256,
                 **generate_kwargs: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.system, self.max_new_tokens = system, max_new_tokens
        self.generate_kwargs = generate_kwargs
        self.history: list[dict[str, str]] = []

    @classmethod
    def load(cls, path: str | os.PathLike, *, base: str | None = None, **kwargs: Any) -> "ChatSession":
        """A session with a saved adapter (on its base) or a merged/full model directory."""
        load_keys = ("dtype", "trust_remote_code", "allow_pickle_weights")
        model, tokenizer = load_chat_model(path, base=base, **{k: kwargs.pop(k) for k in load_keys if k in kwargs})
        return cls(model, tokenizer, **kwargs)

    def messages(self) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def ask(self, message: str, *, on_text: Callable[[str], Any] | None = None) -> str:
        """Send a user message; returns (and remembers) the reply."""
        self.history.append({"role": "user", "content": message})
        try:
            reply = generate_reply(self.model, self.tokenizer, self.messages(), max_new_tokens=self.max_new_tokens,
                                   on_text=on_text, **self.generate_kwargs)
        except BaseException:
            self.history.pop()
            raise
        self.history.append({"role": "assistant", "content": reply})
        return reply

    def reset(self) -> None:
        self.history.clear()


def add_generation_stops(model: Any, stop_ids: list[int]) -> None:
    """List ``stop_ids`` (a template's end-of-turn tokens) in ``model.generation_config.eos_token_id``,
    so that plain ``generate`` (and servers that read generation_config.json) stops at the end of a
    reply instead of running on to the base model's eos."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return
    current = config.eos_token_id
    ids = [] if current is None else list(current) if isinstance(current, (list, tuple)) else [current]
    ids += [i for i in stop_ids if i not in ids]
    config.eos_token_id = ids[0] if len(ids) == 1 else ids
