"""Every command the README and docs/ show still runs: the README's command-line block is run as
written (in a scratch folder holding the example configs and data); every other `sage-finetune`
line parses with the real argument parser; every script and flag they name exists."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .paths import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CLI_MODULE = "-m sage_libs.sage_finetune.cli "


def shell_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, command) of every line of the file's ```bash blocks, comments removed and
    backslash continuations joined."""
    out, block, pending = [], False, None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            block = line.strip() in ("```bash", "```sh", "```shell") if not block else False
            continue
        if not block:
            continue
        text = re.sub(r"\s+#.*$", "", line).strip() if not line.lstrip().startswith("#") else ""
        if pending is not None:
            text, number = pending[1] + " " + text, pending[0]
            pending = None
        if text.endswith("\\"):
            pending = (number, text[:-1].strip())
            continue
        if text:
            out.append((number, text))
    return out


def documented(prefix: str) -> list[tuple[str, str]]:
    return [(f"{path.relative_to(REPO)}:{number}", line) for path in DOCS for number, line in shell_lines(path)
            if line.startswith(prefix) or CLI_MODULE in line and prefix == "sage-finetune "]


def test_the_docs_show_commands_at_all():
    # a parser that finds nothing would make every test below pass vacuously
    assert len(documented("sage-finetune ")) >= 12 and len(documented("bash scripts/")) >= 5


@pytest.mark.parametrize("where,line", documented("sage-finetune "), ids=lambda v: v if ":" in v else "")
def test_every_documented_sage_finetune_command_parses(where, line):
    from sage_libs.sage_finetune.cli import _parse_args, build_parser

    if "..." in line:  # "sage-finetune ... training.x=y": only an override to add to another command
        overrides = [w for w in shlex.split(line) if "=" in w]
        assert overrides and all(re.match(r"^[a-z_]+\.[a-z_0-9]+=", w) for w in overrides), where
        return
    words = shlex.split(line.split(CLI_MODULE, 1)[1] if CLI_MODULE in line else line)
    words = words[1:] if words[0] == "sage-finetune" else words
    try:
        _parse_args(build_parser(), words)  # as main() parses: overrides may follow options
    except SystemExit as exc:
        pytest.fail(f"{where}: `{line}` does not parse (exit {exc.code})")


@pytest.mark.parametrize("where,line", documented("bash scripts/") + documented("python "),
                         ids=lambda v: v if ":" in v else "")
def test_every_documented_script_and_flag_exists(where, line):
    words = shlex.split(line)
    script = REPO / words[1]
    assert script.is_file(), f"{where}: {words[1]} does not exist"
    text = script.read_text(encoding="utf-8")
    if script.name == "test.sh":  # it passes the options it does not know on to pytest
        text += (REPO / "tests" / "conftest.py").read_text(encoding="utf-8")
    for flag in (w for w in words[2:] if w.startswith("--")):
        assert re.search(rf"""["' ]{re.escape(flag)}["'= )|]""", text), f"{where}: {words[1]} has no {flag} option"


def test_the_readme_command_line_block_runs_as_written(tmp_path):
    """The README's `sage-finetune` block, line by line, in a folder holding examples/ (the paths
    it uses are relative to the repository root): each command exits 0 and leaves what it says."""
    readme = REPO / "README.md"
    block = [(n, line) for n, line in shell_lines(readme) if line.startswith("sage-finetune ")]
    assert [line.split()[1] for _n, line in block][:7] == ["tiny-model", "train", "eval", "merge", "chat", "options",
                                                           "plan"]
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "2"}
    assert shutil.which("sage-finetune", path=env["PATH"]), "the sage-finetune command is not installed"
    for number, line in block:
        chat = line.split()[1] == "chat"
        proc = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                              input="Hello\n/exit\n" if chat else None)
        assert proc.returncode == 0, f"README.md:{number}: `{line}` exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    run = tmp_path / "outputs" / "lora-tiny"
    for name in ("adapter/adapter_model.safetensors", "merged/model.safetensors", "metrics.json", "loss.png"):
        assert (run / name).is_file(), name
