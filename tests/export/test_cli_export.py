"""``sage-finetune export``: bad inputs exit 2 with one line before anything is written; the write
is atomic (a failure leaves neither a half-written file nor a changed old one); the Modelfile."""

from __future__ import annotations

import json
import shutil

import pytest

from sage_libs.sage_finetune.cli import main


def _bad(tmp_path, tiny_model_dir, case):
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    if case == "missing":
        return [str(tmp_path / "nope"), "--gguf", str(out)], "no such directory"
    if case == "file":
        (tmp_path / "f.txt").write_text("x")
        return [str(tmp_path / "f.txt"), "--gguf", str(out)], "is a file"
    if case == "not a model":
        (tmp_path / "empty").mkdir()
        return [str(tmp_path / "empty"), "--gguf", str(out)], "no config.json"
    if case == "architecture":
        src = tmp_path / "gpt2ish"
        shutil.copytree(tiny_model_dir, src)
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
        return [str(src), "--gguf", str(out)], "supports the model types llama, mistral, qwen2, qwen3"
    if case == "type":
        return [str(tiny_model_dir), "--gguf", str(out), "--type", "q4_k_m"], "supported: f32, f16, bf16, q8_0"
    if case == "out folder":
        return [str(tiny_model_dir), "--gguf", str(tmp_path / "missing" / "m.gguf")], "does not exist"
    if case == "out suffix":
        return [str(tiny_model_dir), "--gguf", str(tmp_path / "out" / "m.bin")], "ending in .gguf"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "file", "not a model", "architecture", "type", "out folder", "out suffix"])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(case, tmp_path, tiny_model_dir, capsys):
    argv, expected = _bad(tmp_path, tiny_model_dir, case)
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_writes_gguf_and_modelfile(tiny_model_dir, tmp_path, capsys):
    assert main(["export", str(tiny_model_dir), "--gguf", str(tmp_path / "tiny.gguf"), "--type", "q8_0"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "tiny.gguf"), str(tmp_path / "Modelfile")]
    text = (tmp_path / "Modelfile").read_text()
    assert text.splitlines()[1] == "FROM ./tiny.gguf"
    assert 'TEMPLATE """' in text and 'PARAMETER stop "<|im_end|>"' in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "tiny.gguf"]


def test_a_failed_export_leaves_the_old_file_and_no_temporary(tiny_model_dir, tmp_path, monkeypatch):
    import gguf

    from sage_libs.sage_finetune.export import export_gguf

    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    (tmp_path / "Modelfile").write_text("old")
    calls = []

    def failing(data, qtype):
        calls.append(qtype)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if killed half way through the tensors
        return real(data, qtype)

    real = gguf.quants.quantize
    monkeypatch.setattr(gguf.quants, "quantize", failing)
    with pytest.raises(KeyboardInterrupt):
        export_gguf(tiny_model_dir, out, "q8_0")
    assert out.read_bytes() == b"old" and (tmp_path / "Modelfile").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "m.gguf"]


def test_sigterm_during_export_exits_143_and_leaves_no_temporary(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Before: the process died from the signal itself and left a .part file of the model's size."""
    import os
    import signal
    import time

    import gguf

    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    stale = tmp_path / ".m.gguf.killed.part"  # left by an export killed with -9 long ago
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    calls = []

    def sigterm_half_way(data, qtype):
        calls.append(qtype)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(data, qtype)

    real = gguf.quants.quantize
    monkeypatch.setattr(gguf.quants, "quantize", sigterm_half_way)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["export", str(tiny_model_dir), "--gguf", str(out), "--type", "q8_0"]) == 143
    assert "sage-finetune export: terminated (SIGTERM)" in capsys.readouterr().err
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_modelfile_templates():
    from sage_libs.sage_finetune.export.modelfile import modelfile_text, stop_tokens, template_shape

    llama3 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    assert template_shape(llama3) == "llama3"
    assert stop_tokens(llama3, "<|end_of_text|>") == ["<|eot_id|>", "<|end_of_text|>"]
    other = modelfile_text("x.gguf", {"chat_template": "{{ messages }}", "eos_token": "</s>"}, 4096)
    assert 'TEMPLATE """' not in other and "matches the template stored in the GGUF file" in other
    assert 'PARAMETER stop "</s>"' in other and "PARAMETER num_ctx 4096" in other
    none = modelfile_text("x.gguf", {"chat_template": None, "eos_token": None})
    assert "no chat template" in none and "PARAMETER" not in none


def test_output_suffix_is_checked_without_case(tmp_path):
    from sage_libs.sage_finetune.errors import ConfigError
    from sage_libs.sage_finetune.export.gguf_export import check_export_args

    assert check_export_args(tmp_path / "Model.GGUF", "f16") == tmp_path / "Model.GGUF"
    with pytest.raises(ConfigError, match="ending in .gguf"):
        check_export_args(tmp_path / "model.gguf.bin", "f16")
