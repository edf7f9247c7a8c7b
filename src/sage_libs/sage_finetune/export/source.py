"""What ``export`` reads: a saved adapter (merged onto its base in memory, as ``merge`` does) or a
merged/full model folder. :func:`check_source` reads only small JSON files, so that a bad input is
refused before anything is loaded or written; :func:`load_source` loads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["Source", "check_source", "load_source"]


@dataclass(frozen=True)
class Source:
    path: Path
    model_type: str
    adapter: bool
    base: str | None  # an adapter's base model (None for a model folder)


def _model_type(config_file: Path, what: str) -> str:
    from .arch import ARCHITECTURES, supported_model_types

    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"export: cannot read {config_file} ({exc})") from None
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"export: {what} is a {model_type or 'unknown'} model ({config_file}); GGUF export supports "
                          f"the model types {supported_model_types()}")
    return model_type


def check_source(source: str | Path, *, base: str | None = None, allow_pickle_weights: bool = False) -> Source:
    """A ConfigError naming what is wrong with ``source`` (and what is expected); nothing is loaded."""
    from ..models.files import adapter_base, check_adapter_dir, check_model_dir, resolve_model

    p = Path(source).expanduser()
    if not p.exists():
        raise ConfigError(f"export: {p}: no such directory; expected a saved adapter (adapter_config.json) or a "
                          "merged/full model directory (config.json, *.safetensors and the tokenizer files)")
    if not p.is_dir():
        raise ConfigError(f"export: {p} is a file; expected a saved adapter or a merged/full model directory")
    if (p / "adapter_config.json").is_file():
        check_adapter_dir(p, allow_pickle_weights=allow_pickle_weights, option="export")
        base_path = adapter_base(p, base, command="export", allow_pickle_weights=allow_pickle_weights)
        # a GGUF base: the config of the folder it converts into (weights wait for the load)
        base_dir = Path(resolve_model(base_path, option="export --base", weights=False)).expanduser()
        if (base_dir / "config.json").is_file():
            model_type = _model_type(base_dir / "config.json", f"the adapter's base {base_path}")
        else:  # a hub id: its config is read when it is downloaded
            from transformers import AutoConfig

            model_type = getattr(AutoConfig.from_pretrained(base_path), "model_type", None)
            from .arch import ARCHITECTURES, supported_model_types

            if model_type not in ARCHITECTURES:
                raise ConfigError(f"export: the adapter's base {base_path} is a {model_type} model; GGUF export "
                                  f"supports the model types {supported_model_types()}")
        return Source(p, model_type, True, base_path)
    if base is not None:
        raise ConfigError(f"export --base: {p} is a model directory, not an adapter; --base applies to adapters only")
    check_model_dir(str(p), allow_pickle_weights=allow_pickle_weights, option="export")
    return Source(p, _model_type(p / "config.json", str(p)), False, None)


def load_source(source: Source, *, allow_pickle_weights: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the adapter merged into its base (``merge_and_unload``, as
    ``sage-finetune merge`` does, in the base's own precision), or the model. The tokenizer is the
    adapter's when it saved one (it carries the training template), else the base's."""
    from transformers import AutoTokenizer

    from ..models.loading import load_causal_lm, load_kwargs
    from ..models.files import base_option, resolve_model

    kwargs = load_kwargs(dtype="auto", allow_pickle_weights=allow_pickle_weights)
    if source.adapter:
        from peft import PeftModel

        assert source.base is not None
        option = base_option(source.path, source.base, command="export")
        base_model = load_causal_lm(source.base, kwargs, allow_pickle_weights=allow_pickle_weights, option=option,
                                    training=False)
        model = PeftModel.from_pretrained(base_model, str(source.path)).merge_and_unload()
        tokenizer_dir = str(source.path) if (source.path / "tokenizer_config.json").is_file() else \
            resolve_model(source.base, option=option, weights=False)
    else:
        model = load_causal_lm(str(source.path), kwargs, allow_pickle_weights=allow_pickle_weights, option="export",
                               training=False)
        tokenizer_dir = str(source.path)
    return model.eval(), AutoTokenizer.from_pretrained(tokenizer_dir)
