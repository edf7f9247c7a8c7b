"""Raw records as a loader returns them: the first stage of the data flow (records -> conversation ->
tokens with labels -> batches)."""

from __future__ import annotations

__all__ = ["RecordList"]


class RecordList(list):
    """A list of raw records that remembers where each came from (``source:line``)."""

    def __init__(self, records: list | None = None, *, source: str | None = None,
                 line_numbers: list[int] | None = None, skipped: int = 0) -> None:
        super().__init__(records or [])
        self.source = source
        self.line_numbers = line_numbers
        self.skipped = skipped
