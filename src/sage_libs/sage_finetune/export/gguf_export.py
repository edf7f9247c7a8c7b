"""``export_gguf``: a saved adapter (merged onto its base) or a merged/full model as one GGUF file
for llama.cpp / Ollama / LM Studio, and an Ollama ``Modelfile`` beside it.

Per-tensor types, as llama.cpp's converter and ``llama-quantize`` choose them:

- 1-D tensors (norms, biases, ``rope_freqs``) stay F32;
- ``f32``/``f16``/``bf16``: every matrix in that type;
- ``q8_0``/``q4_0``/``q4_1``/``q5_0``/``q5_1``: every matrix in that type, except the output
  matrix (the token embeddings when they are tied), which is Q8_0 (llama.cpp picks Q6_K when the
  row length allows, else Q8_0; gguf-py writes no K-quants); a matrix whose rows are not a whole
  number of blocks (32 values) falls back to F16.

The file is written to a temporary name in the output folder and renamed over ``out`` at the end:
an export that fails or is killed leaves no half-written ``out`` (nor Modelfile) behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .source import check_source, load_source

__all__ = ["GGUF_TYPES", "export_gguf", "check_export_args"]

# --type -> (gguf.GGMLQuantizationType name, gguf.LlamaFileType name)
GGUF_TYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
}


def check_export_args(out: str | os.PathLike, type: str) -> Path:
    """The output path, or a ConfigError naming what is wrong with ``out`` or ``type``."""
    if type not in GGUF_TYPES:
        raise ConfigError(f"--type {type}: unknown type; supported: {', '.join(GGUF_TYPES)}")
    path = Path(out).expanduser()
    if path.suffix.lower() != ".gguf":  # Model.GGUF is a GGUF file name too
        raise ConfigError(f"--gguf {out}: expected a file name ending in .gguf")
    if path.is_dir():
        raise ConfigError(f"--gguf {out} is a directory; expected the path of the .gguf file to write")
    if not path.parent.is_dir():
        raise ConfigError(f"--gguf {out}: the folder {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"--gguf {out}: the folder {path.parent} is not writable")
    return path


def _model_name(source: Path) -> str:
    name = source.resolve().name
    if name in ("adapter", "merged", "model", "final") or name.startswith("checkpoint-"):
        name = f"{source.resolve().parent.name}-{name}"
    # transformers' GGUF loader reads a llama file named exactly "mistral" as a Mistral config and fails
    return f"{name}-model" if name.lower() == "mistral" else name


def _tensor_type(gguf: Any, name: str, shape: tuple[int, ...], wanted: Any, tied: bool) -> Any:
    Q = gguf.GGMLQuantizationType
    if len(shape) <= 1 or wanted == Q.F32:
        return Q.F32
    if wanted in (Q.F16, Q.BF16):
        return wanted
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        wanted = Q.Q8_0
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if shape[-1] % block == 0 else Q.F16


def _write_gguf(tmp: Path, model: Any, tokenizer: Any, model_type: str, qtype: str, name: str) -> dict[str, Any]:
    import gguf
    import numpy as np

    from .arch import gguf_arch_name, gguf_tensors, write_hparams
    from .tokenizer_meta import write_tokenizer

    config = model.config
    wanted = gguf.GGMLQuantizationType[GGUF_TYPES[qtype][0]]
    file_type = int(gguf.LlamaFileType[GGUF_TYPES[qtype][1]])
    writer = gguf.GGUFWriter(None, gguf_arch_name(model_type))
    writer.add_type("model")
    writer.add_name(name)
    write_hparams(writer, config, file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    with tempfile.TemporaryDirectory(prefix="sage-ft-export-tok-") as scratch:
        meta = write_tokenizer(writer, tokenizer, int(config.vocab_size), scratch)

    tied = bool(getattr(config, "tie_word_embeddings", False))
    plan = []
    for tname, shape, load in gguf_tensors(model_type, config, model.state_dict()):
        ttype = _tensor_type(gguf, tname, shape, wanted, tied)
        if ttype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor_info(tname, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
        elif ttype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor_info(tname, shape, np.dtype(np.float16), int(np.prod(shape)) * 2)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(shape, ttype)
            writer.add_tensor_info(tname, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=ttype)
        plan.append((ttype, load))
    writer.write_header_to_file(path=tmp)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for ttype, load in plan:  # one tensor converted at a time
        data = load()
        if ttype == gguf.GGMLQuantizationType.F16:
            data = data.astype(np.float16)
        elif ttype != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(data, ttype)
        writer.write_tensor_data(np.ascontiguousarray(data))
    writer.close()
    meta["context_length"] = int(config.max_position_embeddings)
    return meta


def export_gguf(source: str | os.PathLike, out: str | os.PathLike, type: str = "f16", *, base: str | None = None,
                modelfile: bool = True, allow_pickle_weights: bool = False) -> Path:
    """Write ``source`` (an adapter folder, merged onto its base in memory, or a merged/full model
    folder) as the GGUF file ``out`` of ``type`` (:data:`GGUF_TYPES`), and an Ollama ``Modelfile``
    in the same folder unless ``modelfile`` is false. Returns ``out``.

    Bad inputs raise a ConfigError before anything is loaded or written. Supported model types:
    llama, mistral, qwen2, qwen3 (``export.arch.ARCHITECTURES``)."""
    from ..utils.io import normal_mode
    from ..utils.noise import known_noise_dropped
    from .modelfile import modelfile_text

    type = str(type).lower()
    path = check_export_args(out, type)
    src = check_source(source, base=base, allow_pickle_weights=allow_pickle_weights)
    with known_noise_dropped():
        model, tokenizer = load_source(src, allow_pickle_weights=allow_pickle_weights)
    _remove_stale_parts(path)
    temps: list[Path] = []
    try:
        tmp = _temp_beside(path, temps)
        try:
            meta = _write_gguf(tmp, model, tokenizer, src.model_type, type, _model_name(src.path))
        except ValueError as exc:  # an unknown tensor, a tokenizer we cannot describe
            raise ConfigError(f"{src.path}: {exc}") from None
        normal_mode(tmp)
        if modelfile:
            mtmp = _temp_beside(path.parent / "Modelfile", temps)
            mtmp.write_text(modelfile_text(path.name, meta, meta.get("context_length")), encoding="utf-8")
            normal_mode(mtmp)
        os.replace(tmp, path)
        if modelfile:
            os.replace(mtmp, path.parent / "Modelfile")
    finally:
        for t in temps:
            t.unlink(missing_ok=True)
    return path


_STALE_AFTER_S = 600  # a .part file nobody wrote to for this long was left by a killed export


def _remove_stale_parts(path: Path) -> None:
    """Temporary files of earlier exports to the same file that were killed (kill -9) while writing:
    removed, with a warning. A concurrent export keeps writing to its own, so it stays fresh."""
    import logging
    import time

    for pattern in (f".{path.name}.*.part", ".Modelfile.*.part"):
        for part in path.parent.glob(pattern):
            try:
                if time.time() - part.stat().st_mtime > _STALE_AFTER_S:
                    part.unlink()
                    logging.getLogger(__name__).warning("removed %s, left behind by an export that was killed", part)
            except OSError:
                pass


def _temp_beside(path: Path, temps: list[Path]) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    temps.append(Path(name))
    return Path(name)
