"""A GGUF file as a base model: checked, then converted once into a normal Hugging Face folder.

llama.cpp's GGUF files (often quantized: Q4_1, Q8_0, K-quants) are how many small models reach a
machine. transformers loads one (``from_pretrained(dir, gguf_file=name)``) by dequantizing it, but
the model it returns keeps a GGUF quantizer that cannot be saved and that the HF Trainer refuses.
So a GGUF base is converted, once, into an ordinary folder: ``config.json``, the weights as float32
safetensors and the tokenizer files with the file's chat template. Everything that loads a model
(training, QLoRA's 4-bit load, ``chat``, ``merge``, the planner) then loads that folder, in
whatever ``training.model_dtype`` asks for, exactly as it would load any local model.

The folders live under ``models_cache()/gguf/<sha256 of the file>/`` (``$SAGE_FINETUNE_MODELS``),
keyed by the file's content, so a changed file is converted again and an unchanged one never is.
A conversion writes into a temporary folder and renames it into place: a killed conversion leaves
no folder that looks complete. ``<digest>-tokenizer/`` holds the tokenizer and ``config.json``
alone, for what needs no weights (the tokenizer, the preflight checks, ``plan``): it costs
seconds, where dequantizing the weights costs a model load.

:func:`read_header` checks a file before anything is written, reading only its header (the
metadata and the tensor table, tens of milliseconds): not a GGUF file, truncated, an
architecture transformers' GGUF loader does not know, or a tensor type gguf-py cannot dequantize
are each a one-line :class:`~..errors.ConfigError` naming the option, the file and what is
supported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError

__all__ = ["GGUF_MAGIC", "GGUFHeader", "is_gguf_file", "read_header", "supported_architectures",
           "supported_tensor_types", "file_digest", "gguf_cache", "converted_dir", "SOURCE_FILE"]

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
#: written into every converted folder: which file it came from (and proof that it is complete)
SOURCE_FILE = "gguf_source.json"

_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
# GGUF value types: fixed-width scalars (struct format), 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# GGUF architecture names that transformers spells otherwise, and those that are not causal LMs
_ARCH_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}
_NOT_CAUSAL = {"t5", "umt5", "t5encoder", "general", "tokenizer"}


class _Truncated(Exception):
    pass


@dataclass
class GGUFHeader:
    """What a GGUF file's header says: its architecture, scalar metadata and tensor table."""

    path: Path
    size: int
    version: int
    architecture: str
    metadata: dict[str, Any]  # scalar values (numbers, strings, booleans)
    array_lengths: dict[str, int]  # the arrays' lengths (token lists, merges, ...)
    tensors: dict[str, tuple[tuple[int, ...], int]] = field(default_factory=dict)  # name -> (shape, ggml type)

    @property
    def name(self) -> str | None:
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) else None

    def tensor_type_counts(self) -> dict[str, int]:
        names = _type_names()
        counts: dict[str, int] = {}
        for _, kind in self.tensors.values():
            label = names.get(kind, str(kind))
            counts[label] = counts.get(label, 0) + 1
        return counts


def is_gguf_file(path: str | os.PathLike) -> bool:
    """True for a file that starts with the GGUF magic (its suffix aside)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def supported_architectures() -> list[str]:
    """The causal-LM architectures transformers' GGUF loader knows (``general.architecture`` values)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in _NOT_CAUSAL)


def _type_names() -> dict[int, str]:
    from gguf import GGMLQuantizationType

    return {t.value: t.name for t in GGMLQuantizationType}


def supported_tensor_types() -> dict[int, str]:
    """The tensor types gguf-py dequantizes (ggml type id -> name): F32, F16 and every type with a
    dequantizer in ``gguf.quants`` (BF16, Q4_0 ... Q8_0, the K-quants, the IQ types)."""
    import gguf.quants
    from gguf import GGMLQuantizationType

    out = {GGMLQuantizationType.F32.value: "F32", GGMLQuantizationType.F16.value: "F16"}
    for t in GGMLQuantizationType:
        cls = getattr(gguf.quants, t.name, None)
        if isinstance(cls, type) and callable(getattr(cls, "dequantize", None)):
            out[t.value] = t.name
    return out


class _Cursor:
    def __init__(self, buf: Any, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def take(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise _Truncated
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > self.size:
            raise _Truncated
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.take("<Q")
        self.pos += n
        if self.pos > self.size:
            raise _Truncated


def _parse(path: Path, buf: Any, size: int, option: str) -> GGUFHeader:
    c = _Cursor(buf, size)
    if size < 4 or bytes(buf[:4]) != GGUF_MAGIC:
        raise ConfigError(f"{option}: {path} is not a GGUF file (it does not start with the GGUF magic); expected "
                          "a .gguf file written by llama.cpp or gguf-py, or a model directory")
    c.pos = 4
    version = c.take("<I")
    if version not in _VERSIONS:
        raise ConfigError(f"{option}: {path}: GGUF version {version} is not supported (only versions "
                          f"{', '.join(map(str, _VERSIONS))}, little-endian, are read)")
    n_tensors, n_kv = c.take("<Q"), c.take("<Q")
    metadata: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    for _ in range(n_kv):
        key = c.string()
        kind = c.take("<I")
        if kind in _SCALARS:
            metadata[key] = c.take(_SCALARS[kind])
        elif kind == _STRING:
            metadata[key] = c.string()
        elif kind == _ARRAY:
            item, count = c.take("<I"), c.take("<Q")
            lengths[key] = count
            if item in _SCALARS:
                c.pos += struct.calcsize(_SCALARS[item]) * count
                if c.pos > size:
                    raise _Truncated
            elif item == _STRING:
                for _ in range(count):
                    c.skip_string()
            else:
                raise ConfigError(f"{option}: {path}: corrupt GGUF metadata (array of type {item} in {key!r})")
        else:
            raise ConfigError(f"{option}: {path}: corrupt GGUF metadata (value type {kind} of {key!r})")
    tensors: dict[str, tuple[tuple[int, ...], int]] = {}
    offsets: dict[str, int] = {}
    for _ in range(n_tensors):
        name = c.string()
        n_dims = c.take("<I")
        if n_dims > 8:
            raise ConfigError(f"{option}: {path}: corrupt GGUF tensor table ({n_dims} dimensions for {name!r})")
        shape = tuple(c.take("<Q") for _ in range(n_dims))
        tensors[name] = (shape, c.take("<I"))
        offsets[name] = c.take("<Q")
    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        alignment = _DEFAULT_ALIGNMENT
    data_start = -(-c.pos // alignment) * alignment
    arch = metadata.get("general.architecture")
    header = GGUFHeader(path=path, size=size, version=version, architecture=arch if isinstance(arch, str) else "",
                        metadata=metadata, array_lengths=lengths, tensors=tensors)
    _check_tensor_data(header, offsets, data_start, option)
    return header


def _check_tensor_data(header: GGUFHeader, offsets: dict[str, int], data_start: int, option: str) -> None:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = header.path
    supported = supported_tensor_types()
    names = _type_names()
    for name, (shape, kind) in header.tensors.items():
        if kind not in supported:
            raise ConfigError(f"{option}: {path}: tensor {name!r} is of type {names.get(kind, kind)}, which gguf-py "
                              f"cannot dequantize; supported: {', '.join(sorted(supported.values()))}")
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        elements = 1
        for d in shape:
            elements *= d
        end = data_start + offsets[name] + elements // block * type_size
        if end > header.size:
            raise ConfigError(f"{option}: {path} is truncated or corrupt: tensor {name!r} ends at byte {end} but the "
                              f"file has {header.size} bytes; download or convert it again")


def read_header(path: str | os.PathLike, option: str = "training.model_name_or_path") -> GGUFHeader:
    """The header of the GGUF file ``path``, checked: a GGUF file (v2/v3), not truncated, of an
    architecture transformers loads, with tensor types gguf-py dequantizes. Anything else is a
    one-line ConfigError naming ``option`` and the file. Reads the header only (tens of ms)."""
    p = Path(path).expanduser()
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            if size == 0:
                raise ConfigError(f"{option}: {p} is empty; expected a GGUF file")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                try:
                    header = _parse(p, buf, size, option)
                except _Truncated:
                    raise ConfigError(f"{option}: {p} is truncated or corrupt (its GGUF header runs past the end of "
                                      f"the file's {size} bytes); download or convert it again") from None
    except OSError as exc:
        raise ConfigError(f"{option}: cannot read {p}: {exc.strerror or exc}") from None
    arch = header.architecture
    supported = supported_architectures()
    if arch not in supported and _ARCH_ALIASES.get(arch) not in supported:
        what = f"architecture {arch!r}" if arch else "no general.architecture"
        raise ConfigError(f"{option}: {p}: GGUF {what} is not supported by transformers' GGUF loader; "
                          f"supported: {', '.join(supported)}")
    return header


# --------------------------------------------------------------------------------------------
# The content digest (the cache key and the run identity's fingerprint)
# --------------------------------------------------------------------------------------------
def gguf_cache() -> Path:
    """Where converted GGUF files live: ``models_cache()/gguf``."""
    from ..utils.wheel_files import models_cache

    return models_cache() / "gguf"


def file_digest(path: str | os.PathLike) -> str:
    """The sha256 of the whole file, remembered (by path, size, mtime and inode) under the cache so
    that an unchanged multi-gigabyte file is hashed once, not at every load."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    stamp = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    memo = gguf_cache() / "digests" / (hashlib.sha256(str(p).encode()).hexdigest()[:32] + ".json")
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        if isinstance(known, dict) and all(known.get(k) == v for k, v in stamp.items()) \
                and isinstance(known.get("sha256"), str):
            return known["sha256"]
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    try:
        from ..utils.io import atomic_write_json

        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(memo, {**stamp, "sha256": digest})
    except OSError:  # a read-only cache: hash again next time
        pass
    return digest


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """One conversion of a file at a time (processes of one run, two runs): the others wait and
    then find the folder done. Where ``fcntl`` is missing, concurrent conversions just race
    (each writes its own temporary folder; one rename wins)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _complete(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file()


def converted_dir(path: str | os.PathLike, *, option: str = "training.model_name_or_path",
                  weights: bool = True) -> Path:
    """The Hugging Face folder of the GGUF file ``path``, converting it the first time.

    ``weights``: the whole model (config, float32 safetensors, tokenizer); without, a folder with
    the tokenizer and ``config.json`` only (the full folder when it exists). The file is checked
    (:func:`read_header`) before anything is written."""
    p = Path(path).expanduser().resolve()
    header = read_header(p, option)
    digest = file_digest(p)
    root = gguf_cache()
    full, light = root / digest, root / f"{digest}-tokenizer"
    if _complete(full):
        return full
    if not weights and _complete(light):
        return light
    target = full if weights else light
    with _locked(root / f".{digest}.lock"):
        if _complete(target):  # converted by another process while this one waited
            return target
        for stale in root.glob(f".converting-{digest[:16]}-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".converting-{digest[:16]}-"))
        try:
            _convert(header, tmp, option=option, weights=weights, tokenizer_from=light if _complete(light) else None)
            (tmp / SOURCE_FILE).write_text(json.dumps(
                {"file": str(p), "sha256": digest, "size": header.size, "architecture": header.architecture,
                 "name": header.name, "tensor_types": header.tensor_type_counts(), "weights": weights},
                indent=2) + "\n", encoding="utf-8")
            if target.exists():  # incomplete (no source file): not ours to keep
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert(header: GGUFHeader, out: Path, *, option: str, weights: bool, tokenizer_from: Path | None) -> None:
    """Write the tokenizer and config (and with ``weights`` the float32 model) of ``header.path`` into ``out``."""
    from transformers import AutoConfig, AutoTokenizer

    src = header.path
    rope = header.metadata.get(f"{header.architecture}.rope.scaling.type")
    if isinstance(rope, str) and rope not in ("none", ""):
        logger.warning("%s: the file's rope scaling (%s) is not carried over by transformers' GGUF loader: the "
                       "model is trained without it, within %s positions", src, rope,
                       header.metadata.get(f"{header.architecture}.context_length", "its"))
    what = "the model" if weights else "the tokenizer"
    logger.info("converting %s (GGUF %s, %s) into %s", src, header.architecture,
                ", ".join(f"{n} {k}" for k, n in header.tensor_type_counts().items()), out)
    try:
        if tokenizer_from is not None:
            for f in tokenizer_from.iterdir():
                if f.name not in (SOURCE_FILE, "config.json"):
                    shutil.copy2(f, out / f.name)
        else:
            AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name).save_pretrained(out)
        if not weights:
            config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
            config.dtype = "float32"
            config.save_pretrained(out)
            return
        _write_model(src, out)
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError, RuntimeError) as exc:
        raise ConfigError(f"{option}: cannot convert {what} of the GGUF file {src}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def _write_model(src: Path, out: Path) -> None:
    """Dequantize with transformers' own GGUF loader, then save an ordinary model: the loaded one
    keeps a GGUF quantizer (unsaveable, refused by the HF Trainer), so the same weights go into a
    model built from the config without it (on the meta device: no second copy in memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(out, safe_serialization=True)
