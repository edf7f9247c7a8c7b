"""The one version string of isage-finetune (four parts: major.minor.patch.build)."""

__version__ = "0.1.0.0"
