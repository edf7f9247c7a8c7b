"""Any data source -> record collections, decided in one place.

A source is a file path, a list of paths, loaded records, a ``datasets.Dataset`` or a
:class:`MultiSource`. Which loader reads a path (``data.loader``, or ``auto``: by file suffix) is
decided by :func:`loader_for` for training, evaluation, the agent evaluation and ``data inspect``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["MultiSource", "loader_name", "loader_for", "record_sets", "split_records", "mixture_indices",
           "check_source_entries", "check_columns"]

_ENTRY_KEYS = ("path", "weight", "samples", "columns")

_BY_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class MultiSource(list):
    """Several record collections (one per file) that are tokenized separately, then joined."""


def loader_name(path: str | os.PathLike, data_config: Any) -> str:
    """``data.loader``, or for ``auto`` the loader for the path's suffix (anything else is a hub
    id or a ``save_to_disk`` folder: ``huggingface``)."""
    if data_config.loader != "auto":
        return data_config.loader
    return _BY_SUFFIX.get(Path(path).suffix, "huggingface")


def loader_for(path: str | os.PathLike, data_config: Any) -> Any:
    from ..registry import create_loader

    return create_loader(loader_name(path, data_config), format=data_config.format, on_error=data_config.on_error)


def is_source_list(data: Any) -> bool:
    """A path or a list of paths / ``{path: ...}`` entries (rather than in-memory records)."""
    if isinstance(data, (str, os.PathLike)):
        return True
    return (isinstance(data, (list, tuple)) and bool(data) and not isinstance(data, MultiSource)
            and all(isinstance(d, (str, os.PathLike)) or (isinstance(d, dict) and "path" in d) for d in data))


def record_sets(data: Any, data_config: Any, split: str) -> list[Any]:
    """A path, a list of paths (or ``{path, weight|samples, columns}`` entries), or in-memory
    data -> one or more record collections. Training data is capped at ``data.max_samples``
    records per file. A collection from a weighted entry carries ``mix`` (see :func:`mixture_indices`)."""
    max_samples = data_config.max_samples if split == "train" else None
    if isinstance(data, MultiSource):
        return list(data)
    if not is_source_list(data):
        return [data]
    out = []
    for entry in [data] if isinstance(data, (str, os.PathLike)) else data:
        spec = dict(entry) if isinstance(entry, dict) else {"path": entry}
        path = str(spec["path"])
        records = loader_for(path, data_config).load(path, max_samples=max_samples)
        columns = spec.get("columns", data_config.columns)
        if columns:
            records = rename_columns(records, columns, path)
        mix = {k: spec[k] for k in ("weight", "samples") if spec.get(k) is not None}
        if mix:
            records.mix = mix
        out.append(records)
    return out


def rename_columns(records: Any, columns: dict[str, str], source: str) -> Any:
    """Records whose fields ``columns`` maps ``{expected: actual}`` renamed to the expected names."""
    from .records import RecordList

    renamed = []
    for record in records:
        if isinstance(record, dict):
            record = dict(record)
            for expected, actual in columns.items():
                if actual in record and expected != actual:
                    record[expected] = record.pop(actual)
        renamed.append(record)
    return RecordList(renamed, source=getattr(records, "source", None) or source,
                      line_numbers=getattr(records, "line_numbers", None), skipped=getattr(records, "skipped", 0))


def mixture_indices(sizes: list[int], specs: list[dict[str, Any] | None], seed: int) -> list[list[int]]:
    """Which examples of each source a mixture uses, as indices into each source.

    ``specs[i]`` is None (every example once), ``{"samples": N}`` (exactly N) or ``{"weight": W}``
    (with weights, the mixture has as many examples as all sources together, shared in proportion
    to the weights). N larger than a source repeats it whole and then draws the rest; smaller
    draws N. Draws are seeded, so a run is reproducible.
    """
    import random

    rng = random.Random(seed)
    weights = [s.get("weight") for s in specs if s]
    total_weight = sum(w for w in weights if w is not None)
    total = sum(sizes)
    out = []
    for size, spec in zip(sizes, specs):
        if not spec or size == 0:
            out.append(list(range(size)))
            continue
        want = spec["samples"] if "samples" in spec else round(total * spec["weight"] / total_weight)
        whole, rest = divmod(want, size)
        out.append([i for _ in range(whole) for i in range(size)] + sorted(rng.sample(range(size), rest)))
    return out


def check_source_entries(value: Any, option: str) -> None:
    """``{path, weight|samples, columns}`` entries of a train_file list: known keys, sane values."""
    if not isinstance(value, list):
        return
    weighted = [isinstance(e, dict) and e.get("weight") is not None for e in value]
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            continue
        where = f"{option}[{i}]"
        unknown = [k for k in entry if k not in _ENTRY_KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; an entry has path and optionally weight, "
                              "samples, columns")
        if not isinstance(entry.get("path"), str) or not entry["path"]:
            raise ConfigError(f"{where}: 'path' is required (a data file, a saved dataset folder or a hub id)")
        weight, samples = entry.get("weight"), entry.get("samples")
        if weight is not None and samples is not None:
            raise ConfigError(f"{where}: give weight or samples, not both")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                                   or not 0 < weight < float("inf")):
            raise ConfigError(f"{where}: weight must be a positive number, got {weight!r}")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise ConfigError(f"{where}: samples must be a whole number >= 1, got {samples!r}")
        check_columns(entry.get("columns"), f"{where}.columns")
    if any(weighted) and not all(weighted):
        i = weighted.index(False)
        raise ConfigError(f"{option}[{i}]: has no weight while other entries do; give every entry a weight "
                          "(or use samples: N for a fixed count)")


def check_columns(columns: Any, option: str) -> None:
    if columns is None:
        return
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
        raise ConfigError(f"{option}: expected a mapping of field names {{expected: actual}}, e.g. "
                          "{instruction: question, output: answer}")


def split_records(records: Any, ratio: float, seed: int) -> tuple[Any, Any]:
    """A seeded ``ratio`` of ``records`` held out for evaluation: ``(train, eval)``, each keeping
    the source file and line numbers for error messages."""
    import random

    from .records import RecordList

    n = len(records)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(n * ratio)))
    ev, tr = sorted(order[:n_eval]), sorted(order[n_eval:])
    source = getattr(records, "source", None)
    lines = getattr(records, "line_numbers", None)

    def take(idx: list[int]) -> RecordList:
        return RecordList([records[i] for i in idx], source=source,
                          line_numbers=[lines[i] for i in idx] if lines else None)

    train = take(tr)
    if getattr(records, "mix", None):
        train.mix = records.mix  # the held-out part is evaluated whole
    return train, take(ev)
