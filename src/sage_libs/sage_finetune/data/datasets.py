"""One split of a run's data (a path, paths, records or a Dataset) -> one tokenized
``datasets.Dataset`` with ``input_ids``, ``labels`` and ``length``: record sets
(:func:`.sources.record_sets`) are tokenized through the cache (:func:`.pipeline.prepare_records`),
weighted sources are mixed, and the training split is packed when ``data.packing`` asks."""

from __future__ import annotations

from typing import Any

from ..errors import DataFormatError

__all__ = ["prepare_split", "require_examples", "pack_dataset"]


def require_examples(n_examples: int, stats: Any, source: str) -> None:
    """Nothing trainable left is an input error, named with what happened to the records."""
    if n_examples == 0:
        raise DataFormatError(f"{source}: no trainable examples ({stats.records} records, {stats.skipped_invalid} "
                              f"invalid, {stats.dropped_no_trained_tokens} with every trained token cut by "
                              "max_seq_length)")


def prepare_split(record_collections: list[Any], split: str, *, tokenizer: Any, render_options: Any,
                  data_config: Any, seed: int, max_seq_length: int) -> tuple[Any, dict[str, Any]]:
    """The tokenized dataset of one split and its statistics (counts, mixture, packing) for
    metrics.json. ``record_collections``: what :func:`.sources.record_sets` returned for the split."""
    from datasets import Dataset, concatenate_datasets

    from .pipeline import PrepareStats, is_tokenized, prepare_records
    parts, stats_parts, mixes, sources = [], [], [], []
    for records in record_collections:
        mixes.append(getattr(records, "mix", None))
        sources.append(getattr(records, "source", None))
        if is_tokenized(records):
            parts.append(records if isinstance(records, Dataset) else Dataset.from_list([dict(x) for x in records]))
            continue
        dataset, stats = prepare_records(  # through the tokenized-data cache (data.cache, data.cache_dir)
            records, tokenizer, render_options, cache=data_config.cache, cache_dir=data_config.cache_dir)
        stats.skipped_invalid += getattr(records, "skipped", 0)  # lines the loader could not parse
        stats_parts.append(stats)
        require_examples(len(dataset), stats, getattr(records, "source", None) or f"{split} data")
        parts.append(dataset)
    summary: dict[str, Any] = PrepareStats.merge(stats_parts).to_dict() if stats_parts else {}
    dataset = mix_sources(parts, mixes, sources, seed, summary) if split == "train" else \
        (parts[0] if len(parts) == 1 else concatenate_datasets(parts))
    if split == "train" and data_config.packing:
        dataset = pack_dataset(dataset, max_seq_length, summary)
    return dataset, summary


def mix_sources(parts: list[Any], mixes: list[Any], sources: list[Any], seed: int, summary: dict[str, Any]) -> Any:
    """One training dataset from the tokenized sources: weighted / counted ``data.train_file`` entries
    (``mix``) drawn as :func:`.sources.mixture_indices` says, the draw recorded in ``summary``. The SFT
    and the preference paths both mix here."""
    from datasets import concatenate_datasets

    from .sources import mixture_indices

    if any(mixes):
        picks = mixture_indices([len(p) for p in parts], mixes, seed)
        summary["mixture"] = [{"source": src, "examples": len(part), "used": len(idx), **(mix or {})}
                              for src, part, idx, mix in zip(sources, parts, picks, mixes)]
        parts = [part.select(idx) for part, idx in zip(parts, picks)]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def pack_dataset(dataset: Any, capacity: int, summary: dict[str, Any]) -> Any:
    """Rows of whole examples up to ``capacity`` tokens (:func:`.packing.pack_columns`)."""
    from datasets import Dataset

    from .packing import pack_columns, packing_efficiency

    packed = Dataset.from_dict(pack_columns({"input_ids": dataset["input_ids"], "labels": dataset["labels"]},
                                            capacity))
    summary["packed_rows"] = len(packed)
    summary["packing_efficiency"] = round(packing_efficiency(packed["length"], capacity), 4)
    return packed
