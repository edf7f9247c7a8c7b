"""``trajectory``: agent runs, as task/trajectory records or OpenAI tool-calling conversations."""

from __future__ import annotations

from typing import Any

from ..data.formats import detect_format
from ..data.trajectory import load_tools
from ..errors import DataFormatError
from .base import FileLoader

__all__ = ["TrajectoryLoader", "load_tools"]


class TrajectoryLoader(FileLoader):
    """JSONL of trajectories (``{"task", "trajectory", "tools"?}``) or tool-calling conversations
    (``{"messages", "tools"?}``). ``tools`` (a list) or ``tools_file`` gives a dataset-wide schema
    for records without their own. Steps are validated when rendered (see
    :func:`..data.trajectory.trajectory_to_conversation`)."""

    def __init__(self, format: str | None = None, on_error: str = "raise", tools: list | None = None,
                 tools_file: str | None = None, **options: Any) -> None:
        if tools is None and tools_file:
            tools = load_tools(tools_file)
        super().__init__(format=format, on_error=on_error, tools=tools, **options)

    def _check_record(self, record: Any, where: str) -> None:
        fmt = detect_format(record, where) if self.format == "auto" else self.format
        if fmt not in ("trajectory", "messages"):
            raise DataFormatError(f"{where}: a {fmt} record; the trajectory loader reads task/trajectory records "
                                  "or messages with tool calls")
