"""A GGUF file as a base model (issue #28, item 1): checked before anything is written, converted
once into an ordinary Hugging Face folder (the same logits as transformers' own GGUF load, the
file's tokenizer and chat template), then trained from with LoRA and QLoRA, merged, chatted with,
planned, and fingerprinted by its content."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sage_libs.sage_finetune.cli import main
from sage_libs.sage_finetune.errors import ConfigError
from sage_libs.sage_finetune.models import gguf as gguf_base

from .. import helpers
from ..paths import REPO
from .writer import write_llama_gguf

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def one_torch_thread():
    with helpers.torch_threads(1):
        yield


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _converted_folders(models_cache: Path) -> list[str]:
    root = models_cache / "gguf"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "digests") if root.is_dir() else []


# ------------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------------
def test_tiny_gguf_converts_to_the_logits_and_tokenizer_transformers_loads(tiny_gguf, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_base.converted_dir(tiny_gguf)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert json.loads((folder / gguf_base.SOURCE_FILE).read_text())["file"] == str(tiny_gguf.resolve())
    model = AutoModelForCausalLM.from_pretrained(folder)
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([tiny_tokenizer("The quick brown fox jumps over the lazy dog.").input_ids])
    assert model.dtype == torch.float32 and getattr(model, "hf_quantizer", None) is None
    assert torch.equal(_logits(model, ids), _logits(reference, ids))  # what transformers' loader dequantizes
    # against the float32 original: the file's F16 weights round by ~1e-3
    assert (_logits(model, ids) - _logits(original, ids)).abs().max() < 2e-2
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "Monday: two plus two is four.<|im_end|>"
    assert tokenizer(text).input_ids == tiny_tokenizer(text).input_ids
    assert tokenizer.chat_template == tiny_tokenizer.chat_template
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|pad|>")
    model.save_pretrained(folder.parent / "saved")  # an ordinary model: it saves (the GGUF-loaded one cannot)


def test_smollm2_converts_to_transformers_logits_with_its_chat_template(smollm2_gguf):
    """The real SmolLM2-135M-Instruct Q4_1 file (~30 s: dequantizing, twice)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_base.converted_dir(smollm2_gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                             "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n")
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False).input_ids])
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        reply = model.generate(ids, max_new_tokens=9, do_sample=False)[0, ids.shape[1]:]
    assert "Paris" in tokenizer.decode(reply)
    reference = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                     dtype=torch.float32)
    assert (_logits(model, ids) - _logits(reference, ids)).abs().max().item() == 0.0


def test_the_conversion_is_reused_and_keyed_by_content(tiny_gguf, tiny_model_dir, models_cache, tmp_path,
                                                       monkeypatch):
    light = gguf_base.converted_dir(tiny_gguf, weights=False)
    assert sorted(p.name for p in light.iterdir()) == sorted(
        ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", gguf_base.SOURCE_FILE])
    full = gguf_base.converted_dir(tiny_gguf)
    assert full.name == gguf_base.file_digest(tiny_gguf) and (full / "model.safetensors").is_file()
    stamp = (full / "model.safetensors").stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_base, "_convert", no_conversion)
    monkeypatch.setattr(gguf_base, "_write_model", no_conversion)
    assert gguf_base.converted_dir(tiny_gguf) == full
    assert gguf_base.converted_dir(tiny_gguf, weights=False) == full  # the full folder serves the tokenizer too
    assert (full / "model.safetensors").stat().st_mtime_ns == stamp
    # a copy elsewhere is the same content: the same folder
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    assert gguf_base.converted_dir(copy) == full
    # another file (other weights) is another conversion
    monkeypatch.undo()
    monkeypatch.setenv("SAGE_FINETUNE_MODELS", str(models_cache))
    other = write_llama_gguf(tiny_model_dir, tmp_path / "f32.gguf", f32=True)
    assert gguf_base.converted_dir(other, weights=False) != light


def test_a_killed_conversion_leaves_no_folder_and_the_next_one_cleans_up(tiny_gguf, models_cache):
    code = (
        "import os, signal, sys\n"
        "from sage_libs.sage_finetune.models import gguf as gguf_base\n"
        "def killed(src, out):\n"
        "    (out / 'model.safetensors').write_bytes(b'half a model')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "gguf_base._write_model = killed\n"
        "gguf_base.converted_dir(sys.argv[1])\n")
    result = subprocess.run([sys.executable, "-c", code, str(tiny_gguf)], capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr[-2000:]
    digest = gguf_base.file_digest(tiny_gguf)
    root = models_cache / "gguf"
    assert not (root / digest).exists()
    assert [p.name for p in root.glob(".converting-*")]  # the killed one's temporary folder, never renamed
    folder = gguf_base.converted_dir(tiny_gguf)
    assert folder == root / digest and (folder / "model.safetensors").stat().st_size > 1000
    assert not list(root.glob(".converting-*"))


def test_a_failed_conversion_leaves_nothing(tiny_gguf, models_cache, monkeypatch):
    def broken(src, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise ValueError("dequantization failed")

    monkeypatch.setattr(gguf_base, "_write_model", broken)
    with pytest.raises(ConfigError, match=r"^training.model_name_or_path: cannot convert the model of the GGUF file .*"
                                          r"ValueError: dequantization failed"):
        gguf_base.converted_dir(tiny_gguf)
    assert not [p for p in (models_cache / "gguf").iterdir() if p.name.startswith((".converting", "0", "1", "2", "3",
                                                                                  "4", "5", "6", "7", "8", "9", "a",
                                                                                  "b", "c", "d", "e", "f"))
                and p.is_dir() and p.name != "digests"]


# ------------------------------------------------------------------------------------------------
# bad files: one line, exit 2, nothing written
# ------------------------------------------------------------------------------------------------
def _bad_files(tiny_gguf: Path, tiny_model_dir: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    data = tiny_gguf.read_bytes()
    truncated = folder / "truncated.gguf"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    text = folder / "notes.gguf"
    text.write_text("these are not weights\n" * 20)
    header_only = folder / "header.gguf"
    header_only.write_bytes(data[:60])
    bert = write_llama_gguf(tiny_model_dir, folder / "bert.gguf", arch="bert")
    return {
        "truncated": (truncated, "is truncated or corrupt: tensor"),
        "text file": (text, "is not a GGUF file (it does not start with the GGUF magic)"),
        "cut header": (header_only, "is truncated or corrupt (its GGUF header runs past the end"),
        "architecture": (bert, "GGUF architecture 'bert' is not supported by transformers' GGUF loader; supported: "),
    }


@pytest.mark.parametrize("case", ["truncated", "text file", "cut header", "architecture"])
def test_a_bad_gguf_file_exits_2_with_one_line_and_writes_nothing(case, tiny_gguf, tiny_model_dir, tmp_path,
                                                                  models_cache, capsys):
    path, message = _bad_files(tiny_gguf, tiny_model_dir, tmp_path)[case]
    cfg = helpers.write_config(tmp_path, path)
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sage-finetune train: error: training.model_name_or_path: {path}") and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    if case == "architecture":
        assert "llama" in err and "qwen2" in err
    assert not (tmp_path / "out").exists() and not (models_cache / "gguf").exists()
    assert main(["plan", str(cfg)]) == 2
    assert message in capsys.readouterr().err


def test_an_unsupported_tensor_type_is_named(tiny_gguf, tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    reader = gguf.GGUFReader(tiny_gguf)
    writer = gguf.GGUFWriter(path, "llama")
    for field in reader.fields.values():  # the tiny file's metadata, and one Q8_K tensor (no dequantizer)
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    writer.add_tensor("junk.weight", np.zeros(292, np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match=r"^training.model_name_or_path: .*odd.gguf: tensor 'junk.weight' is of type "
                                          r"Q8_K, which gguf-py cannot dequantize; supported: .*Q4_1"):
        gguf_base.read_header(path)


def test_the_cli_turns_a_bad_gguf_into_exit_2_and_one_line(tmp_path, tiny_model_dir):
    text = tmp_path / "model.gguf"
    text.write_text("not a model\n")
    cfg = helpers.write_config(tmp_path, text)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "sage_libs.sage_finetune.cli", "train", str(cfg)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"sage-finetune train: error: training.model_name_or_path: {text} is not a GGUF file (it does not start "
        "with the GGUF magic); expected a .gguf file written by llama.cpp or gguf-py, or a model directory"]
    assert not (tmp_path / "out").exists()


def test_gguf_file_names_a_file_in_a_local_folder(tiny_gguf, tmp_path, capsys):
    cfg = helpers.write_config(tmp_path, tiny_gguf.parent, training={"gguf_file": "missing.gguf"})
    assert main(["train", str(cfg)]) == 2
    assert f"training.gguf_file: {tiny_gguf.parent / 'missing.gguf'}: no such file" in capsys.readouterr().err
    (tiny_gguf.parent / "folder.gguf").mkdir()
    cfg = helpers.write_config(tmp_path, tiny_gguf.parent, training={"gguf_file": "folder.gguf"})
    assert main(["train", str(cfg)]) == 2
    assert f"training.gguf_file: {tiny_gguf.parent / 'folder.gguf'}: is a directory" in capsys.readouterr().err
    cfg = helpers.write_config(tmp_path, "org/model", training={"gguf_file": "x.gguf"})
    assert main(["train", str(cfg)]) == 2
    assert "training.gguf_file: 'x.gguf' is looked up in training.model_name_or_path, which must then be a local " \
           "folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_importing_the_package_imports_neither_torch_nor_gguf():
    code = ("import sys, sage_libs.sage_finetune, sage_libs.sage_finetune.models.files, "
            "sage_libs.sage_finetune.models.gguf\nprint(sorted(m for m in ('torch', 'gguf') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr[-2000:]


# ------------------------------------------------------------------------------------------------
# training from a GGUF base
# ------------------------------------------------------------------------------------------------
def test_lora_from_a_gguf_file_trains_saves_reloads_merges_and_chats(tiny_gguf, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = helpers.write_config(tmp_path, tiny_gguf, training={"max_steps": 12, "learning_rate": 1e-2})
    assert main(["train", str(cfg)]) == 0
    out = tmp_path / "out"
    losses = [json.loads(line)["loss"] for line in (out / "trainer_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    adapter = out / "adapter"
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(tiny_gguf.resolve())  # the file, not the cache folder it was converted into
    assert yaml.safe_load((out / "run_config.yaml").read_text())["training"]["model_name_or_path"] == str(tiny_gguf)
    # the adapter reloads onto the converted base and changes its output
    base = AutoModelForCausalLM.from_pretrained(gguf_base.converted_dir(tiny_gguf))
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    plain = _logits(base, ids)
    tuned = _logits(PeftModel.from_pretrained(base, adapter), ids)
    assert not torch.allclose(plain, tuned)
    # merge finds the base from adapter_config.json (the GGUF file) and writes a standalone model
    capsys.readouterr()
    assert main(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert (_logits(merged, ids) - tuned).abs().max() < 1e-4
    assert (tmp_path / "merged" / "chat_template.jinja").is_file()
    assert main(["chat", str(adapter), "--prompt", "What is two plus two?", "--max-new-tokens", "3"]) == 0
    # an adapter without tokenizer files: chat takes the tokenizer of the GGUF base's conversion
    import shutil

    bare = tmp_path / "bare-adapter"
    shutil.copytree(adapter, bare, ignore=shutil.ignore_patterns("tokenizer*", "chat_template*", "special_tokens*"))
    assert not (bare / "tokenizer_config.json").exists()
    assert main(["chat", str(bare), "--prompt", "What is two plus two?", "--max-new-tokens", "3"]) == 0
    # export finds the GGUF base as merge does: the adapter's export is the merged model's, tensor for tensor
    from gguf import GGUFReader

    assert main(["export", str(adapter), "--gguf", str(tmp_path / "a.gguf"), "--type", "f32"]) == 0
    assert main(["export", str(tmp_path / "merged"), "--gguf", str(tmp_path / "m.gguf"), "--type", "f32"]) == 0
    exported = [[(t.name, bytes(t.data)) for t in GGUFReader(tmp_path / name).tensors] for name in ("a.gguf", "m.gguf")]
    assert exported[0] == exported[1] and len(exported[0]) > 10


def test_qlora_from_a_gguf_file_trains_a_step(tiny_gguf, tmp_path):
    pytest.importorskip("bitsandbytes")
    from sage_libs.sage_finetune.run_config import load_run_config, make_trainer

    cfg = helpers.write_config(tmp_path, tiny_gguf, method="qlora", training={"max_steps": 2})
    trainer = make_trainer(load_run_config(str(cfg)))
    metrics = trainer.train()
    assert metrics["global_step"] == 2 and metrics["train_loss"] > 0
    layers = [m for m in trainer.model.modules() if type(m).__name__ == "Linear4bit"]
    assert layers, "the base is not 4-bit"
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


def test_a_folder_and_gguf_file_train_like_the_file_itself(tiny_gguf, tmp_path):
    from sage_libs.sage_finetune.run_config import load_run_config, make_trainer

    by_folder = helpers.write_config(tmp_path, tiny_gguf.parent, "folder.yaml",
                                     training={"gguf_file": tiny_gguf.name, "max_steps": 2,
                                               "output_dir": str(tmp_path / "a")})
    by_file = helpers.write_config(tmp_path, tiny_gguf, "file.yaml",
                                   training={"max_steps": 2, "output_dir": str(tmp_path / "b")})
    losses = []
    for cfg in (by_folder, by_file):
        trainer = make_trainer(load_run_config(str(cfg)))
        losses.append(trainer.train()["train_loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    recorded = json.loads((tmp_path / "a" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(tiny_gguf.resolve())


def test_the_run_identity_fingerprints_the_gguf_file(tiny_gguf, tiny_model_dir, tmp_path):
    from sage_libs.sage_finetune.config import DataConfig, TrainingConfig
    from sage_libs.sage_finetune.run.identity import RunIdentity, identity_differences

    def identity(model, **training):
        tc = TrainingConfig(model_name_or_path=str(model), output_dir="out", **training)
        return RunIdentity.from_resolved_config({"method": "lora", "training": tc.to_dict(),
                                                 "data": DataConfig().to_dict()}, [{"text": "x"}])

    path = tmp_path / "model.gguf"
    path.write_bytes(tiny_gguf.read_bytes())
    first = identity(path)
    assert first.fields["training"]["model_name_or_path"]["sha256"] == gguf_base.file_digest(tiny_gguf)
    assert identity(path).fingerprint == first.fingerprint
    assert identity(tmp_path, gguf_file="model.gguf").fields["training"]["model_name_or_path"] == \
        first.fields["training"]["model_name_or_path"]
    write_llama_gguf(tiny_model_dir, path, f32=True)  # same name, other content
    second = identity(path)
    assert second.fingerprint != first.fingerprint
    assert identity_differences(first.to_json(), second) == "the model changed"


def test_a_resumed_run_refuses_another_gguf_file_of_the_same_name(tiny_gguf, tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "model.gguf"
    path.write_bytes(tiny_gguf.read_bytes())
    cfg = helpers.write_config(tmp_path, path, training={"max_steps": 2, "save_strategy": "steps", "save_steps": 2})
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", str(cfg)]) == 0
    # peft's "no config.json beside the base" on every checkpoint of a GGUF base is known noise
    assert not [w for w in caught if "Could not find a config file" in str(w.message)]
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    write_llama_gguf(tiny_model_dir, path, f32=True)  # replaced: same name, other content
    capsys.readouterr()
    assert main(["train", str(cfg), "training.resume_from_checkpoint=true"]) == 2
    err = capsys.readouterr().err
    assert "were written by another run (the model changed)" in err, err


def test_plan_and_data_inspect_read_a_gguf_base(tiny_gguf, tiny_model_dir, tmp_path, capsys):
    cfg = helpers.write_config(tmp_path, tiny_gguf)
    # a fixed budget: the machine's available memory moves between the two plans
    assert main(["plan", str(cfg), "--tflops", "1", "--memory", "24GB"]) == 0
    gguf_plan = capsys.readouterr().out
    assert f"plan: lora on {tiny_gguf} (" in gguf_plan and "float32 weights" in gguf_plan
    assert not (tmp_path / "out").exists()
    folder_cfg = helpers.write_config(tmp_path, tiny_model_dir, "folder.yaml")
    assert main(["plan", str(folder_cfg), "--tflops", "1", "--memory", "24GB"]) == 0
    folder_plan = capsys.readouterr().out
    # the same model: the same parameter count and memory lines
    assert gguf_plan.split("(", 1)[1].split(")")[0] == folder_plan.split("(", 1)[1].split(")")[0]
    assert gguf_plan.split("\n", 1)[1] == folder_plan.split("\n", 1)[1]
    # data inspect tokenizes with the file's tokenizer and template, as training does
    assert main(["data", "inspect", str(cfg)]) == 0
    gguf_report = capsys.readouterr().out
    assert main(["data", "inspect", str(folder_cfg)]) == 0
    assert gguf_report.startswith("chat template: the tokenizer's template") and gguf_report == capsys.readouterr().out


def test_docs_say_how_to_train_from_a_gguf_file():
    text = (REPO / "docs" / "models.md").read_text()
    assert "gguf_file" in text and ".gguf" in text
