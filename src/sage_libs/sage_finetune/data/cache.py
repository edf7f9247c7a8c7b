"""A disk cache of tokenized datasets, so that preparing the same data again costs a file read.

The key is a SHA-256 over everything the result depends on:

* the records' content (every record serialised as sorted-key JSON; for files read by our loaders
  this covers the file content and which of its lines were used, e.g. after an eval split);
* the tokenizer (its full ``tokenizer.json`` serialisation, special tokens and class);
* the chat template actually used and every rendering option (format, max length, masking,
  system prompt, agent format, dataset tools, on_error);
* the code: the source of the data modules and the versions of this package, transformers,
  tokenizers and jinja2 (so a change in how records are rendered never serves stale tokens).

A ``formatting_func`` is user code we cannot hash, so data prepared with one is never cached.
Entries are written to a temporary folder and renamed into place (atomic; concurrent writers of
the same key keep whichever finished first) and read memory-mapped. Location:
``data.cache_dir``, else ``$SAGE_FINETUNE_CACHE``, else ``~/.cache/isage-finetune``; each entry
is a folder ``tokenized/<key>/`` holding ``data.arrow`` and ``manifest.json``, safe to delete.

The cache verifies what it returns: ``manifest.json`` records the size and SHA-256 of
``data.arrow`` as written, and every read checks both (hashing runs at disk speed, a small part of
what tokenizing again would cost). An entry that does not match (truncated, damaged, or rewritten
with other contents, however valid) is never used: it is removed with a warning and rebuilt from
the records, so the next run reads a good entry again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["cache_root", "cache_key", "load_cached", "store_cached", "records_fingerprint", "tokenizer_fingerprint"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2
_DATA_MODULES = ("render.py", "pipeline.py", "formats.py", "conversation.py", "trajectory.py", "cache.py")


def cache_root(configured: str | os.PathLike | None = None) -> Path:
    """``configured``, else ``$SAGE_FINETUNE_CACHE``, else ``~/.cache/isage-finetune``."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("SAGE_FINETUNE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "isage-finetune"


def records_fingerprint(records: Any) -> str | None:
    """SHA-256 of the records' content, or None when they cannot be read twice (a stream)."""
    if not hasattr(records, "__len__") or not hasattr(records, "__getitem__"):
        return None
    h = hashlib.sha256()
    encode = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=_unhashable).iterencode
    step = 1 << 20
    try:
        for record in records:
            # piece by piece (the same bytes as one dumps()): a huge record is never copied whole
            for chunk in encode(record):
                for i in range(0, len(chunk), step):
                    h.update(chunk[i:i + step].encode("utf-8", "surrogatepass"))
            h.update(b"\n")
    except _Unhashable:
        return None
    return h.hexdigest()


class _Unhashable(TypeError):
    pass


def _unhashable(value: Any) -> Any:
    raise _Unhashable(type(value).__name__)  # an object with no stable serialisation: do not cache


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    h.update(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode("utf-8"))
    else:  # a slow (Python) tokenizer: its vocabulary and added tokens
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode("utf-8"))
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    for name in ("split_special_tokens", "add_bos_token", "add_eos_token", "clean_up_tokenization_spaces"):
        h.update(f"{name}={getattr(tokenizer, name, None)!r};".encode())
    return h.hexdigest()


_code_hash: str | None = None


def _code_fingerprint() -> str:
    global _code_hash
    if _code_hash is None:
        import jinja2
        import tokenizers
        import transformers

        from .._version import __version__

        h = hashlib.sha256(f"{CACHE_FORMAT}|{__version__}|{transformers.__version__}|{tokenizers.__version__}|"
                           f"{jinja2.__version__}".encode())
        here = Path(__file__).resolve().parent
        for name in _DATA_MODULES:
            try:
                h.update((here / name).read_bytes())
            except OSError:
                h.update(name.encode())
        _code_hash = h.hexdigest()
    return _code_hash


def cache_key(records: Any, tokenizer: Any, options: dict[str, Any]) -> str | None:
    """The key for these records, tokenizer and options; None when they cannot be cached."""
    records_fp = records_fingerprint(records)
    if records_fp is None:
        return None
    try:
        opts = json.dumps(options, sort_keys=True, ensure_ascii=False, default=_unhashable)
    except _Unhashable:
        return None
    h = hashlib.sha256()
    for part in (records_fp, tokenizer_fingerprint(tokenizer), opts, _code_fingerprint()):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def _entry(root: Path, key: str) -> Path:
    return root / "tokenized" / key


MANIFEST = "manifest.json"
_verified: dict[str, tuple[int, int, str]] = {}  # data.arrow this process wrote or checked -> (size, mtime, sha)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _discard(entry: Path, why: str) -> None:
    """Remove a bad entry (renamed away first, so that no reader finds it half-deleted)."""
    logger.warning("tokenized-data cache entry %s %s; rebuilding it from the records", entry, why)
    try:
        trash = Path(tempfile.mkdtemp(prefix=f".bad-{entry.name[:16]}-", dir=entry.parent))
        os.replace(entry, trash / entry.name)
    except OSError:
        trash = entry
    shutil.rmtree(trash, ignore_errors=True)


def load_cached(root: Path, key: str) -> tuple[Any, dict[str, Any]] | None:
    """``(dataset, stats)`` of a cached entry whose data matches its manifest, or None (a miss; a bad
    entry is removed, so the caller rebuilds and stores it again)."""
    entry = _entry(root, key)
    if not entry.is_dir():
        return None
    data = entry / "data.arrow"
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        expected = manifest["data.arrow"]
        stats = manifest["stats"]
        st = data.stat()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _discard(entry, f"is incomplete or unreadable ({type(exc).__name__}: {exc})")
        return None
    if st.st_size != expected.get("size"):
        _discard(entry, f"does not match its manifest (data.arrow has {st.st_size} bytes, {expected.get('size')} "
                        "were written: truncated or changed on disk)")
        return None
    memo = _verified.get(str(data))
    if memo != (st.st_size, st.st_mtime_ns, expected.get("sha256")):
        digest = _sha256(data)
        if digest != expected.get("sha256"):
            _discard(entry, "does not match its manifest (the SHA-256 of data.arrow differs from the one written: "
                            "its contents changed on disk)")
            return None
        _verified[str(data)] = (st.st_size, st.st_mtime_ns, digest)
    try:
        from datasets import Dataset

        return Dataset.from_file(str(data)), stats
    except Exception as exc:  # noqa: BLE001 - a damaged entry is a miss, never a failed run
        _discard(entry, f"cannot be read ({exc})")
        return None


def store_cached(root: Path, key: str, table: Any, stats: dict[str, Any]) -> Path | None:
    """Write an entry (a ``pyarrow.Table`` and the stats) atomically, with the size and SHA-256 of its
    data in ``manifest.json``; returns its folder (None if it could not be written)."""
    import pyarrow as pa

    entry = _entry(root, key)
    if entry.is_dir() and load_cached(root, key) is not None:
        return entry
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=entry.parent))
        with pa.OSFile(str(tmp / "data.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        digest = _sha256(tmp / "data.arrow")
        manifest = {"format": CACHE_FORMAT, "key": key, "stats": stats,
                    "data.arrow": {"size": (tmp / "data.arrow").stat().st_size, "sha256": digest}}
        (tmp / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        try:
            os.rename(tmp, entry)
        except OSError:  # another process stored the same key first: keep theirs
            if not entry.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return entry
        st = (entry / "data.arrow").stat()
        _verified[str(entry / "data.arrow")] = (st.st_size, st.st_mtime_ns, digest)
        return entry
    except OSError as exc:
        logger.warning("could not write the tokenized-data cache under %s: %s", entry.parent, exc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return None
