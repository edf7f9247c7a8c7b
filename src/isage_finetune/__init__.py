"""``isage_finetune``: the module SAGE's ``sage.libs.finetune`` imports to discover
implementations. It is an alias of :mod:`sage_libs.sage_finetune` and registers everything
with SAGE's factory on import."""

from sage_libs.sage_finetune import *  # noqa: F401,F403
from sage_libs.sage_finetune import __all__, __version__  # noqa: F401
from sage_libs.sage_finetune._register import register_with_sage

register_with_sage()
