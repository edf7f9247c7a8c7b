"""Training on CPUs whose instruction set changes which kernels run.

QLoRA:
On CPUs with AVX-512 BF16, bitsandbytes repacks a 4-bit weight in place into an inference-only
layout on the first no-grad forward in eval mode; training through that layout has no backward
kernel. These tests run the real repacking path twice: natively where the CPU has avx512_bf16, and
on any CPU by making bitsandbytes believe it has (the layer switch it reads from the CPU at
construction), which runs the same repacking code. The pytest header prints the CPU flags.
"""


import pytest

torch = pytest.importorskip("torch")
bnb_modules = pytest.importorskip("bitsandbytes.nn.modules")

from sage_libs.sage_finetune import LoRAConfig, TrainingConfig, TrainingError, create_loader, create_trainer  # noqa: E402
from sage_libs.sage_finetune.trainers import qlora  # noqa: E402

from ..conftest import cpu_flags  # noqa: E402
from ..paths import EXAMPLE_DATA  # noqa: E402

HAS_AVX512_BF16 = "avx512_bf16=yes" in cpu_flags()


pytestmark = pytest.mark.usefixtures("one_thread")  # see helpers.torch_threads


@pytest.fixture(params=["this-cpu", "avx512-bf16-simulated"])
def cpu(request, monkeypatch):
    if request.param == "this-cpu" and not HAS_AVX512_BF16:
        pytest.skip("this CPU has no avx512_bf16, so bitsandbytes never repacks here natively; "
                    "the avx512-bf16-simulated case runs the repacking path")
    if request.param == "avx512-bf16-simulated":
        # Linear4bit reads the CPU feature once, at construction, into support_avx512bf16_for_cpu
        monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    return request.param


def qlora_trainer(model_dir, out, compute_dtype="float32"):
    tc = TrainingConfig(model_name_or_path=str(model_dir), output_dir=str(out), max_steps=4,
                        per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=1e-2,
                        warmup_steps=0, max_seq_length=64, logging_steps=1, save_strategy="no", disable_tqdm=True,
                        eval_on_start=True)
    lora = LoRAConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights="gaussian")
    return create_trainer("qlora", training_config=tc, lora_config=lora,
                          quantization_config={"bnb_4bit_compute_dtype": compute_dtype})


def data():
    loader = create_loader("jsonl")
    return loader.load(EXAMPLE_DATA / "chat_train.jsonl", max_samples=8), \
        loader.load(EXAMPLE_DATA / "chat_eval.jsonl", max_samples=8)


def batch_gradients(trainer, batch):
    model = trainer.model
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def prepared(trainer):
    train, evald = data()
    trainer.setup()
    train_ds = trainer.prepare_dataset(train, "train")
    trainer.build_hf_trainer(train_ds, trainer.prepare_dataset(evald, "eval"))
    batch = trainer.data_collator()([train_ds[i] for i in range(4)])
    return batch


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_evaluate_leaves_qlora_gradients_unchanged(cpu, compute_dtype, tiny_model_dir, tmp_path):
    trainer = qlora_trainer(tiny_model_dir, tmp_path / "run", compute_dtype)
    batch = prepared(trainer)
    before = batch_gradients(trainer, batch)
    trainer.hf_trainer.evaluate()
    trainer.generate("What is 3 + 4?", max_new_tokens=2)  # the other no-grad eval-mode forward
    assert qlora.repacked_4bit_layers(trainer.model) == [], f"CPU flags: {cpu_flags()}"
    after = batch_gradients(trainer, batch)
    assert before.keys() == after.keys() and before
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-4, atol=1e-7,
                                   msg=lambda m, n=name: f"{n} ({cpu}, CPU flags {cpu_flags()}): {m}")


def test_simulated_avx512_bf16_really_repacks_without_the_fix(tiny_model_dir, tmp_path, monkeypatch):
    """The simulated case above exercises bitsandbytes' real repacking code: with our switch-off
    disabled, evaluation repacks every 4-bit layer and the next gradients are wrong. (If a future
    bitsandbytes stops repacking, this says so instead of passing silently.)"""
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    monkeypatch.setattr(qlora, "keep_4bit_layout_trainable", lambda model: 0)
    trainer = qlora_trainer(tiny_model_dir, tmp_path / "run")
    batch = prepared(trainer)
    if not any(getattr(m, qlora._REPACK_SWITCH, False) for m in trainer.model.modules()):
        pytest.skip(f"bitsandbytes {__import__('bitsandbytes').__version__} has no per-layer repacking switch")
    before = batch_gradients(trainer, batch)
    trainer.hf_trainer.evaluate()
    n_linear = sum(type(m).__name__ == "Linear4bit" and not hasattr(m, "base_layer") for m in trainer.model.modules())
    assert len(qlora.repacked_4bit_layers(trainer.model)) == n_linear > 0
    after = batch_gradients(trainer, batch)
    worst = max((after[n] - before[n]).abs().max().item() for n in before)
    scale = max(before[n].abs().max().item() for n in before)
    assert worst / scale > 0.1, (worst, scale)


def test_guard_stops_training_through_a_repacked_weight(tiny_model_dir, tmp_path, monkeypatch):
    """Should some bitsandbytes version repack in a way our switch-off misses, training stops before
    the first step with a clear error instead of computing wrong gradients."""
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    monkeypatch.setattr(qlora, "keep_4bit_layout_trainable", lambda model: 0)
    trainer = qlora_trainer(tiny_model_dir, tmp_path / "run")
    train, evald = data()
    with pytest.raises(TrainingError, match=r"repacked by bitsandbytes .* no backward kernel"):
        trainer.train(train, evald)  # eval_on_start repacks, then the guard stops step 1


def test_bitsandbytes_kernel_hub_notice_is_not_shown(caplog):
    """While a run or a command lasts (utils.noise.known_noise_dropped), not after."""
    import logging

    from sage_libs.sage_finetune.utils.noise import known_noise_dropped

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    notice = "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ..."
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        with known_noise_dropped():
            log.warning(notice, "No module named 'kernels'")
            log.warning("a different bitsandbytes warning")
        log.warning(notice, "outside a run")
    assert [r.getMessage() for r in caplog.records] == [
        "a different bitsandbytes warning", notice % "outside a run"]


def test_bf16_mixed_precision_trains_on_the_cpu(tiny_model_dir, tmp_path):
    """bf16 autocast on the CPU with the per-document attention of padding-free batches, on this
    CPU's own instructions: where it has bfloat16 ones (AMX or AVX-512 BF16) the loss falls and stays
    finite; elsewhere (emulated, slower than float32) the run is refused before it starts."""
    from transformers.utils import is_torch_bf16_available_on_device

    from sage_libs.sage_finetune import ConfigError
    from sage_libs.sage_finetune.models.precision import cpu_native_bf16

    if not is_torch_bf16_available_on_device("cpu"):
        pytest.skip(f"torch cannot compute in bfloat16 on this CPU ({cpu_flags()})")
    native, evidence = cpu_native_bf16()
    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "run"), max_steps=6,
                        per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=1e-2,
                        warmup_steps=0, max_seq_length=64, logging_steps=1, save_strategy="no", disable_tqdm=True,
                        eval_on_start=True, bf16=True, use_cpu=True)
    trainer = create_trainer("lora", training_config=tc,
                             lora_config=LoRAConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    train, evald = data()
    if native is False:
        with pytest.raises(ConfigError, match="this CPU has no bfloat16 instructions"):
            trainer.train(train, evald)
        return
    m = trainer.train(train, evald)
    assert m["eval_loss"] < m["eval_loss_before"] - 0.01, (m, cpu_flags(), evidence)
