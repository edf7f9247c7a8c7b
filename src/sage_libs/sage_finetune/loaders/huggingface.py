"""``huggingface``: datasets from the Hub, a local ``save_to_disk`` folder, or data files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataFormatError
from .base import FileLoader

__all__ = ["HFDatasetLoader"]


class HFDatasetLoader(FileLoader):
    """Loads with 🤗 datasets and returns a ``datasets.Dataset`` of records.

    ``load(path, split="train", name=None, data_files=None, streaming=False, revision=None)``:
    ``path`` is a hub id (``tatsu-lab/alpaca``), a folder written by ``Dataset.save_to_disk`` or a
    builder name such as ``json`` with ``data_files``. ``trust_remote_code`` is never enabled.
    """

    def load(self, data_path: str | os.PathLike, max_samples: int | None = None, split: str = "train",
             name: str | None = None, data_files: Any = None, streaming: bool = False,
             revision: str | None = None, **kwargs: Any) -> Any:
        import datasets

        path = Path(data_path)
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataFormatError(f"{path}: no split {split!r}; the saved dataset has {', '.join(ds)}")
                ds = ds[split]
        else:
            try:
                ds = datasets.load_dataset(str(data_path), name, split=split, data_files=data_files,
                                           streaming=streaming, revision=revision, **kwargs)
            except FileNotFoundError as exc:
                if path.is_dir():
                    raise DataFormatError(f"{data_path}: a folder with no data files the datasets library reads "
                                          "(.jsonl, .json, .parquet, .csv, .arrow, ...) and no saved dataset "
                                          "(dataset_info.json); expected a data file or a dataset folder") from None
                raise DataFormatError(f"{data_path}: cannot load the dataset ({exc})") from None
            except ValueError as exc:
                raise DataFormatError(f"{data_path}: {exc}") from None
            except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as exc:
                if path.exists():
                    raise DataFormatError(f"{data_path}: cannot load the dataset ({exc})") from None
                # the hub: offline (HF_HUB_OFFLINE=1, no network), or no dataset by that name
                offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") \
                    or "offline" in str(exc).lower()
                why = ("the Hugging Face Hub cannot be reached (offline)" if offline
                       else f"the Hugging Face Hub has no dataset by that name or cannot be reached ({exc})")
                raise DataFormatError(f"{data_path}: not a local file or folder, and {why}; give a local "
                                      ".jsonl/.json/.parquet file, a folder written by Dataset.save_to_disk, or a "
                                      "hub dataset id while online") from None
        if max_samples is not None:
            ds = ds.take(max_samples) if streaming else ds.select(range(min(max_samples, len(ds))))
        return ds

    def stream(self, data_path: str | os.PathLike, split: str = "train", **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Records one at a time; hub datasets and data files are read with ``streaming=True``."""
        path = Path(data_path)
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            yield from self.load(data_path, split=split)  # memory-mapped Arrow: already constant memory
        else:
            yield from self.load(data_path, split=split, streaming=True, **kwargs)
