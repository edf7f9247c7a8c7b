"""The set-up scripts: the lock files cover what the README's commands install, and scripts/lock.sh
writes a lock only from an environment whose test pass succeeded (fake environments, no pip run)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from .paths import REPO

LOCK = REPO / "requirements" / "constraints.txt"
SAGE_LOCK = REPO / "requirements" / "constraints-sage.txt"


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: {line!r} is not name==version"
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def requirement_names(specs: list[str]) -> set[str]:
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", s).group(0)).lower() for s in specs}


def test_the_locks_pin_every_dependency_the_scripts_install():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    main = requirement_names(project["dependencies"] + sum((extras[e] for e in ("dev", "qlora", "tensorboard",
                                                                               "wandb", "deepspeed")), []))
    assert main - set(pins(LOCK)) == set()
    sage = requirement_names(project["dependencies"] + extras["dev"] + extras["sage"] + ["isage-cli"])
    assert sage - set(pins(SAGE_LOCK)) == set()
    for lock in (LOCK, SAGE_LOCK):
        assert pins(lock)["torch"] == "2.13.0"  # no local label: it constrains the CPU and CUDA builds alike
        assert "isage-finetune" not in pins(lock)  # the project itself is installed editable, never pinned


def test_every_setup_path_uses_the_lock():
    readme = (REPO / "README.md").read_text()
    assert readme.splitlines()[3].startswith("bash scripts/demo.sh") and \
        readme.splitlines()[4].startswith("bash scripts/test.sh")
    assert "bash scripts/test.sh\n" in (REPO / ".ci" / "run").read_text()
    assert "make_venv .venv requirements/constraints.txt" in (REPO / "scripts" / "demo.sh").read_text()
    test_sh = (REPO / "scripts" / "test.sh").read_text()
    assert "LOCK=requirements/constraints.txt SAGE_LOCK=requirements/constraints-sage.txt" in test_sh


@pytest.fixture
def fake_checkout(tmp_path):
    """scripts/ copied beside two fake virtual environments whose python answers `pip freeze`."""
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    for venv, packages in ((".venv", "torch==2.13.0+cpu\ntransformers==5.25.0"),
                           (".venv-sage", "isage-cli==0.2.4.43\ntorch==2.13.0+cpu\ntransformers==5.25.0")):
        python = tmp_path / venv / "bin" / "python"
        python.parent.mkdir(parents=True)
        (tmp_path / venv / "freeze.txt").write_text(packages + "\n")
        # `python -c ...` prints the version, anything else (`-m pip freeze ...`) the packages
        python.write_text(f'#!/bin/sh\n[ "$1" = -c ] && echo 3.11 || cat "{tmp_path / venv / "freeze.txt"}"\n')
        python.chmod(0o755)
    return tmp_path


def lock_sh(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / "scripts" / "lock.sh"), *args], capture_output=True, text=True,
                          timeout=60)


def test_lock_sh_needs_a_passing_test_run_for_what_is_installed(fake_checkout):
    result = lock_sh(fake_checkout)
    assert result.returncode == 2 and "lock.sh: .venv has no passing run" in result.stderr
    assert not (fake_checkout / "requirements" / "constraints.txt").exists()
    # what test.sh writes after a passing pass: the frozen versions
    for venv in (".venv", ".venv-sage"):
        frozen = subprocess.run(["bash", "-c", f". scripts/_venv.sh && frozen_versions {venv}"], cwd=fake_checkout,
                                capture_output=True, text=True, check=True).stdout
        (fake_checkout / venv / ".suite-passed").write_text(frozen)
    result = lock_sh(fake_checkout)
    assert result.returncode == 0, result.stderr
    lock = fake_checkout / "requirements" / "constraints.txt"
    assert pins(lock) == {"torch": "2.13.0", "transformers": "5.25.0"}
    assert pins(fake_checkout / "requirements" / "constraints-sage.txt")["isage-cli"] == "0.2.4.43"
    # an environment changed after its pass is refused
    (fake_checkout / ".venv" / ".suite-passed").write_text("torch==2.13.0\ntransformers==5.24.0\n")
    assert lock_sh(fake_checkout).returncode == 2


def test_lock_drift_lists_what_the_canary_has_newer(fake_checkout):
    lock = fake_checkout / "lock.txt"
    lock.write_text("# header\nnumpy==2.0.0\ntorch==2.13.0\ntransformers==5.24.0\n")
    drift = subprocess.run(["bash", "-c", f". scripts/_venv.sh && lock_drift .venv-sage {lock}"], cwd=fake_checkout,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split() for line in drift] == [["isage-cli", "(none)", "->", "0.2.4.43"],
                                                ["numpy", "2.0.0", "->", "(none)"],
                                                ["transformers", "5.24.0", "->", "5.25.0"]]


def test_readme_is_a_front_door_and_every_docs_page_is_in_the_site():
    import yaml

    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    in_nav = {next(iter(entry.values())) for entry in nav}
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages == in_nav, pages ^ in_nav
    linked = set(re.findall(r"\]\(docs/([a-z_-]+\.md)\)", readme))
    assert linked == pages - {"index.md"}, (pages - {"index.md"}) ^ linked
    assert "bash scripts/docs.sh" in (REPO / ".ci" / "run").read_text()
