"""bf16 on the CPU: refused without bfloat16 instructions; with them, a frozen base is held in
bfloat16 while the adapter, its gradients and its optimizer states stay float32."""

import pytest

from sage_libs.sage_finetune import ConfigError, LoRAConfig, TrainingConfig, create_loader, create_trainer
from sage_libs.sage_finetune.models import precision
from sage_libs.sage_finetune.models.precision import base_weights_dtype, cpu_native_bf16

from ..paths import EXAMPLE_DATA

X86_ZEN4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw "
            "avx512_bf16 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
X86_SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n"
X86_AVX2 = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx avx2 fma\n"
X86_AVX512_NO_BF16 = "flags\t\t: avx2 avx512f avx512bw avx512vl\n"
ARM_NEOVERSE_V1 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16 i8mm\nCPU implementer\t: 0x41\n"
ARM_GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes atomics\n"


@pytest.mark.parametrize("text, expected", [
    (X86_ZEN4, (True, "avx512_bf16")),
    (X86_SAPPHIRE_RAPIDS, (True, "amx_bf16")),
    (ARM_NEOVERSE_V1, (True, "bf16")),
    (X86_AVX2, (False, "its widest vector flag is avx2")),
    (X86_AVX512_NO_BF16, (False, "its widest vector flag is avx512f")),
    (ARM_GRAVITON2, (False, "its widest vector flag is asimd")),
])
def test_native_bf16_from_cpuinfo(tmp_path, text, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert cpu_native_bf16(str(path)) == expected


def test_native_bf16_unknown_without_cpuinfo(tmp_path):
    native, evidence = cpu_native_bf16(str(tmp_path / "missing"))
    assert native is None and "no " in evidence


@pytest.mark.parametrize("model_dtype, bf16, frozen, expected", [
    ("auto", True, True, "bfloat16"),     # LoRA under bf16: the frozen base in bf16
    ("auto", True, False, "auto"),        # full / freeze / modules_to_save: the checkpoint's
    ("auto", False, True, "auto"),        # no mixed precision: the checkpoint's
    ("float32", True, True, "float32"),   # an explicit choice wins
    ("float16", False, False, "float16"),
])
def test_base_weights_dtype(model_dtype, bf16, frozen, expected):
    assert base_weights_dtype(model_dtype, bf16=bf16, frozen_base=frozen) == expected


def _trainer(model_dir, out, *, modules_to_save=None, bias="none", callbacks=None):
    tc = TrainingConfig(model_name_or_path=str(model_dir), output_dir=str(out), max_steps=6, bf16=True, use_cpu=True,
                        per_device_train_batch_size=8, learning_rate=1e-2, warmup_steps=0, logging_steps=1,
                        eval_on_start=True, eval_strategy="no", save_strategy="no", disable_tqdm=True,
                        max_seq_length=128)
    lc = LoRAConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", modules_to_save=modules_to_save,
                    bias=bias)
    return create_trainer("lora", training_config=tc, lora_config=lc, callbacks=callbacks)


def test_bf16_refused_on_a_cpu_without_bf16_instructions(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: (False, "its widest vector flag is avx2"))
    with pytest.raises(ConfigError, match=r"training.bf16: this CPU has no bfloat16 instructions .*avx2.*"
                                          r"set bf16: false"):
        _trainer(tiny_model_dir, tmp_path / "out").train(create_loader("jsonl").load(
            EXAMPLE_DATA / "chat_train.jsonl", max_samples=8))
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("one_thread")
def test_lora_bf16_holds_the_base_in_bf16_and_trains_float32_adapters(tmp_path, tiny_model_dir, monkeypatch):
    torch = pytest.importorskip("torch")
    # the path under test, on any CPU (on one without bf16 instructions it is slow, not wrong)
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: (True, "avx512_bf16"))
    from transformers import TrainerCallback

    steps = []

    class States(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kw):
            steps.append({s.dtype for group in optimizer.state.values() for s in group.values()
                          if torch.is_tensor(s) and s.dim() > 0})

    trainer = _trainer(tiny_model_dir, tmp_path / "out", callbacks=[States()])
    trainer.setup()
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    dtypes = {(p.requires_grad, p.dtype) for p in trainer.model.parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}

    loader = create_loader("jsonl")
    metrics = trainer.train(loader.load(EXAMPLE_DATA / "chat_train.jsonl", max_samples=48),
                            loader.load(EXAMPLE_DATA / "chat_eval.jsonl", max_samples=8))
    assert len(steps) == 6 and all(s == {torch.float32} for s in steps)  # AdamW's states
    from sage_libs.sage_finetune.perf.fused_lora import _FusedLoraForward

    fused = [m for m in trainer.model.modules() if isinstance(vars(m).get("forward"), _FusedLoraForward)]
    assert len(fused) == 14  # every adapted linear of the 2 layers runs the fused branch under autocast
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    for name, p in trainer.model.named_parameters():
        if name in base:  # the frozen base is bit-identical after training
            assert torch.equal(p.detach(), base[name]), name
        else:
            assert p.dtype == torch.float32, name


@pytest.mark.parametrize("extra", [{"modules_to_save": ["lm_head"]}, {"bias": "all"}])
def test_trained_base_parts_keep_the_checkpoints_precision(tmp_path, tiny_model_dir, monkeypatch, extra):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: (True, "avx512_bf16"))
    trainer = _trainer(tiny_model_dir, tmp_path / "out", **extra)
    trainer.setup()
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("native, bf16, frozen, expected", [
    ((True, "amx_bf16"), False, True, "this CPU has amx_bf16: training.bf16: true (with use_cpu: true) holds the "
                                      "frozen base in bfloat16 (0.25 GiB less)"),
    ((False, "its widest vector flag is avx2"), False, True, None),  # no instructions: no suggestion
    ((True, "avx512_bf16"), True, True, None),                        # already on
    ((True, "avx512_bf16"), False, False, None),                      # full fine-tuning: the weights train
])
def test_plan_suggests_bf16_where_the_cpu_has_it(monkeypatch, native, bf16, frozen, expected):
    from sage_libs.sage_finetune.planner.plan import bf16_note
    from sage_libs.sage_finetune.planner.shapes import RunShape

    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: native)
    note = bf16_note(TrainingConfig(model_name_or_path="m", output_dir="o", bf16=bf16, use_cpu=bf16), RunShape(method="lora"),
                     2**29, frozen)
    assert (note is None) if expected is None else note.startswith(expected)
