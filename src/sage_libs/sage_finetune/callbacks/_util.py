"""Small helpers shared by the built-in callbacks (standard library only)."""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(package: str, extra: str) -> ImportError:
    return ImportError(f"{package} is not installed; install it with: pip install 'isage-finetune[{extra}]'")
