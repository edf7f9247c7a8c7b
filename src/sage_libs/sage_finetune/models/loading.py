"""Loading the tokenizer and the model for training, and a saved run back: safetensors only unless
``training.allow_pickle_weights``, ``trust_remote_code`` off unless asked, errors that name the option.
A GGUF base (``model_name_or_path: x.gguf``, or a folder and ``training.gguf_file``) loads from the
folder it is converted into (:func:`.files.resolve_model`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["load_tokenizer", "load_kwargs", "model_load_kwargs", "load_causal_lm", "load_saved_model"]


def load_tokenizer(tc: Any) -> Any:
    """The tokenizer of ``training.model_name_or_path``, padding on the right (with eos if it has no pad)."""
    from transformers import AutoTokenizer

    from .files import check_model_dir, resolve_model

    check_model_dir(tc.model_name_or_path, allow_pickle_weights=tc.allow_pickle_weights, gguf_file=tc.gguf_file)
    source = resolve_model(tc.model_name_or_path, tc.gguf_file, weights=False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=tc.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"training.model_name_or_path: cannot load a tokenizer from "
                          f"{tc.model_name_or_path!r}: {exc}") from exc
    if tokenizer.pad_token is None:
        # Padding positions are masked by attention_mask and labels=-100, so reusing eos is safe.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_kwargs(*, dtype: str = "auto", trust_remote_code: bool = False, allow_pickle_weights: bool = False,
                attn_implementation: str | None = None) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments, the one place they are decided (training, ``chat``,
    ``merge``): safetensors only unless pickled weights are explicitly allowed (None: prefer
    safetensors), no remote code unless asked."""
    import torch

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code,
                              "use_safetensors": None if allow_pickle_weights else True,
                              "dtype": "auto" if dtype == "auto" else getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def model_load_kwargs(tc: Any, *, frozen_base: bool = False) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments of a training config (:func:`load_kwargs`); with
    ``training.gguf_file``, ``gguf_file`` as transformers spells it (:func:`load_causal_lm` resolves it).
    ``frozen_base``: the run trains an adapter over these weights (their dtype, see
    :func:`.precision.base_weights_dtype`)."""
    from .precision import base_weights_dtype

    dtype = base_weights_dtype(tc.model_dtype, bf16=tc.bf16, frozen_base=frozen_base)
    kwargs = load_kwargs(dtype=dtype, trust_remote_code=tc.trust_remote_code,
                         allow_pickle_weights=tc.allow_pickle_weights, attn_implementation=tc.attn_implementation)
    if getattr(tc, "gguf_file", None):
        kwargs["gguf_file"] = tc.gguf_file
    return kwargs


def load_causal_lm(name_or_path: str, kwargs: dict[str, Any], *, allow_pickle_weights: bool = False,
                   option: str = "training.model_name_or_path", training: bool = True) -> Any:
    """``AutoModelForCausalLM.from_pretrained``; ``training``: without the KV cache (a model loaded
    to be merged and saved keeps its config as it was). A GGUF file (``name_or_path`` itself, or
    ``kwargs["gguf_file"]`` in that folder) loads from its converted folder, and the model names the
    file as where it came from: an adapter trained on it records the file as its base."""
    from transformers import AutoModelForCausalLM

    from .files import gguf_source, resolve_model

    kwargs = dict(kwargs)
    gguf_file = kwargs.pop("gguf_file", None)
    gguf = gguf_source(name_or_path, gguf_file, option=option)
    source = resolve_model(name_or_path, gguf_file, option=option) if gguf is not None else name_or_path
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        hint = ("; only safetensors weights are loaded unless training.allow_pickle_weights is true"
                if "safetensors" in str(exc) and not allow_pickle_weights else "")
        raise ConfigError(f"{option}: cannot load a model from {name_or_path!r}: {exc}{hint}") from exc
    if gguf is not None:
        model.name_or_path = model.config._name_or_path = str(gguf.resolve())
    if training:
        model.config.use_cache = False  # the KV cache is useless in training and breaks packed position_ids
    return model


def load_saved_model(model_path: str | os.PathLike, tc: Any, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The tokenizer and model of a directory written by ``save_model`` / ``merge_and_save``."""
    from transformers import AutoTokenizer

    from .files import check_model_dir

    path = Path(model_path)
    if not path.is_dir():
        raise ConfigError(f"load_model: {path} is not a directory")
    check_model_dir(str(path), allow_pickle_weights=tc.allow_pickle_weights, option="load_model")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=tc.trust_remote_code)
    return tokenizer, load_causal_lm(str(path), kwargs, allow_pickle_weights=tc.allow_pickle_weights,
                                     option="load_model", training=False)
