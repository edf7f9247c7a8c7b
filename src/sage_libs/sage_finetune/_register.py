"""Registration into SAGE's factory (``sage.libs.finetune``, from the optional isage-common).

SAGE's ``__init__`` imports the top-level module ``isage_finetune`` (ours: an alias of this
package), which calls :func:`register_with_sage`; so ``from sage.libs.finetune import
create_trainer`` finds our trainers without importing us first. Importing our package directly
registers too, but only if SAGE is already loaded (it never imports SAGE itself, which would
import us back half-initialised).

Registration is idempotent: a name we registered before is skipped, and a name another package
already holds is left to it (logged, never an error). Our ABCs are registered as virtual
subclasses of SAGE's, so ``issubclass(LoRATrainer, sage.FineTuner)`` holds and SAGE's
``register_*`` accepts our classes.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["register_with_sage", "register_with_sage_if_loaded", "SAGE_MODULE"]

logger = logging.getLogger(__name__)
SAGE_MODULE = "sage.libs.finetune.interface"
_done = False


def register_with_sage() -> bool:
    """Register every trainer, loader, callback and strategy with SAGE. Returns False when
    isage-common is not installed."""
    global _done
    try:
        from sage.libs.finetune import interface as sage
    except ImportError:
        return False
    if _done:
        return True
    from . import interface as ours
    from .registry import registered_classes

    for name in ("FineTuner", "DatasetLoader", "TrainingCallback", "TrainingStrategy"):
        theirs = getattr(sage, name, None)
        if theirs is not None and not issubclass(getattr(ours, name), theirs):
            theirs.register(getattr(ours, name))
    functions = {"trainer": "register_trainer", "loader": "register_loader",
                 "callback": "register_callback", "strategy": "register_strategy"}
    for kind, classes in registered_classes().items():
        register = getattr(sage, functions[kind], None)
        listed = getattr(sage, f"registered_{'strategies' if kind == 'strategy' else kind + 's'}", lambda: [])
        if register is None:
            continue
        for name, cls in classes.items():
            if name in listed():
                existing = _lookup(sage, kind, name)
                if existing is not cls:
                    logger.info("SAGE already has a %s named %r (%s); keeping it", kind, name, existing)
                continue
            try:
                register(name, cls)
            except Exception as exc:  # another package's registry rules: never break an import
                logger.warning("could not register %s %r with SAGE: %s", kind, name, exc)
    _done = True
    return True


def _lookup(sage: Any, kind: str, name: str) -> Any:
    registry = getattr(getattr(sage, "factory", None), f"_{kind.upper()}_REGISTRY", None)
    return registry.get(name) if isinstance(registry, dict) else None


def register_with_sage_if_loaded() -> bool:
    """Register only when SAGE's interface is already imported (see the module docstring)."""
    if SAGE_MODULE in sys.modules:
        return register_with_sage()
    return False
