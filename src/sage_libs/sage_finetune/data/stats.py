"""What happened to the records of one dataset: counts a user needs to trust the data (truncated,
dropped, trained-token ratio), kept by :mod:`.pipeline` and the tokenized-data cache."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PrepareStats"]


@dataclass
class PrepareStats:
    """What happened to the records of one dataset."""

    records: int = 0
    examples: int = 0
    skipped_invalid: int = 0
    truncated: int = 0
    cut_before_tokenizing: int = 0  # records so long that their text was cut before rendering (see cut_item)
    dropped_no_trained_tokens: int = 0
    control_token_text: int = 0
    warnings: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    formats: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def merge(cls, parts: list["PrepareStats"]) -> "PrepareStats":
        total = cls()
        for part in parts:
            for name in ("records", "examples", "skipped_invalid", "truncated", "cut_before_tokenizing",
                         "dropped_no_trained_tokens", "control_token_text", "warnings", "tokens", "trained_tokens"):
                setattr(total, name, getattr(total, name) + getattr(part, name))
            total.formats.update(part.formats)
            total.errors.extend(part.errors)
        return total

    def state(self) -> dict[str, Any]:
        """Every field, JSON-serialisable (for the tokenized-data cache)."""
        out = dict(self.__dict__)
        out["formats"] = dict(self.formats)
        out["errors"] = list(self.errors)
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "PrepareStats":
        names = {f for f in cls.__dataclass_fields__}
        stats = cls(**{k: v for k, v in state.items() if k in names and k not in ("formats", "errors")})
        stats.formats = Counter(state.get("formats", {}))
        stats.errors = list(state.get("errors", []))
        return stats

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("formats", "errors")}
        out["formats"] = dict(self.formats)
        out["first_errors"] = self.errors[:5]
        out["trained_token_ratio"] = round(self.trained_tokens / self.tokens, 4) if self.tokens else 0.0
        return out
