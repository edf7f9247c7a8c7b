"""Safe defaults: safetensors in and out, pickled weights only on request, no remote code, YAML as
plain data, formatting functions only from files the user names."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from ._helpers import EXAMPLE_DATA, assert_weights_are_safetensors, write_config

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune import ConfigError, LoRAConfig, TrainingConfig, create_trainer  # noqa: E402
from sage_libs.sage_finetune.cli import main  # noqa: E402
from sage_libs.sage_finetune.run_config import load_run_config, make_trainer  # noqa: E402


@pytest.fixture(scope="module")
def pickle_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its weights as pytorch_model.bin only (what old hub checkpoints look like)."""
    from safetensors.torch import load_file

    out = tmp_path_factory.mktemp("pickled") / "model"
    shutil.copytree(tiny_model_dir, out, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(str(tiny_model_dir / "model.safetensors")), out / "pytorch_model.bin")
    return out


@pytest.fixture
def from_pretrained_calls(monkeypatch):
    """Records the keyword arguments of every AutoTokenizer/AutoModelForCausalLM.from_pretrained call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls = []
    for cls in (AutoTokenizer, AutoModelForCausalLM):
        real = cls.from_pretrained

        def record(*args, _real=real, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", record)
    return calls


def test_loads_safetensors_only_and_no_remote_code_by_default(tiny_model_dir, tmp_path, from_pretrained_calls):
    trainer = create_trainer("lora", training_config=TrainingConfig(
        model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "out")), lora_config=LoRAConfig(r=4))
    trainer.setup()
    assert {name for name, _ in from_pretrained_calls} == {"AutoTokenizer", "AutoModelForCausalLM"}
    for name, kwargs in from_pretrained_calls:
        assert kwargs["trust_remote_code"] is False, name
    model_kwargs = next(kw for name, kw in from_pretrained_calls if name == "AutoModelForCausalLM")
    assert model_kwargs["use_safetensors"] is True


def test_pickled_weights_need_an_explicit_opt_in(pickle_model_dir, tmp_path, from_pretrained_calls):
    tc = TrainingConfig(model_name_or_path=str(pickle_model_dir), output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"holds its weights only as a pickle file \(pytorch_model.bin\); .*"
                                          r"set training.allow_pickle_weights: true"):
        create_trainer("lora", training_config=tc, lora_config=LoRAConfig(r=4)).setup()
    assert not any(name == "AutoModelForCausalLM" for name, _ in from_pretrained_calls)  # refused before loading
    trainer = create_trainer("lora", training_config=tc.replace(allow_pickle_weights=True), lora_config=LoRAConfig(r=4))
    trainer.setup()
    assert trainer.model is not None
    model_kwargs = [kw for name, kw in from_pretrained_calls if name == "AutoModelForCausalLM"][-1]
    assert model_kwargs["use_safetensors"] is None  # safetensors would still win where present


def test_the_opt_in_is_documented():
    import dataclasses

    help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainingConfig)}["allow_pickle_weights"]
    assert "arbitrary code" in help_text
    assert TrainingConfig(model_name_or_path="m", output_dir="o").allow_pickle_weights is False


def test_save_model_writes_safetensors(tiny_model_dir, tmp_path):
    """Full-model outputs too (the LoRA, merge and checkpoint outputs are checked in test_faults)."""
    trainer = create_trainer("full", training_config=TrainingConfig(
        model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "out")))
    trainer.save_model(tmp_path / "out" / "model")
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    assert_weights_are_safetensors(tmp_path / "out")


def test_yaml_python_tags_are_refused_not_run(tmp_path, capsys):
    made = tmp_path / "made-by-yaml"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"method: lora\ntraining:\n  run_name: !!python/object/apply:os.mkdir ['{made}']\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}:3: YAML tags that create Python objects (!!python/...) are not allowed" in err
    assert not made.exists()
    # an override is parsed with safe_load too: the tag stays a plain string
    cfg = load_run_config(None, ["model_name_or_path=m", "output_dir=o",
                                 f"training.run_name=!!python/object/apply:os.mkdir ['{made}']"])
    assert isinstance(cfg["training"].run_name, str) and not made.exists()


FORMAT_PY = '''
def to_messages(record):
    return [{"role": "user", "content": record["q"]}, {"role": "assistant", "content": record["a"]}]
'''


def test_formatting_func_from_a_file_beside_the_config(tiny_model_dir, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_format.py").write_text(FORMAT_PY)
    data = project / "qa.jsonl"
    data.write_text('{"q": "What is 2 + 2?", "a": "4"}\n{"q": "Capital of France?", "a": "Paris"}\n')
    cfg = write_config(project, tiny_model_dir,
                       data={"train_file": str(data), "formatting_func": "my_format.py:to_messages"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the file is found beside the config, not in the current directory
    run = load_run_config(str(cfg))
    assert run["data"].formatting_func == f"{project / 'my_format.py'}:to_messages"
    trainer = make_trainer(run)
    assert trainer.formatting_func({"q": "x", "a": "y"})[1] == {"role": "assistant", "content": "y"}
    dataset = trainer.prepare_dataset(str(data))
    assert len(dataset) == 2 and trainer.data_stats["train"]["formats"] == {"formatting_func": 2}
    assert yaml.safe_load(yaml.safe_dump(trainer.resolved_config()))["data"]["formatting_func"].endswith(
        "my_format.py:to_messages")


@pytest.mark.parametrize("spec, message", [
    ("json:loads", "'json:loads' does not name a .py file; give the path of the file that defines the function"),
    ("os.path:join", "does not name a .py file"),
    ("my_format.py", "'my_format.py' is not FILE.py:FUNCTION"),
    ("missing.py:f", "data.formatting_func: missing.py: no such file"),
])
def test_formatting_func_never_imports_a_module_by_name(spec, message, tmp_path, monkeypatch):
    import sys

    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    with pytest.raises(ConfigError, match=re.escape(message)):
        create_trainer("lora", training_config=TrainingConfig(model_name_or_path="m", output_dir="o"),
                       data_config={"formatting_func": spec})
    assert not {m for m in set(sys.modules) - before if m.startswith("_sage_finetune_user")}


def test_formatting_func_errors_in_the_file_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text("def f(record):\n    return record[\n")
    with pytest.raises(ConfigError, match=r"bad.py:\d+: syntax error"):
        create_trainer("lora", training_config=TrainingConfig(model_name_or_path="m", output_dir="o"),
                       data_config={"formatting_func": f"{bad}:f"})
    raising = tmp_path / "raising.py"
    raising.write_text("raise RuntimeError('no config here')\n\n\ndef f(record):\n    return record\n")
    with pytest.raises(ConfigError, match=r"importing .*raising.py raised RuntimeError: no config here"):
        create_trainer("lora", training_config=TrainingConfig(model_name_or_path="m", output_dir="o"),
                       data_config={"formatting_func": f"{raising}:f"})


INSTALLED_MARK = "_sage_finetune_test_imported"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder as the current directory, and no config directory trusted yet."""
    from sage_libs.sage_finetune.utils import user_code

    monkeypatch.setattr(user_code, "_CONFIG_DIRS", set())
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    return root


def _trainer(spec):
    return create_trainer("lora", training_config=TrainingConfig(model_name_or_path="m", output_dir="o"),
                          data_config={"formatting_func": spec})


def test_formatting_func_from_an_installed_module_file_is_refused_before_import(project, monkeypatch):
    """A path to an installed module's .py file (site-packages, the standard library, a venv inside the
    project) is refused without importing it: nothing in it runs."""
    import json as json_module
    import sys

    import yaml as yaml_module

    for file in (Path(json_module.__file__), Path(yaml_module.__file__)):
        before = set(sys.modules)
        with pytest.raises(ConfigError, match=r"outside the current directory|installed package or the standard"):
            _trainer(f"{file}:loads")
        assert not {m for m in set(sys.modules) - before if m.startswith("_sage_finetune_user")}
    # inside the project folder, but an installed location (a virtual environment in the project)
    site = project / ".venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    module = site / "evil.py"
    module.write_text(f"import builtins\nbuiltins.{INSTALLED_MARK} = True\ndef f(r):\n    return r\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ConfigError, match=r"is part of an installed package or the standard library"):
        _trainer(f"{module}:f")
    import builtins

    assert not hasattr(builtins, INSTALLED_MARK)
    # a symbolic link in the project to a file elsewhere is judged by where it points
    elsewhere = project.parent / "elsewhere.py"
    elsewhere.write_text("def f(r):\n    return r\n")
    (project / "link.py").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match=r"elsewhere.py is outside the current directory"):
        _trainer("link.py:f")


def test_formatting_func_name_is_checked_before_the_file_runs(project):
    import builtins

    (project / "fmt.py").write_text(f"import builtins\nbuiltins.{INSTALLED_MARK} = True\n\ndef to_messages(r):\n"
                                    "    return r\n")
    with pytest.raises(ConfigError, match=r"fmt.py defines no 'to_mesages'; its functions: to_messages"):
        _trainer("fmt.py:to_mesages")
    assert not hasattr(builtins, INSTALLED_MARK)
    assert _trainer("fmt.py:to_messages").formatting_func({"a": 1}) == {"a": 1}  # then it is imported and used
    assert getattr(builtins, INSTALLED_MARK)
    del builtins._sage_finetune_test_imported


@pytest.fixture
def umask_022():
    import os

    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _private_paths(root: Path) -> list[str]:
    """Files (folders) under root that a group member could not read (enter) under umask 022."""
    bad = []
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        want = 0o755 if path.is_dir() else 0o644
        if mode != want:
            bad.append(f"{path.relative_to(root)} {oct(mode)}")
    return bad


def test_weights_follow_the_umask_in_every_output_folder(tmp_path, umask_022, capsys):
    """safetensors' save_file writes 0600: adapter/, model/, merged/, checkpoint-N/ and tiny-model
    weights are 0644 like every other output under umask 022 (a serving group can read them)."""
    assert main(["tiny-model", str(tmp_path / "tiny"), "--corpus", str(EXAMPLE_DATA / "chat_train.jsonl")]) == 0
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
    assert _private_paths(tmp_path / "tiny") == []
    lora = write_config(tmp_path, tmp_path / "tiny", name="lora.yaml",
                        training={"output_dir": str(tmp_path / "lora"), "save_strategy": "steps", "save_steps": 2})
    assert main(["train", str(lora), "--merge"]) == 0
    full = write_config(tmp_path, tmp_path / "tiny", name="full.yaml", method="full", lora=None,
                        training={"output_dir": str(tmp_path / "full"), "max_steps": 2, "save_strategy": "steps",
                                  "save_steps": 2})
    assert main(["train", str(full)]) == 0
    weights = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.safetensors"))
    for expected in ("lora/adapter/adapter_model.safetensors", "lora/merged/model.safetensors",
                     "lora/checkpoint-2/adapter_model.safetensors", "full/model/model.safetensors",
                     "full/checkpoint-2/model.safetensors"):
        assert expected in weights, weights
    assert _private_paths(tmp_path / "lora") == [] and _private_paths(tmp_path / "full") == []


def test_only_what_a_run_writes_gets_the_umask_modes(tmp_path, umask_022):
    """tiny-model into a folder that holds other files: a private key, a script and a link to a
    private folder elsewhere keep their modes; the model files it writes are 0644."""
    import os

    out, outside = tmp_path / "existing", tmp_path / "outside"
    (out / "private").mkdir(parents=True)
    outside.mkdir()
    for path, mode in ((out / "key", 0o600), (out / "run.sh", 0o755), (out / "private" / "f", 0o600)):
        path.write_text("x")
        path.chmod(mode)
    (out / "private").chmod(0o700)
    outside.chmod(0o700)
    (out / "link").symlink_to(outside)
    assert main(["tiny-model", str(out), "--corpus", str(EXAMPLE_DATA / "chat_train.jsonl")]) == 0
    modes = {p: oct(os.lstat(p).st_mode & 0o777) for p in (out / "key", out / "run.sh", out / "private",
                                                            out / "private" / "f", outside)}
    assert list(modes.values()) == ["0o600", "0o755", "0o700", "0o600", "0o700"], modes
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert oct((out / name).stat().st_mode & 0o777) == "0o644", name
