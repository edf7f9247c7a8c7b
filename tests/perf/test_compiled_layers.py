"""Compiled decoder layers (``training.compile_layers``, :mod:`sage_libs.sage_finetune.perf.compiled_layers`).

Each decoder layer is compiled in place with ``torch.compile(dynamic=True)``; the per-document
attention is excluded from tracing. On padding-free rows with per-document attention the loss and
LoRA gradients equal the eager ones (float32, tiny 2-layer Llama, one thread: inductor fuses the
elementwise work, which may reorder float sums, hence rtol 1e-5 / atol 1e-6), a second batch with
another length and document layout reuses the compiled graphs (no recompilation), and the
parameter names (what PEFT saves) are unchanged. Compilation takes ~half a minute here."""

import shutil

import pytest

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune.data.collate import PackedCollator  # noqa: E402
from sage_libs.sage_finetune.perf import doc_attention, selective_logits  # noqa: E402
from sage_libs.sage_finetune.perf.compiled_layers import compile_decoder_layers, decoder_layers  # noqa: E402

from .test_perf_paths import _assert_grads_close, _examples, _lora_grads, _lora_model  # noqa: E402


def _step(model, batch):
    model.zero_grad(set_to_none=True)
    loss = selective_logits.selective_causal_lm_loss(model, dict(batch))
    loss.backward()
    return loss.detach(), _lora_grads(model)


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="inductor needs a C++ compiler on the CPU")
def test_compiled_layers_equal_eager_and_do_not_recompile(tiny_model_dir):
    import torch._dynamo

    torch.set_num_threads(1)
    torch._dynamo.reset()
    model = _lora_model(tiny_model_dir)
    model.train()
    assert doc_attention.install_doc_attention(model)
    collate = PackedCollator(pad_token_id=0, flatten=True)
    batches = [collate(_examples(5, lengths=lengths)) for lengths in ((9, 23, 5, 31), (17, 4, 40, 12, 8, 3))]
    eager = [_step(model, b) for b in batches]
    names = [n for n, _ in model.named_parameters()]

    layers = decoder_layers(model)
    assert len(layers) == model.base_model.model.config.num_hidden_layers
    assert compile_decoder_layers(model) == len(layers)
    assert [n for n, _ in model.named_parameters()] == names  # in place: what PEFT saves is unchanged
    torch._dynamo.utils.counters.clear()
    compiled = [_step(model, batches[0])]
    frames_after_first = dict(torch._dynamo.utils.counters["frames"])
    compiled.append(_step(model, batches[1]))  # another length, another document layout
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    assert dict(torch._dynamo.utils.counters["frames"]).get("ok") == frames_after_first.get("ok")  # no recompile

    for (loss_e, grads_e), (loss_c, grads_c) in zip(eager, compiled):
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        _assert_grads_close(grads_c, grads_e, rtol=1e-5, atol=1e-6)


def test_compile_layers_option_is_decided_and_installed_once(tiny_model_dir, tmp_path, caplog):
    """``training.compile_layers`` goes through the one fast-path decision (perf.plan_fast_paths) and
    its install step; off by default, so default runs compile nothing."""
    from sage_libs.sage_finetune import DataConfig, TrainingConfig
    from sage_libs.sage_finetune.perf import install_fast_paths, plan_fast_paths

    model = _lora_model(tiny_model_dir)
    layers = decoder_layers(model)
    default = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "a"))
    paths = install_fast_paths(model, plan_fast_paths(model, default, DataConfig()))
    assert not paths.compile_layers and all(layer._compiled_call_impl is None for layer in layers)
    assert "compiled decoder layers off" in paths.describe()

    opted = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "b"), compile_layers=True)
    caplog.clear()
    paths = install_fast_paths(model, plan_fast_paths(model, opted, DataConfig()))
    assert paths.compile_layers and "compiled decoder layers on" in paths.describe()
    # the console would otherwise stay quiet for minutes while the first steps compile
    assert any(r.levelname == "WARNING" and "compiled during the first training" in r.getMessage()
               for r in caplog.records)
    assert all(layer._compiled_call_impl is not None for layer in layers)
