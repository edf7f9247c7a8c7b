"""Small helpers shared by the built-in callbacks (standard library only)."""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(package: str, extra: str) -> ImportError:
    # the extra's package by name: 'pip install isage-finetune[...]' would fetch an unrelated PyPI project
    return ImportError(f"{package} is not installed; install it with: pip install {package} (the [{extra}] extra "
                       "of an isage-finetune checkout: pip install -e '.[" + extra + "]')")
