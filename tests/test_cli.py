import json
from pathlib import Path

import pytest
import yaml

from sage_libs.sage_finetune.cli import load_run_config, main

from . import helpers
from .helpers import TINY_LORA
from .paths import EXAMPLE_DATA  # noqa: E402


def write_config(tmp_path, model_dir, **sections):
    """The tiny LoRA run with evaluation data, an evaluation every 2 steps, and the HF save strategy."""
    base = {**TINY_LORA, "training": {**TINY_LORA["training"], "eval_steps": 2},
            "data": {**TINY_LORA["data"], "eval_file": str(EXAMPLE_DATA / "alpaca_eval.jsonl")}}
    del base["training"]["save_strategy"]
    return helpers.write_config(tmp_path, model_dir, base=base, **sections)


def test_train_writes_everything(tmp_path, tiny_model_dir, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = write_config(tmp_path, tiny_model_dir)
    assert main(["train", str(cfg), "training.learning_rate=1e-2", "seed=7"]) == 0
    out = tmp_path / "out"
    for name in ("metrics.json", "trainer_log.jsonl", "loss.png", "run_config.yaml", "adapter/adapter_config.json"):
        assert (out / name).exists(), name
    resolved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert resolved["training"]["learning_rate"] == 1e-2 and resolved["training"]["seed"] == 7
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and "eval_loss" in metrics
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter")
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    for name, full in (("adapter", 0o777), ("metrics.json", 0o666), ("run_config.yaml", 0o666), ("loss.png", 0o666)):
        assert stat.S_IMODE((out / name).stat().st_mode) == full & ~umask, name
    printed = capsys.readouterr().out
    assert "eval_loss" in printed and str(out / "loss.png") in printed
    # `eval` of the saved adapter: the training's final eval loss, labelled as an evaluation
    assert main(["eval", str(cfg), "--adapter", str(out / "adapter")]) == 0
    captured = capsys.readouterr()
    assert "before training" not in captured.err + captured.out
    assert "evaluation  eval_loss" in captured.err
    printed = {line.split()[0]: line.split()[1] for line in captured.out.splitlines() if line.startswith("  ")}
    assert float(printed["eval_loss"]) == pytest.approx(metrics["eval_loss"], abs=1e-4)


@pytest.mark.parametrize("override, message", [
    ("training.learning_rat=1", "unknown option 'learning_rat'"),
    ("trainig.seed=1", "unknown section 'trainig' (did you mean 'training'?)"),
    ("learning_rate", "expected section.key=value"),
    ("training.per_device_train_batch_size=0", "per_device_train_batch_size: must be >= 1, got 0"),
    ("method=lorra", "unknown trainer 'lorra' (did you mean 'lora'?)"),
    ("lora.target_modules=[qproj]", "'qproj' matches no module"),
])
def test_bad_overrides_exit_2_with_one_message(tmp_path, tiny_model_dir, capsys, override, message):
    cfg = write_config(tmp_path, tiny_model_dir)
    assert main(["train", str(cfg), override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_unknown_top_level_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: lora\ntrain:\n  seed: 1\n")
    with pytest.raises(ValueError, match=r"unknown top-level key 'train' \(did you mean 'training'\?\)"):
        load_run_config(str(cfg))


def test_invalid_yaml_names_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: lora\ntraining:\n  seed: [1\n")
    with pytest.raises(ValueError, match=r"c.yaml:\d+: invalid YAML"):
        load_run_config(str(cfg))


def test_bad_data_file_reported_before_output(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n')
    cfg = write_config(tmp_path, tiny_model_dir, data={"train_file": str(bad), "eval_file": None})
    assert main(["train", str(cfg)]) == 2
    assert f"{bad}:2: malformed JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_model_dir(tmp_path, capsys):
    cfg = write_config(tmp_path, tmp_path / "no-model")
    assert main(["train", str(cfg)]) == 2
    assert "no-model: no such directory; expected a local model directory" in capsys.readouterr().err


def test_bare_key_override_resolves_section():
    cfg = load_run_config(None, ["model_name_or_path=m", "output_dir=o", "r=16"])
    assert cfg["lora"].r == 16 and cfg["training"].output_dir == "o"


def test_run_config_yaml_reruns_to_the_same_metrics(tmp_path, tiny_model_dir, capsys):
    """run_config.yaml is a run config: training on it again reproduces the run."""
    cfg = write_config(tmp_path, tiny_model_dir)
    assert main(["train", str(cfg), "training.learning_rate=1e-2", "lora.r=8"]) == 0
    first = json.loads((tmp_path / "out" / "metrics.json").read_text())
    written = tmp_path / "out" / "run_config.yaml"
    assert main(["train", str(written), f"training.output_dir={tmp_path / 'again'}"]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    for key in ("train_loss", "eval_loss", "global_step", "trainable_parameters"):
        assert again[key] == first[key], key
    rewritten = yaml.safe_load((tmp_path / "again" / "run_config.yaml").read_text())
    original = yaml.safe_load(written.read_text())
    rewritten["training"]["output_dir"] = original["training"]["output_dir"]
    assert rewritten == original


def test_console_is_one_line_per_log_event_and_nothing_else(tmp_path, tiny_model_dir):
    """A real process with its output redirected, as in a batch job's log file: no HF log dicts, no
    cursor codes, no known noise; a line per logging step and evaluation, then the summary."""
    import os
    import subprocess
    import sys

    cfg = write_config(tmp_path, tiny_model_dir, training={"eval_on_start": True, "disable_tqdm": False})
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "sage_libs.sage_finetune.cli", "train", str(cfg)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    both = result.stdout + result.stderr
    # ... nor lines of libraries pulled in indirectly (transformers 5.25 -> kernels, offline; they go to train.log)
    for noise in ("{'loss'", "{'eval_loss'", "\x1b[A", "Setting accelerator to CPU", "is_gradient_checkpointing",
                  "FutureWarning", "kernels.", "Skipping publisher trust check"):
        assert noise not in both, (noise, both[-3000:])
    lines = [x for x in result.stderr.splitlines() if x.strip() and not x.startswith("Loading weights")]
    assert lines[0].startswith("before training  eval_loss ") and len(lines) == 1 + 4 + 2, lines  # 4 losses, 2 evals
    assert [x.split()[1] for x in lines[1:]] == ["1/4", "2/4", "2/4", "3/4", "4/4", "4/4"], lines
    assert "Training finished." in result.stdout and "train.log" in result.stdout
    # INFO lines (the run's fast-path decisions among them) go to train.log, not to the console
    run_log = (Path(load_run_config(str(cfg))["training"].output_dir) / "train.log").read_text()
    assert "fast paths: selective logits on" in run_log and "fast paths" not in both


def test_console_shows_only_the_libraries_a_user_configures(tmp_path):
    """The console handler passes our loggers, the user's own and those of the libraries the run
    configures; an indirect dependency's warning (transformers 5.25 -> kernels, offline) goes to
    train.log only."""
    import logging

    from sage_libs.sage_finetune import cli
    from sage_libs.sage_finetune.run import files as run_files

    root = logging.getLogger()
    before = list(root.handlers)
    for handler in before:  # as in a fresh process: no handler yet (pytest has its own)
        root.removeHandler(handler)
    try:
        cli.console.quiet_libraries()
        console = next(h for h in root.handlers if type(h) is logging.StreamHandler)
        run_files.log_to_file(tmp_path)

        def shown(name):
            record = logging.LogRecord(name, logging.WARNING, __file__, 1, f"from {name}", None, None)
            return bool(console.filter(record))

        assert [shown(n) for n in ("sage_libs.sage_finetune.trainers", "transformers.modeling_utils", "peft.tuners",
                                   "root", "torch.distributed", "bitsandbytes.cextension")] == [True] * 6
        assert [shown(n) for n in ("kernels._internals.hf_hub", "httpx", "filelock", "kernelsx")] == [False] * 4
        logging.getLogger("kernels._internals.hf_hub").warning("Skipping publisher trust check for 'x'")
        run_files.stop_log_file()
        assert "WARNING kernels._internals.hf_hub: Skipping publisher trust check for 'x'" in \
            (tmp_path / run_files.TRAIN_LOG).read_text()
    finally:
        run_files.stop_log_file()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before:
            root.addHandler(handler)


def test_console_callback_lines():
    import io
    from types import SimpleNamespace

    from sage_libs.sage_finetune.callbacks.console import ConsoleCallback

    out = io.StringIO()
    cb = ConsoleCallback(stream=out)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=0)
    cb.on_log(None, state, None, logs={"eval_loss": 2.5, "eval_runtime": 0.1, "eval_samples_per_second": 3.0})
    state.max_steps = 10
    cb.on_train_begin(None, state, None)
    state.global_step = 5
    cb.on_log(None, state, None, logs={"loss": 1.23456, "learning_rate": 1e-3, "grad_norm": 0.5})
    cb.on_log(None, state, None, logs={"eval_loss": "1.5", "eval_accuracy": 0.25})
    # trainer.evaluate() after train(): the steps are over, the line is the standalone evaluation's
    state.global_step = 10
    cb.on_train_end(None, state, None)
    cb.standalone_evaluation()
    cb.on_log(None, state, None, logs={"eval_loss": 1.25})
    # a training run that raised never reaches on_train_end: the evaluation after it is still standalone
    cb.on_train_begin(None, state, None)
    cb.standalone_evaluation()
    cb.on_log(None, state, None, logs={"eval_loss": 1.75})
    lines = out.getvalue().splitlines()
    assert lines[0] == "before training  eval_loss 2.5000"
    assert lines[1].startswith("step 5/10  loss 1.2346  lr 1.00e-03  0:00 elapsed, ETA ")
    assert lines[2] == "step 5/10  eval_loss 1.5000  eval_accuracy 0.2500"
    assert lines[3] == "evaluation  eval_loss 1.2500" and lines[4] == "evaluation  eval_loss 1.7500"


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_get_the_permissions_of_a_normal_write(tmp_path, umask, file_mode, dir_mode):
    """Atomic writes go through private temporary files; the outputs must not stay private (a
    serving process under another user reads the adapter) nor become more open than the umask."""
    import os
    import stat

    from sage_libs.sage_finetune.utils.io import atomic_dir, atomic_write_json

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
        with atomic_dir(tmp_path / "adapter") as tmp:
            (tmp / "adapter_model.safetensors").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "adapter" / "adapter_model.safetensors").stat().st_mode) == file_mode


def test_tiny_model_reports_pretraining_progress(tmp_path, capsys):
    """--pretrain-steps prints its progress (it was silent for minutes) and the model it writes loads."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tiny"
    assert main(["tiny-model", str(out), "--corpus", str(EXAMPLE_DATA / "alpaca_train.jsonl"), "--pretrain-steps", "20",
                 "--vocab-size", "300"]) == 0
    err = capsys.readouterr().err
    steps = [line.split()[2] for line in err.splitlines() if line.startswith("pretraining step ")]
    assert steps == [f"{i}/20" for i in range(2, 21, 2)], err
    losses = [float(line.split()[-1]) for line in err.splitlines() if line.startswith("pretraining step ")]
    assert losses[-1] < losses[0]
    AutoModelForCausalLM.from_pretrained(out)


def test_a_misspelled_override_is_blamed_on_the_command_line(tmp_path, tiny_model_dir, capsys):
    cfg = write_config(tmp_path, tiny_model_dir)
    assert main(["train", str(cfg), "training.learnig_rate=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "override 'training.learnig_rate=1e-3': unknown option 'learnig_rate' in section 'training' " \
           "(did you mean 'learning_rate'?)" in err
    assert str(cfg) not in err  # the file is fine
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, usage, message", [
    (["trian", "run.yaml"], "usage: sage-finetune [-h]", "unknown command 'trian' (did you mean 'train'?)"),
    (["train", "run.yaml", "--mrege"], "usage: sage-finetune train", "unrecognized argument --mrege (did you mean "
                                                                       "'--merge'?)"),
    (["merge", "--adaptr", "a", "--output", "b"], "usage: sage-finetune merge", "argument --adaptr (did you mean "
                                                                                 "'--adapter'?)"),
    (["plan", "run.yaml", "--memroy", "24GB"], "usage: sage-finetune plan", "(did you mean '--memory'?)"),
    (["chat", "m", "--temprature", "0.5"], "usage: sage-finetune chat", "(did you mean '--temperature'?)"),
    (["data", "inspect", "run.yaml", "--sampel", "2"], "usage: sage-finetune data inspect",
     "(did you mean '--sample'?)"),
    (["data", "inspct", "run.yaml"], "usage: sage-finetune data", "unknown command 'inspct' (did you mean "
                                                                   "'inspect'?)"),
])
def test_typos_get_a_did_you_mean_under_the_commands_usage(argv, usage, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and message in err, err


@pytest.mark.parametrize("argv, usage, message", [
    (["train", "run.yaml", "--merge", "foo"], "usage: sage-finetune train", "unrecognized arguments: foo"),
    (["TRAIN"], "usage: sage-finetune [-h]", "(did you mean 'train'?)"),
])
def test_stray_arguments_are_named_under_the_commands_usage(argv, usage, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert err.startswith(usage) and message in err, err


def test_double_dash_and_errors_of_data_inspect(tmp_path, capsys):
    from sage_libs.sage_finetune.cli import _parse_args, build_parser

    args = _parse_args(build_parser(), ["plan", "run.yaml", "--no-probe", "--", "data.padding_free=false"])
    assert args.overrides == ["data.padding_free=false"]
    args = _parse_args(build_parser(), ["train", "run.yaml", "--merge", "--", "training.max_steps=1"])
    assert args.overrides == ["training.max_steps=1"] and args.merge
    assert main(["data", "inspect", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("sage-finetune data inspect: error: ")
    with pytest.raises(SystemExit):  # no config: the usage does not call the overrides required
        main(["train"])
    err = capsys.readouterr().err
    assert "required: config" in err and "overrides" not in err.split("required:")[1], err


def test_options_still_accept_unique_prefixes_and_negative_values(tmp_path, capsys):
    from sage_libs.sage_finetune.cli import _parse_args, build_parser

    args = _parse_args(build_parser(), ["chat", "m", "--max-new", "5", "--temp", "0.5"])
    assert (args.max_new_tokens, args.temperature) == (5, 0.5)
    args = _parse_args(build_parser(), ["data", "inspect", "f.jsonl", "--sample", "-1", "data.max_samples=3"])
    assert (args.sample, args.overrides) == (-1, ["data.max_samples=3"])


@pytest.mark.parametrize("argv", [["chat", "--help"], ["merge", "--help"], ["data", "inspect", "--help"],
                                  ["plan", "--help"], ["train", "--help"]])
def test_command_help_shows_an_example(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    out = capsys.readouterr().out
    command = " ".join(argv[:-1])
    assert f"\n  sage-finetune {command} " in out, out


def test_descriptions_name_every_method_and_sage_lists_every_command():
    import tomllib

    from sage_libs.sage_finetune.cli import DESCRIPTION, command_names
    from sage_libs.sage_finetune.cli.sage_plugin import command_help

    from .paths import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["description"] == DESCRIPTION
    for method in ("LoRA", "QLoRA", "DoRA", "LoRA+", "full", "freeze", "agent SFT", "DPO", "KTO"):
        assert method in DESCRIPTION
    assert command_names() == ["train", "eval", "options", "merge", "export", "data inspect", "chat", "tiny-model", "plan"]
    assert command_help().endswith(": " + ", ".join(command_names()) + ".")


def test_an_adapter_records_its_base_as_an_absolute_path(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A relative training.model_name_or_path is recorded absolute in adapter_config.json, so that chat
    and merge work from any directory; a recorded base that does not resolve is named as such, not
    blamed on --base (which the user did not pass)."""
    import os
    import shutil

    work = tmp_path / "work"
    shutil.copytree(tiny_model_dir, work / "tiny-model")
    monkeypatch.chdir(work)
    cfg = write_config(work, "./tiny-model", training={"max_steps": 1, "output_dir": "out"})
    assert main(["train", str(cfg)]) == 0
    adapter_config = work / "out" / "adapter" / "adapter_config.json"
    recorded = json.loads(adapter_config.read_text())["base_model_name_or_path"]
    assert recorded == str(work / "tiny-model")
    monkeypatch.chdir(tmp_path)  # elsewhere
    capsys.readouterr()
    assert main(["chat", str(work / "out" / "adapter"), "--prompt", "hi", "--max-new-tokens", "2"]) == 0
    # an adapter written elsewhere with a relative base: the message says where the path came from
    adapter_config.write_text(adapter_config.read_text().replace(recorded, "./tiny-model"))
    chat = ["chat", str(work / "out" / "adapter")]
    merge = ["merge", "--adapter", str(work / "out" / "adapter"), "--output", str(tmp_path / "merged")]
    for argv in ([*chat, "--prompt", "hi"], merge):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"the base model recorded in {adapter_config} (base_model_name_or_path): ./tiny-model: no such " \
               "directory" in err and "pass --base MODEL" in err and "--base:" not in err, err
    # a hub id that cannot be fetched (offline): exit 2, named as the user gave it, in chat and merge alike
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        adapter_config.write_text(adapter_config.read_text().replace("./tiny-model", "Qwen/Qwen2.5-0.5B"))
        for argv, named in (([*chat, "--prompt", "hi"], f"the base model recorded in {adapter_config}"),
                            ([*merge, "--base", "Qwen/Qwen2.5-0.5B"], "merge --base")):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert f"{named}" in err and "cannot load a model from 'Qwen/Qwen2.5-0.5B'" in err, err
            assert "training.model_name_or_path" not in err


def train_in_a_process(cfg, cwd, **env):
    """``sage-finetune train CFG`` in a fresh process (its console as a user sees it); must succeed."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    result = subprocess.run([sys.executable, "-m", "sage_libs.sage_finetune.cli", "train", str(cfg)],
                            capture_output=True, text=True, timeout=300, env=full_env, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_lines_logged_before_the_run_folder_exists_reach_train_log(tmp_path, tiny_model_dir):
    """Data and model are prepared before train.log opens: an indirect library's warning from then
    (kernels while bitsandbytes loads, here simulated from the user's formatting function) is in
    train.log, and the user's own logger reaches the console."""
    import textwrap

    (tmp_path / "my_format.py").write_text(textwrap.dedent('''
        import logging
        def to_text(record):
            logging.getLogger(__name__).warning("USER-WARNING from my formatting function")
            logging.getLogger("kernels._internals.hf_hub").warning("KERNELS-WARNING before train.log")
            return record["instruction"] + " " + record["output"]
    '''))
    cfg = write_config(tmp_path, tiny_model_dir, training={"max_steps": 1, "eval_steps": 1},
                       data={"formatting_func": "my_format.py:to_text", "eval_file": None})
    result = train_in_a_process(cfg, tmp_path)
    assert "USER-WARNING from my formatting function" in result.stderr
    assert "KERNELS-WARNING" not in result.stderr + result.stdout
    run_log = (tmp_path / "out" / "train.log").read_text()
    assert "WARNING kernels._internals.hf_hub: KERNELS-WARNING before train.log" in run_log
    assert "USER-WARNING from my formatting function" in run_log


def test_python_train_writes_what_the_cli_writes(tmp_path, tiny_model_dir, capsys):
    """One recipe (run/recipe.py) for both: trainer.train() ends with the adapter (and merged/ with
    training.save_merged) as `sage-finetune train --merge` does."""
    from sage_libs.sage_finetune.run_config import make_trainer

    cfg = write_config(tmp_path, tiny_model_dir, training={"max_steps": 2, "output_dir": str(tmp_path / "cli")})
    assert main(["train", str(cfg), "--merge"]) == 0
    python = make_trainer(load_run_config(str(cfg), [f"training.output_dir={tmp_path / 'py'}",
                                                      "training.save_merged=true"]))
    python.train()
    names = {p.relative_to(tmp_path / "cli").as_posix() for p in (tmp_path / "cli").rglob("*")}
    assert {"adapter/adapter_model.safetensors", "merged/model.safetensors", "metrics.json", "loss.png"} <= names
    assert names == {p.relative_to(tmp_path / "py").as_posix() for p in (tmp_path / "py").rglob("*")}


def test_importing_installs_nothing_and_a_run_leaves_the_process_as_it_was(tmp_path, tiny_model_dir):
    """No warning filter or logger filter from importing the package; a run drops the known noise
    while it runs and puts the filters back; the speed allocator setting is undone at its end."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import logging, warnings
        before = list(warnings.filters)
        import sage_libs.sage_finetune as f
        from sage_libs.sage_finetune.utils.noise import NOISE
        assert warnings.filters == before, "import changed the warnings filters"
        assert not any(logging.getLogger(n).filters for n in NOISE), "import added logger filters"
        from sage_libs.sage_finetune.run_config import load_run_config, make_trainer
        from sage_libs.sage_finetune.perf import allocator
        trainer = make_trainer(load_run_config({str(write_config(tmp_path, tiny_model_dir))!r},
                                               ["training.max_steps=1", "training.malloc_tuning=true"]))
        trainer.train()
        from sage_libs.sage_finetune.utils.noise import WARNINGS
        ours = [m for _, m in WARNINGS]
        left = [f for f in warnings.filters if f[1] is not None and f[1].pattern in ours]
        assert not left, ("a run left its warnings filters behind", left)
        assert not any(logging.getLogger(n).filters for n in NOISE), "a run left logger filters behind"
        assert allocator._mode is None, allocator._mode
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_python_warnings_of_indirect_libraries_go_to_train_log_only(tmp_path, tiny_model_dir):
    """The command line captures Python warnings as log records: one from a package installed
    beside the others (here a stand-in in a site-packages folder) reaches train.log only; one from
    the user's own code reaches the console too."""
    import os
    import textwrap

    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "fakelib.py").write_text("import warnings\n\ndef hello():\n"
                                     "    warnings.warn('FAKELIB-WARNING from an indirect library')\n")
    (tmp_path / "my_format.py").write_text(textwrap.dedent('''
        import warnings
        import fakelib
        def to_text(record):
            fakelib.hello()
            warnings.warn("USER-WARNING from my formatting function")
            return record["instruction"] + " " + record["output"]
    '''))
    cfg = write_config(tmp_path, tiny_model_dir, training={"max_steps": 1, "eval_steps": 1},
                       data={"formatting_func": "my_format.py:to_text", "eval_file": None, "max_samples": 4})
    result = train_in_a_process(cfg, tmp_path,
                                PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    assert "USER-WARNING from my formatting function" in result.stderr
    assert "FAKELIB-WARNING" not in result.stderr + result.stdout
    run_log = (tmp_path / "out" / "train.log").read_text()
    assert "FAKELIB-WARNING from an indirect library" in run_log and "USER-WARNING" in run_log
