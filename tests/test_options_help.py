"""`sage-finetune options`: every config option with type, default and help, without torch;
`train --help` and `eval --help` point to it."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

from sage_libs.sage_finetune.cli import SECTIONS, main


def run_cli(*args):
    """The CLI in a fresh interpreter; prints the modules it imported on its last line."""
    code = textwrap.dedent(f"""
        import json, sys
        from sage_libs.sage_finetune.cli import main
        rc = main({list(args)!r})
        heavy = sorted(m for m in ("torch", "transformers", "datasets", "peft", "accelerate") if m in sys.modules)
        print(json.dumps({{"rc": rc, "heavy": heavy}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "COLUMNS": "100"})
    *out, last = result.stdout.rstrip("\n").split("\n")
    return json.loads(last), "\n".join(out), result.stderr


def test_options_lists_every_field_with_type_default_and_help_without_torch():
    status, out, err = run_cli("options")
    assert status == {"rc": 0, "heavy": []}, err
    fields = [(section, f) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    assert len(fields) > 80
    for section, f in fields:
        line = next((line for line in out.splitlines() if line.startswith(f"  {section}.{f.name}  (")), None)
        assert line is not None, f"{section}.{f.name} missing"
        if f.default is not dataclasses.MISSING:
            assert "default " in line, line
    # type, default, bounds, choices and the help text itself
    assert "  training.learning_rate  (a number; default 5e-05; > 0)" in out
    assert "  training.model_name_or_path  (a string; required)" in out
    assert "  lora.bias  (a string; default none; one of none, all, lora_only)" in out
    assert "  data.eval_file  (a string or a list of a string or null; default null)" in out
    assert "Rank of the update matrices." in out
    # the top-level keys: methods and callbacks with their options
    assert "qlora:" in out and "{name: early_stop, patience: 3, metric: eval_loss" in out


def test_options_one_section_or_option(capsys):
    assert main(["options", "lora"]) == 0
    out = capsys.readouterr().out
    assert "lora.r  (an integer; default 8; >= 1)" in out and "training." not in out
    assert main(["options", "training.seed"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("  training.seed  (an integer; default 42; >= 0)") and "lora." not in out
    assert main(["options", "packing"]) == 0  # a bare option name
    assert capsys.readouterr().out.startswith("  data.packing  (true/false; default false)")


@pytest.mark.parametrize("query, message", [
    ("trainig", "options 'trainig': not a config section or option (did you mean 'training'?)"),
    ("lora.rank", "options lora.rank: LoRAConfig has no option 'rank'"),
    ("lorra.r", "options lorra.r: unknown section 'lorra' (did you mean 'lora'?)"),
])
def test_options_unknown(capsys, query, message):
    assert main(["options", query]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "eval"])
def test_train_and_eval_help_point_to_options(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "sage-finetune options [SECTION]" in out
    assert "section.key=value overrides" in out and "YAML run config" in out
    if command == "eval":
        assert "--adapter ADAPTER  an adapter" in out
