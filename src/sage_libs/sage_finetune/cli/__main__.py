"""``python -m sage_libs.sage_finetune.cli``: what torchrun launches (``-m sage_libs.sage_finetune.cli``)."""

import sys

from . import main

sys.exit(main())
