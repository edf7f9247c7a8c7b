"""``parquet``: Parquet files, one record per row (any supported record format)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataFileError
from .base import FileLoader, _check_file

__all__ = ["ParquetLoader"]


class ParquetLoader(FileLoader):
    """Reads rows as records. ``stream`` reads one row group batch at a time (constant memory).
    Locations in errors are ``file:ROW`` with 1-based row numbers."""

    batch_size = 1024

    def _iter(self, data_path: str | os.PathLike, skipped: list[int] | None = None) -> Iterator[tuple[int, Any]]:
        import pyarrow.parquet as pq

        p = _check_file(data_path)
        try:
            pf = pq.ParquetFile(p)
        except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
            raise DataFileError(f"{p}: not a readable Parquet file ({_one_line(exc)})") from None
        row = 0
        batches = pf.iter_batches(batch_size=self.batch_size)
        while True:
            try:  # a file whose footer reads but whose pages are corrupt fails here, batch by batch
                batch = next(batches, None)
                records = None if batch is None else batch.to_pylist()
            except Exception as exc:
                raise DataFileError(f"{p}: not a readable Parquet file (the rows after row {row}: "
                                    f"{_one_line(exc)})") from None
            if records is None:
                break
            for record in records:
                row += 1
                yield row, _drop_nulls(record)
        if row == 0:
            raise DataFileError(f"{Path(p)}: the file has no rows")


def _one_line(exc: Exception) -> str:
    """pyarrow's messages can span lines (thrift's); an error message is one line."""
    return " ".join(str(exc).split())


def _drop_nulls(record: dict[str, Any]) -> dict[str, Any]:
    """Arrow gives every row every column; a null column is an absent field in our formats."""
    return {k: v for k, v in record.items() if v is not None}
