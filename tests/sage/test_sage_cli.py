"""``sage finetune`` through SAGE's real command line (the ``sage`` console script of PyPI's
isage-cli, a Typer app that loads ``sage.cli.plugins`` entry points). scripts/test.sh installs
isage-cli for its SAGE pass; without it these tests are skipped."""

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from ..paths import EXAMPLE_DATA  # noqa: E402


def _sage_script() -> str | None:
    try:
        metadata.distribution("isage-cli")
    except metadata.PackageNotFoundError:
        return None
    beside = Path(sys.executable).parent / "sage"
    return str(beside) if beside.is_file() else shutil.which("sage")


SAGE = _sage_script()
needs_sage_cli = pytest.mark.skipif(SAGE is None, reason="isage-cli (SAGE's `sage` command) is not installed; "
                                    "scripts/test.sh installs it for the SAGE pass")


def sage(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real ``sage`` console script from the repository root (where the example configs'
    relative paths point)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "NO_COLOR": "1",
           "COLUMNS": "120"}
    return subprocess.run([SAGE, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=EXAMPLE_DATA.parents[1])


@needs_sage_cli
def test_sage_lists_and_helps_finetune():
    listing = sage("--help")
    assert listing.returncode == 0, listing.stderr
    assert "finetune" in listing.stdout
    result = sage("finetune", "--help")
    assert result.returncode == 0, result.stderr
    # our argparse help, not Typer's: every sub-command is there
    assert result.stdout.startswith("usage: sage-finetune")
    for command in ("train", "eval", "merge", "data", "chat", "tiny-model", "options"):
        assert command in result.stdout
    train_help = sage("finetune", "train", "--help")
    assert train_help.returncode == 0 and "sage-finetune options" in train_help.stdout


@needs_sage_cli
def test_sage_finetune_bad_config_exits_2(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("method: lora\ntraining: {learning_rat: 1e-4}\n")
    result = sage("finetune", "train", str(config))
    assert result.returncode == 2
    assert "sage-finetune train: error:" in result.stderr
    assert "unknown option 'learning_rat'" in result.stderr and "did you mean 'learning_rate'?" in result.stderr
    assert "Traceback" not in result.stderr and "No such command" not in result.stderr
    # argparse's own usage errors and a missing command keep their exit code too
    assert sage("finetune", "train", "--no-such-flag").returncode == 2
    assert sage("finetune").returncode == 2


@needs_sage_cli
def test_sage_finetune_tiny_model_then_train(tmp_path):
    model = tmp_path / "tiny"
    built = sage("finetune", "tiny-model", str(model), "--corpus", str(EXAMPLE_DATA / "alpaca_train.jsonl"))
    assert built.returncode == 0, built.stderr[-3000:]
    assert f"written to {model}" in built.stdout
    assert json.loads((model / "config.json").read_text())["model_type"] == "llama"
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()

    out = tmp_path / "run"
    trained = sage("finetune", "train", str(EXAMPLE_DATA.parent / "configs" / "lora_tiny.yaml"),
                   f"training.model_name_or_path={model}", f"training.output_dir={out}", "training.max_steps=2",
                   "training.save_strategy=no", "training.eval_on_start=false", "data.eval_file=null",
                   "data.max_samples=8",
                   "training.disable_tqdm=true")
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["train_loss"] > 0
    assert (out / "adapter" / "adapter_config.json").is_file()


# The same registration on apps built here (no isage-cli needed): a Typer app and a plain click group.

def test_register_on_a_typer_app(capsys):
    typer = pytest.importorskip("typer")
    from sage_libs.sage_finetune.cli.sage_plugin import register

    app = typer.Typer()

    @app.command()
    def other() -> None:  # a second command, so that Typer keeps sub-command names
        pass

    register(app)
    for args, code in ((["finetune", "--help"], 0), (["finetune", "options", "lora.r"], 0),
                       (["finetune", "options", "lora.rank"], 2), (["finetune"], 2)):
        with pytest.raises(SystemExit) as exc:
            app(args, prog_name="sage")
        assert exc.value.code == code, args
    out = capsys.readouterr()
    assert "usage: sage-finetune" in out.out and "lora.r  (an integer; default 8; >= 1)" in out.out
    assert "LoRAConfig has no option 'rank'" in out.err


def test_register_on_a_click_group(capsys):
    click = pytest.importorskip("click")
    from sage_libs.sage_finetune.cli.sage_plugin import register

    group = click.Group("sage")
    register(group)
    with pytest.raises(SystemExit) as exc:
        group(["finetune", "--debug", "options", "training.seed"], prog_name="sage")
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("  training.seed  (an integer; default 42; >= 0)")


def test_register_on_something_else():
    from sage_libs.sage_finetune.cli.sage_plugin import register

    with pytest.raises(TypeError, match="cannot add the 'finetune' command to a builtins.dict; expected a Typer app"):
        register({})
