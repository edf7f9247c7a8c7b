"""Bad input to ``sage-finetune train``: config files, data files, command-line arguments.

Every case must give exit code 2 and ONE message that names what is wrong and what is expected, no
traceback, and no output directory left behind. Cases that do not need the model to be found out
run with model loading forbidden, to prove the check comes before it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from ._helpers import write_config

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune.cli import main  # noqa: E402

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only case")


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir, tmp_path_factory):
    """Broken variants of the tiny model directory."""
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("models")
    files = {p.name for p in tiny_model_dir.iterdir()}
    tokenizer = {n for n in files if n.startswith("tokenizer") or n.endswith(".jinja")}
    variants = {"no_tokenizer": files - tokenizer, "no_config": tokenizer,
                "pickle_only": (files - {"model.safetensors"})}
    for name, keep in variants.items():
        (root / name).mkdir()
        for file in keep:
            shutil.copy(tiny_model_dir / file, root / name / file)
    torch.save(load_file(str(tiny_model_dir / "model.safetensors")), root / "pickle_only" / "pytorch_model.bin")
    return root


def data_file(tmp: Path, text: str | bytes, name: str = "data.jsonl") -> str:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def raw_config(text: str | bytes) -> Callable[[Path, Path], list[str]]:
    """A config file with exactly this text (``OUT`` stands for the output directory)."""
    def build(tmp: Path, model: Path) -> list[str]:
        path = tmp / "raw.yaml"
        content = text if isinstance(text, bytes) else text.encode()
        path.write_bytes(content.replace(b"OUT", str(tmp / "out").encode()))
        return [str(path)]
    return build


@dataclass
class Case:
    expect: str                                   # a fragment of the one error message ({tmp}: tmp_path)
    sections: dict[str, Any] = field(default_factory=dict)  # changes to the default run config
    overrides: list[str] = field(default_factory=list)
    build: Callable[[Path, Path], list[str]] | None = None   # (tmp_path, model_dir) -> argv after "train"
    prepare: Callable[[Path, Path], dict[str, Any]] | None = None  # -> more section changes (files it made)
    needs_model: bool = False                     # found out only once the model is loaded
    marks: tuple = ()


A, R = "alpaca_train.jsonl", '{"instruction": "Say hi", "output": "Hi"}\n'
CASES: dict[str, Case] = {
    # ---- config files -------------------------------------------------------------------------
    "config file missing": Case("nope.yaml: no such config file", build=lambda t, m: [str(t / "nope.yaml")]),
    "config file is a directory": Case("is a directory; expected a YAML run config file",
                                       build=lambda t, m: [str((t / "cfg.yaml").mkdir() or t / "cfg.yaml")]),
    "invalid YAML": Case("raw.yaml:4: invalid YAML (expected ',' or ']'",
                         build=raw_config("method: lora\ntraining:\n  seed: [1\n")),
    "config not UTF-8": Case("raw.yaml: not UTF-8 text", build=raw_config(b"method: lora\n# caf\xe9\n")),
    "config not a mapping": Case("expected a mapping with method, training, lora, data",
                                 build=raw_config("- lora\n- training\n")),
    "python tag in YAML": Case("YAML tags that create Python objects (!!python/...) are not allowed",
                               build=raw_config("method: lora\ntraining: !!python/object/apply:os.getcwd []\n")),
    "unknown top-level key": Case("unknown top-level key 'trainig' (did you mean 'training'?)",
                                  build=raw_config("method: lora\ntrainig:\n  seed: 1\n")),
    "unknown option": Case("unknown option 'learning_rat' in {tmp}/run.yaml [training] (did you mean "
                           "'learning_rate'?)", sections={
        "training": {"learning_rat": 1e-4}}),
    "section not a mapping": Case("section 'lora' must be a mapping of options", sections={"lora": 5}),
    "wrong type (int)": Case("TrainingConfig.max_steps: expected an integer, got 'ten' (str)",
                             sections={"training": {"max_steps": "ten"}}),
    "wrong type (bool)": Case("TrainingConfig.fp16: expected true/false, got 'maybe' (str)",
                              sections={"training": {"fp16": "maybe"}}),
    "wrong type (list)": Case("LoRAConfig.target_modules: expected a list of a string or a string or null, got 5",
                              sections={"lora": {"target_modules": 5}}),
    "bad choice": Case("'cosin' is not one of", sections={"training": {"lr_scheduler_type": "cosin"}}),
    "out of range": Case("LoRAConfig.lora_dropout: must be < 1, got 1.5", sections={"lora": {"lora_dropout": 1.5}}),
    "missing required option": Case("missing required option 'model_name_or_path'",
                                    build=raw_config("method: lora\ntraining:\n  output_dir: OUT\n")),
    "unknown method": Case("unknown trainer 'lorra' (did you mean 'lora'?)", sections={"method": "lorra"}),
    "quantization for method full": Case("config section 'quantization' is not used by method 'full'; it is for "
                                         "method qlora", sections={"method": "full", "lora": None,
                                                                   "quantization": {"load_in_4bit": True}}),
    "lora section for method full": Case("config section 'lora' is not used by method 'full' (no adapter: the model's "
                                         "own weights train); remove the lora: section from the config file",
                                         sections={"method": "full"}),
    "lora section for dpo over full": Case("config section 'lora' is not used by preference.method 'full'",
                                           sections={"method": "dpo", "preference": {"method": "full"}}),
    "fp16 on a CPU-only machine": Case("training.fp16: float16 mixed precision needs a CUDA GPU and none is available",
                                       sections={"training": {"fp16": True}}, marks=(NO_CUDA,)),
    "bf16 on the CPU without use_cpu": Case("bfloat16 mixed precision on the CPU needs training.use_cpu: true",
                                            sections={"training": {"bf16": True}}, marks=(NO_CUDA,)),
    "fp16 and bf16": Case("fp16 and bf16 are both true; choose one", sections={"training": {"fp16": True,
                                                                                          "bf16": True}}),
    "packing beyond the model's positions": Case(
        "training.max_seq_length: 4096 is more than the model's max_position_embeddings (2048",
        sections={"training": {"max_seq_length": 4096}, "data": {"packing": True}}),
    "unknown optimizer": Case("training.optim: unknown optimizer 'adamw_torc' (did you mean 'adamw_torch'?)",
                              sections={"training": {"optim": "adamw_torc"}}),
    "warm-up ratio >= 1": Case("warmup_steps: a float is a ratio and must be < 1",
                               sections={"training": {"warmup_steps": 1.5}}),
    "unknown tracker": Case("TrainingConfig.report_to: unknown tracker 'tensorbaord'",
                            sections={"training": {"report_to": ["tensorbaord"]}}),
    "deepspeed config missing": Case("training.deepspeed: ds.json: no such file",
                                     sections={"training": {"deepspeed": "ds.json"}}),
    "target_modules match nothing": Case("lora.target_modules: 'qproj' matches no module of this model; its linear "
                                         "layers are down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
                                         sections={"lora": {"target_modules": ["qproj"]}}, needs_model=True),
    "target_modules empty": Case("LoRAConfig.target_modules: empty list", sections={"lora": {"target_modules": []}}),
    "modules_to_save match nothing": Case("lora.modules_to_save: 'lm_haed' matches no module",
                                          sections={"lora": {"modules_to_save": ["lm_haed"]}}, needs_model=True),
    "model dir missing": Case("no-model: no such directory; expected a local model directory",
                              prepare=lambda t, m: {"training": {"model_name_or_path": str(t / "no-model")}}),
    "model path is a file": Case("is a file; expected a model directory",
                                 prepare=lambda t, m: {"training": {"model_name_or_path": data_file(t, "x", "f")}}),
    "model dir without tokenizer": Case("no_tokenizer has no tokenizer (none of tokenizer.json, tokenizer_config.json",
                                        prepare=lambda t, m: {"training": {
                                            "model_name_or_path": "MODELS/no_tokenizer"}}),
    "model dir without config.json": Case("no_config has no config.json",
                                          prepare=lambda t, m: {"training": {
                                              "model_name_or_path": "MODELS/no_config"}}),
    "pickle-only model": Case("pytorch_model.bin); unpickling a file from an untrusted source can run arbitrary "
                              "code", prepare=lambda t, m: {"training": {"model_name_or_path": "MODELS/pickle_only"}}),
    "output_dir is a file": Case("training.output_dir: {tmp}/outfile is an existing file; expected a directory",
                                 prepare=lambda t, m: {
        "training": {"output_dir": data_file(t, "x", "outfile")}}),
    "output_dir under a file": Case("is a file, not a directory", prepare=lambda t, m: {
        "training": {"output_dir": data_file(t, "x", "afile") + "/out"}}),
    "output_dir a dangling symlink": Case("training.output_dir: {tmp}/link is a symbolic link to {tmp}/gone, which "
                                          "does not exist (or loops); create that folder", prepare=lambda t, m: {
        "training": {"output_dir": str(__import__("os").symlink(t / "gone", t / "link") or t / "link")}}),
    "output_dir under a dangling symlink": Case("training.output_dir: {tmp}/link is a symbolic link to {tmp}/gone, "
                                                "which does not exist", prepare=lambda t, m: {"training": {
        "output_dir": str(__import__("os").symlink(t / "gone", t / "link") or t / "link" / "run1")}}),
    "previous-runs is a file": Case("training.output_dir: {tmp}/used/previous-runs is not a folder; a fresh run moves",
                                    prepare=lambda t, m: {"training": {"output_dir": str(
                                        data_file((t / "used").mkdir() or t / "used", "x", "previous-runs")
                                        and t / "used")}}),
    "resume without a checkpoint": Case("resume_from_checkpoint: true, but", sections={
        "training": {"resume_from_checkpoint": True}}),
    "resume from a non-checkpoint": Case("is not a checkpoint folder", sections={
        "training": {"resume_from_checkpoint": "/nonexistent/checkpoint-5"}}),
    "chat_template file missing": Case("data.chat_template: my_template.jinja: no such file",
                                       sections={"data": {"chat_template": "my_template.jinja"}}),
    "tools_file missing": Case("data.tools_file: tools.json: no such file",
                               sections={"data": {"tools_file": "tools.json"}}),
    "formatting_func names a module": Case("'os:system' does not name a .py file",
                                           sections={"data": {"formatting_func": "os:system"}}),
    "formatting_func file missing": Case("data.formatting_func: fmt.py: no such file",
                                         sections={"data": {"formatting_func": "fmt.py:to_messages"}}),
    "formatting_func not defined": Case("defines no 'to_messages'; its functions: other", prepare=lambda t, m: {
        "data": {"formatting_func": data_file(t, "def other(r):\n    return r\n", "f.py") + ":to_messages"}}),
    "formatting_func raises": Case("chat_train.jsonl:1: formatting_func f (", prepare=lambda t, m: {
        "data": {"formatting_func": data_file(t, "def f(record):\n    return record['missing']\n", "fr.py") + ":f"}}),
    "formatting_func raises (file:line)": Case("fr.py:2) raised KeyError: 'missing'", prepare=lambda t, m: {
        "data": {"formatting_func": data_file(t, "def f(record):\n    return record['missing']\n", "fr.py") + ":f"}}),
    "formatting_func in an installed module": Case(
        "/json/__init__.py is outside the current directory",
        sections={"data": {"formatting_func": __import__("json").__file__ + ":loads"}}),
    "chat template syntax error": Case("data.chat_template: line 1 of the template: Jinja syntax error (unexpected '}}')",
                                       sections={"data": {"chat_template": "{% for m in messages %}{{ m.content }"}}),
    "chat template file empty": Case("data.chat_template: {tmp}/empty.jinja is empty; expected a Jinja chat template",
                                     prepare=lambda t, m: {"data": {"chat_template": data_file(t, "", "empty.jinja")}}),
    "chat template file syntax error": Case("t.jinja:3: Jinja syntax error", prepare=lambda t, m: {"data": {
        "chat_template": data_file(t, "{% for m in messages %}\n{{ m.content }}\n{% endfor %\n", "t.jinja")}}),
    "chat template sandbox refusal": Case(
        "data.chat_template: the template does something the sandbox forbids (access to attribute '__class__'",
        sections={"data": {"chat_template": "{{ ''.__class__.__mro__ }}{% for m in messages %}{{ m.content }}"
                                                   "{% endfor %}"}}),
    "learning_rate inf": Case("TrainingConfig.learning_rate: must be a finite number, got inf",
                              overrides=["training.learning_rate=.inf"]),
    "learning_rate nan": Case("TrainingConfig.learning_rate: must be a finite number, got nan",
                              overrides=["training.learning_rate=.nan"]),
    "num_train_epochs inf": Case("TrainingConfig.num_train_epochs: must be a finite number, got inf",
                                 overrides=["training.num_train_epochs=.inf", "training.max_steps=-1"]),
    "lora.r above the model's width": Case("lora.r: 1000000 is more than the model's hidden_size (64, in ",
                                           sections={"lora": {"r": 1000000}}),
    # ---- data files ---------------------------------------------------------------------------
    "hub dataset offline": Case("nobody/no-such-dataset: not a local file or folder, and the Hugging Face Hub cannot "
                                "be reached (offline)", sections={"data": {"train_file": "nobody/no-such-dataset"}}),
    "train_file missing": Case("data.train_file: {tmp}/missing.jsonl: no such file", prepare=lambda t, m: {
        "data": {"train_file": str(t / "missing.jsonl")}}),
    "train_file is a directory": Case("d.jsonl is a directory; expected a .jsonl, .json, .parquet file",
                                      prepare=lambda t, m: {"data": {"train_file": str((t / "d.jsonl").mkdir() or
                                                                                       t / "d.jsonl")}}),
    "train_file is a FIFO": Case("fifo.jsonl: is a named pipe (FIFO), not a regular file; the data is read more than "
                                 "once", prepare=lambda t, m: {"data": {"train_file": str(
                                     __import__("os").mkfifo(t / "fifo.jsonl") or t / "fifo.jsonl")}}),
    "train_file a folder without data": Case("dirdata: a folder with no data files the datasets library reads",
                                             prepare=lambda t, m: {"data": {"train_file": str(
                                                 (t / "dirdata").mkdir() or t / "dirdata")}}),
    "eval_file missing": Case("data.eval_file: {tmp}/ev.jsonl: no such file",
                              prepare=lambda t, m: {"data": {"eval_file": str(t / "ev.jsonl")}}),
    "empty data file": Case("data.jsonl: the file is empty",
                            prepare=lambda t, m: {"data": {"train_file": data_file(t, "")}}),
    "empty JSON array": Case("data.json: the file has no records (an empty JSON array)", prepare=lambda t, m: {
        "data": {"train_file": data_file(t, "[]\n", "data.json")}}),
    "JSON file not records": Case("data.json: expected a JSON array of records (or one record object), not a JSON "
                                  "string", prepare=lambda t, m: {
        "data": {"train_file": data_file(t, '"hello"\n', "data.json")}}),
    "malformed JSON": Case("data.jsonl:2: malformed JSON", prepare=lambda t, m: {
        "data": {"train_file": data_file(t, R + '{"instruction": "x", \n')}}),
    "data not UTF-8": Case("data.jsonl:1: bytes that are not UTF-8", prepare=lambda t, m: {
        "data": {"train_file": data_file(t, b'{"text": "caf\xe9"}\n')}}),
    "unknown record format": Case("data.jsonl:1: cannot tell the format from the fields (question, reply)",
                                  prepare=lambda t, m: {"data": {"train_file": data_file(
                                      t, '{"question": "q", "reply": "r"}\n')}}),
    "field of the wrong type": Case("data.jsonl:1: field 'output' must be a string, got int", prepare=lambda t, m: {
        "data": {"train_file": data_file(t, '{"instruction": "Add", "output": 5}\n')}}),
    "mixed formats in one file": Case("data.jsonl:2: this record is in the text format but", prepare=lambda t, m: {
        "data": {"train_file": data_file(t, R + '{"text": "plain"}\n')}}),
    "no training data": Case("no training data: set data.train_file in the config (or pass train_dataset to train() in Python)",
                             sections={"data": {"train_file": None}}),
    "nothing left to train": Case("no trainable examples (8 records, 0 invalid, 8 with every trained token cut",
                                  sections={"training": {"max_seq_length": 8}}),
    # ---- command-line arguments ---------------------------------------------------------------
    "override without '='": Case("override 'learning_rate': expected section.key=value",
                                 overrides=["learning_rate"]),
    "override of an unknown section": Case("unknown section 'trainig' (did you mean 'training'?)",
                                           overrides=["trainig.seed=1"]),
    "override of an unknown key": Case("'learning_rat' is not a known option; write section.key (did you mean",
                                       overrides=["learning_rat=1e-4"]),
    "override of the wrong type": Case("TrainingConfig.seed: expected an integer, got 'abc' (str)",
                                       overrides=["training.seed=abc"]),
    "override out of range": Case("per_device_train_batch_size: must be >= 1, got 0",
                                  overrides=["training.per_device_train_batch_size=0"]),
}


@pytest.fixture
def no_model_loading(monkeypatch):
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def _expand(value: Any, models: Path) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, models) for k, v in value.items()}
    return value.replace("MODELS", str(models)) if isinstance(value, str) else value


@pytest.mark.parametrize("name", [pytest.param(n, marks=c.marks) for n, c in CASES.items()])
def test_bad_input_is_one_message_and_exit_2(name, tmp_path, tiny_model_dir, model_dirs, capsys, request,
                                             monkeypatch):
    case = CASES[name]
    if not case.needs_model:
        request.getfixturevalue("no_model_loading")
    monkeypatch.chdir(tmp_path)  # relative names in the cases (ds.json, fmt.py...) resolve here, to nothing
    out = tmp_path / "out"
    if case.build is not None:
        argv = case.build(tmp_path, tiny_model_dir)
    else:
        sections = dict(case.sections)
        for key, value in _expand(case.prepare(tmp_path, tiny_model_dir) if case.prepare else {}, model_dirs).items():
            sections[key] = {**sections.get(key, {}), **value} if isinstance(value, dict) else value
        argv = [str(write_config(tmp_path, tiny_model_dir, **sections))]
    code = main(["train", *argv, *case.overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("sage-finetune train: error: "), err
    assert case.expect.format(tmp=tmp_path) in errors[0], errors[0]
    assert "Traceback" not in err
    assert not out.exists(), "a failed run left its output directory behind"


def test_unreadable_config_file(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Root reads files whatever their mode, so the permission error is simulated."""
    cfg = write_config(tmp_path, tiny_model_dir)
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self == cfg:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: cannot read the config file (Permission denied)" in err and "Traceback" not in err


def test_bf16_on_a_cpu_without_bfloat16(tmp_path, tiny_model_dir, capsys, monkeypatch, no_model_loading):
    import transformers.utils

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(transformers.utils, "is_torch_bf16_available_on_device", lambda device: False)
    cfg = write_config(tmp_path, tiny_model_dir, training={"bf16": True, "use_cpu": True})
    assert main(["train", str(cfg)]) == 2
    assert "training.bf16: this CPU cannot compute in bfloat16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path, tiny_model_dir):
    from sage_libs.sage_finetune.config import ConfigError

    cfg = write_config(tmp_path, tiny_model_dir, training={"optim": "adamw_torc"})
    with pytest.raises(ConfigError, match="unknown optimizer"):
        main(["--debug", "train", str(cfg)])


def test_there_are_at_least_25_cases():
    assert len(CASES) + 2 >= 25


def test_yaml_no_means_the_string_no(tmp_path, tiny_model_dir):
    """YAML 1.1 reads an unquoted `no` as false; for options whose choices include 'no' that is what
    the user meant, not a type error."""
    from sage_libs.sage_finetune.cli import load_run_config

    cfg = write_config(tmp_path, tiny_model_dir)
    cfg.write_text(cfg.read_text().replace("save_strategy: 'no'", "save_strategy: no"))
    assert "save_strategy: no\n" in cfg.read_text()
    assert load_run_config(str(cfg), ["training.eval_strategy=no"])["training"].save_strategy == "no"


@pytest.mark.parametrize("data", [123, 4.5, {"text": "one record"}, b"bytes", True])
def test_train_with_a_wrong_data_argument(data, tmp_path, tiny_model_dir, no_model_loading):
    from sage_libs.sage_finetune import ConfigError, TrainingConfig, create_trainer

    trainer = create_trainer("lora", training_config=TrainingConfig(model_name_or_path=str(tiny_model_dir),
                                                                    output_dir=str(tmp_path / "out")))
    with pytest.raises(ConfigError, match=r"^train\(\): train_dataset: expected a data file path, a list of paths, "
                                          r"a list of records \(dicts\) or a datasets.Dataset; got " + type(data).__name__):
        trainer.train(data)
    assert not (tmp_path / "out").exists()


def test_a_raising_formatting_func_is_a_record_error_that_on_error_skip_skips(tiny_tokenizer):
    from sage_libs.sage_finetune.data.conversation import DataFormatError
    from sage_libs.sage_finetune.data.pipeline import tokenize_records

    def fmt(record):
        return [{"role": "user", "content": record["q"]}, {"role": "assistant", "content": record["a"]}]

    records = [{"q": "hi", "a": "hello"}, {"q": "no answer"}, {"q": "2+2", "a": "4"}]
    with pytest.raises(DataFormatError, match=r"^record 1: formatting_func .*fmt \(.*test_bad_input.py:\d+\) raised "
                                              r"KeyError: 'a'$"):
        tokenize_records(records, tiny_tokenizer, formatting_func=fmt)
    columns, stats = tokenize_records(records, tiny_tokenizer, formatting_func=fmt, on_error="skip")
    assert stats.skipped_invalid == 1 and len(columns["input_ids"]) == 2
    assert "record 1: formatting_func" in stats.errors[0]


@pytest.mark.parametrize("argv,expect", [
    (["chat", "m", "--temperature", "-1"], "argument --temperature: must be >= 0, got -1"),
    (["chat", "m", "--max-new-tokens", "0"], "argument --max-new-tokens: must be >= 1, got 0"),
    (["plan", "run.yaml", "--tflops", "nan"], "argument --tflops: expected a finite number, got 'nan'"),
    (["plan", "run.yaml", "--processes", "two"], "argument --processes: expected an integer, got 'two'"),
    (["data", "inspect", "d.jsonl", "--max-seq-length", "-5"], "argument --max-seq-length: must be >= 1, got -5"),
    (["tiny-model", "out", "--layers", "0"], "argument --layers: must be >= 1, got 0"),
])
def test_numeric_arguments_out_of_range_are_usage_errors(argv, expect, capsys):
    """Before: transformers' ValueError from generate() after the model had loaded (exit 1)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and [line for line in err.splitlines() if "error:" in line] == [
        f"sage-finetune {' '.join(argv[:2] if argv[0] == 'data' else argv[:1])}: error: {expect}"], err
