"""Where the tests' files are: the repository, the shipped example data, and the test assets."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DATA = REPO / "examples" / "data"
AGENT_DATA = REPO / "examples" / "agent"
ASSETS = Path(__file__).resolve().parent / "assets"
TEMPLATES = ASSETS / "templates"
