"""What a local model directory holds, checked before anything is loaded from it.

``from_pretrained`` fails late and vaguely on a directory that lacks its tokenizer ("Couldn't
instantiate the backend tokenizer...") and happily unpickles ``pytorch_model.bin``. These checks
read only file names (and ``config.json``), so they cost nothing and run before the data is
prepared or the model is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["TOKENIZER_FILES", "looks_like_local_path", "pickle_weight_files", "check_model_dir", "adapter_base",
           "base_option", "gguf_source", "resolve_model",
           "absolute_local_path",
           "check_local_path_exists", "check_adapter_dir", "max_positions"]

# Any one of these is enough for AutoTokenizer (fast tokenizer, slow sentencepiece/BPE/WordPiece vocab).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")


def looks_like_local_path(name: str) -> bool:
    """True for what can only be a local path (a hub id is ``name`` or ``org/name``)."""
    if os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\", "..\\")) or name.endswith(("/", "\\")):
        return True
    if name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        return True
    parent = Path(name).parent
    return str(parent) not in ("", ".") and parent.is_dir()  # "models/tiny" where ./models exists


def pickle_weight_files(names: set[str], prefix: str = "pytorch_model") -> list[str]:
    """Pickled weight files (``pytorch_model.bin``, its shards and index) among ``names``."""
    return sorted(n for n in names if n.startswith(prefix) and (n.endswith(".bin") or n.endswith(".bin.index.json")))


def _pickle_refusal(option: str, path: Path, file: str) -> ConfigError:
    return ConfigError(
        f"{option}: {path} holds its weights only as a pickle file ({file}); unpickling a file from an untrusted "
        "source can run arbitrary code, so only safetensors weights are loaded by default. Convert the checkpoint "
        "to safetensors (model.save_pretrained(DIR) writes model.safetensors), or, if you trust where it came "
        "from, set training.allow_pickle_weights: true")


def check_local_path_exists(name_or_path: str, *, option: str = "training.model_name_or_path") -> None:
    """A ConfigError when ``name_or_path`` looks like a local path (``./x``, ``/x``, ``~/x``) and does
    not exist; a hub id passes. The one message for a missing model folder, for train and plan."""
    if not Path(name_or_path).expanduser().exists() and Path(name_or_path).suffix.lower() == ".gguf":
        raise ConfigError(f"{option}: {name_or_path}: no such file; expected a GGUF file, a local model directory "
                          "or a hub id")
    if not Path(name_or_path).expanduser().exists() and looks_like_local_path(name_or_path):
        raise ConfigError(f"{option}: {name_or_path}: no such directory; expected a local model directory "
                          "(config.json, *.safetensors and the tokenizer files) or a hub id such as "
                          "Qwen/Qwen2.5-0.5B-Instruct")


def gguf_source(name_or_path: str, gguf_file: str | None = None, *,
                option: str = "training.model_name_or_path") -> Path | None:
    """The GGUF file a model option names, or None: THE place that decides whether a base model is a
    GGUF file. Either ``name_or_path`` is the file itself (a ``.gguf`` suffix, or any file starting
    with the GGUF magic), or ``gguf_file`` (``training.gguf_file``, like transformers' ``gguf_file=``)
    names a file inside the local folder ``name_or_path``."""
    from .gguf import is_gguf_file

    if gguf_file:
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"training.gguf_file: {gguf_file!r} is looked up in training.model_name_or_path, which "
                              f"must then be a local folder; {name_or_path!r} is not one (download a hub's GGUF file "
                              "first, or set training.model_name_or_path to the .gguf file itself)")
        path = folder / gguf_file
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "is not a regular file" if path.exists() else "no such file"
            raise ConfigError(f"training.gguf_file: {path}: {what}; expected the .gguf file inside "
                              "training.model_name_or_path")
        return path
    p = Path(name_or_path).expanduser()
    if p.is_file() and (p.suffix.lower() == ".gguf" or is_gguf_file(p)):
        return p
    return None


def resolve_model(name_or_path: str, gguf_file: str | None = None, *, option: str = "training.model_name_or_path",
                  weights: bool = True) -> str:
    """What to hand ``from_pretrained``: ``name_or_path`` itself, or for a GGUF file
    (:func:`gguf_source`) the Hugging Face folder it is converted into, once (``weights`` False:
    its tokenizer and config.json only; see :mod:`.gguf`)."""
    source = gguf_source(name_or_path, gguf_file, option=option)
    if source is None:
        return name_or_path
    from .gguf import converted_dir

    return str(converted_dir(source, option="training.gguf_file" if gguf_file else option, weights=weights))


def check_model_dir(name_or_path: str, *, allow_pickle_weights: bool = False,
                    option: str = "training.model_name_or_path", gguf_file: str | None = None) -> None:
    """Raise a ConfigError naming what is missing when ``name_or_path`` is a local path that cannot
    be loaded: no such directory, a file, no config.json, no tokenizer, no weights, or weights only
    as pickle (unless allowed). A hub id passes untouched (it is checked when it is downloaded). A
    GGUF file (:func:`gguf_source`) has its header checked (:func:`.gguf.read_header`)."""
    source = gguf_source(name_or_path, gguf_file, option=option)
    if source is not None:
        from .gguf import read_header

        read_header(source, "training.gguf_file" if gguf_file else option)
        return
    p = Path(name_or_path).expanduser()
    if not p.exists():
        check_local_path_exists(name_or_path, option=option)
        return
    if not p.is_dir():
        raise ConfigError(f"{option}: {p} is a file; expected a model directory (config.json, *.safetensors and "
                          "the tokenizer files), a GGUF file or a hub id")
    names = {f.name for f in p.iterdir()}
    if "config.json" not in names:
        if "adapter_config.json" in names:
            raise ConfigError(f"{option}: {p} is a PEFT adapter, not a model; set it to the adapter's base model "
                              "and load the adapter with 'sage-finetune eval --adapter' or 'merge --adapter'")
        raise ConfigError(f"{option}: {p} has no config.json; expected a model directory written by "
                          "save_pretrained (config.json, *.safetensors and the tokenizer files)")
    if not names & set(TOKENIZER_FILES):
        raise ConfigError(f"{option}: {p} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:4])}); save it "
                          f"there with tokenizer.save_pretrained('{p}'), or copy the tokenizer files of the model "
                          "it was trained from")
    safe = [n for n in names if n.endswith(".safetensors") or n.endswith(".safetensors.index.json")]
    pickled = pickle_weight_files(names)
    if not safe and pickled and not allow_pickle_weights:
        raise _pickle_refusal(option, p, pickled[0])
    if not safe and not pickled:
        raise ConfigError(f"{option}: {p} has no weights (model.safetensors or model.safetensors.index.json "
                          "and its shards)")


def check_adapter_dir(path: str | os.PathLike, *, allow_pickle_weights: bool = False,
                      option: str = "--adapter") -> None:
    """The adapter counterpart: adapter_model.bin only needs the same explicit opt-in."""
    p = Path(path)
    names = {f.name for f in p.iterdir()} if p.is_dir() else set()
    if "adapter_model.safetensors" not in names and "adapter_model.bin" in names and not allow_pickle_weights:
        raise _pickle_refusal(option, p, "adapter_model.bin")


def adapter_base(adapter_dir: str | os.PathLike, base: str | None, *, command: str,
                 allow_pickle_weights: bool = False) -> str:
    """The base model of a saved adapter: ``base`` when the user passed one (``--base``), else the
    one recorded in its adapter_config.json. Checked like any model folder; an error names where the
    base came from, so that a recorded path that does not resolve here is not blamed on ``--base``."""
    p = Path(adapter_dir)
    config = p / "adapter_config.json"
    if base is not None:
        check_model_dir(base, allow_pickle_weights=allow_pickle_weights, option=f"{command} --base")
        return base
    try:
        recorded = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{command}: cannot read {config} ({exc}); expected a PEFT adapter directory") from None
    if not recorded:
        raise ConfigError(f"{command}: {config} names no base model (base_model_name_or_path); pass --base MODEL")
    where = base_option(p, None, command=command)
    try:
        check_model_dir(recorded, allow_pickle_weights=allow_pickle_weights, option=where)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; pass --base MODEL to load the adapter onto another copy of it") from None
    return recorded


def base_option(adapter_dir: str | os.PathLike, base: str | None, *, command: str) -> str:
    """How an error names the base of an adapter: the option the user passed, or where it was read."""
    if base is not None:
        return f"{command} --base"
    return f"the base model recorded in {Path(adapter_dir) / 'adapter_config.json'} (base_model_name_or_path)"


def absolute_local_path(name_or_path: str) -> str:
    """A relative path to an existing local folder or file (a GGUF base), made absolute (what an
    adapter records as its base, so that it loads from any directory); a hub id or an absolute path
    as it is."""
    p = Path(name_or_path).expanduser()
    return str(p.resolve()) if name_or_path and not p.is_absolute() and p.exists() else name_or_path


def max_positions(name_or_path: str) -> tuple[int | None, bool]:
    """``(max_position_embeddings, rope_scaled)`` from a local model's config.json (None when unknown)."""
    config = Path(name_or_path).expanduser() / "config.json"
    if not config.is_file():
        return None, False
    try:
        data: Any = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None, False
    text = data.get("text_config") if isinstance(data.get("text_config"), dict) else data
    limit = text.get("max_position_embeddings")
    rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
    scaled = isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) not in ("default", None)
    return (limit if isinstance(limit, int) and limit > 0 else None), scaled
