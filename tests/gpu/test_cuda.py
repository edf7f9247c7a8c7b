"""The GPU paths, on a CUDA device (skipped elsewhere; run with ``pytest --gpu -m gpu``).

CPU-only CI cannot reach these branches: bf16/fp16 mixed precision through the HF Trainer on CUDA,
LoRA weights placed on the GPU, padded vs padding-free batches with CUDA's sdpa (where our
per-document attention is off and transformers builds the packed-sequence mask from position_ids),
and DPO in bf16. Each test asserts behaviour: loss falls, exact reload, no leak across documents.
"""

from __future__ import annotations

import math

import pytest

from ..trainers.test_preference import PAIRS
from ..trainers.test_trainers import LORA, batch, logits, training_config

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def data():
    from sage_libs.sage_finetune import create_loader

    from ..paths import EXAMPLE_DATA

    loader = create_loader("jsonl")
    return {"train": loader.load(EXAMPLE_DATA / "chat_train.jsonl", max_samples=24),
            "eval": loader.load(EXAMPLE_DATA / "chat_eval.jsonl", max_samples=8)}


def _lora_dtypes_seen(model) -> set:
    """Record the dtype that reaches each LoRA A matrix during training (autocast's choice)."""
    seen, hooks = set(), []
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            hooks.append(module.register_forward_hook(lambda m, args, out: seen.add(out.dtype)))
    return seen, hooks


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lora_mixed_precision_on_cuda(tiny_model_dir, tmp_path, data, precision):
    """bf16 / fp16 autocast on the GPU: the adapter lives on CUDA and trains in float32 master
    weights, the matmuls run in the half type, the loss falls, and the saved adapter reloads to the
    same logits."""
    from sage_libs.sage_finetune import LoRAConfig, create_trainer

    tc = training_config(tiny_model_dir, tmp_path / "run", **{precision: True})
    trainer = create_trainer("lora", training_config=tc, lora_config=LoRAConfig(**LORA, target_modules="all-linear"))
    trainer.setup()
    seen, hooks = _lora_dtypes_seen(trainer.model)
    metrics = trainer.train(data["train"], data["eval"])
    for h in hooks:
        h.remove()
    half = torch.bfloat16 if precision == "bf16" else torch.float16
    assert half in seen, seen
    assert metrics["eval_loss"] < metrics["eval_loss_before"], metrics
    losses = [e["loss"] for e in trainer.hf_trainer.state.log_history if "loss" in e]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses), losses
    trained = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all(p.device.type == "cuda" and p.dtype == torch.float32 for _, p in trained)
    enc = batch(trainer.tokenizer)
    fresh = create_trainer("lora", training_config=tc, lora_config=trainer.lora_config)
    fresh.load_model(trainer.save_model(tmp_path / "adapter"))
    fresh.model.to("cuda")
    # accelerate leaves the trained model's forward under autocast: compare both under the same one
    with torch.autocast("cuda", dtype=half):
        torch.testing.assert_close(logits(fresh.model, enc), logits(trainer.model, enc), rtol=0, atol=1e-4)


def test_padding_free_rows_on_cuda_do_not_leak(tiny_model_dir, tmp_path, data):
    """On CUDA with sdpa our per-document attention is off; a padding-free row then relies on
    transformers' packed-sequence mask (built from position_ids). Each document's logits in the
    flat row must equal its logits alone, and the collator's labels never cross a boundary."""
    from sage_libs.sage_finetune import DataConfig, LoRAConfig, create_trainer

    tc = training_config(tiny_model_dir, tmp_path / "run", attn_implementation="sdpa")
    trainer = create_trainer("lora", training_config=tc, lora_config=LoRAConfig(**LORA, target_modules="all-linear"),
                             data_config=DataConfig(padding_free=True))
    trainer.setup()
    trainer.model.to("cuda")
    paths = trainer.plan_fast_paths()
    assert paths.padding_free and not paths.doc_attention
    ds = trainer.prepare_dataset(data["train"][:3])
    rows = [ds[i] for i in range(3)]
    flat = trainer.data_collator()(rows)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    model = trainer.model.eval()
    with torch.no_grad():
        together = model(**{k: v.cuda() for k, v in flat.items() if k != "labels"}).logits[0].float()
        start = 0
        for row in rows:
            n = len(row["input_ids"])
            alone = model(input_ids=torch.tensor([row["input_ids"]], device="cuda")).logits[0].float()
            torch.testing.assert_close(together[start:start + n], alone, rtol=1e-3, atol=1e-3)
            # the first token of each document predicts nothing from the previous one
            assert flat["labels"][0, start].item() == -100 or start == 0
            start += n
    assert start == flat["input_ids"].shape[1]


def test_dpo_bf16_on_cuda(tiny_model_dir, tmp_path):
    """DPO with LoRA in bf16 on the GPU: finite losses, the reward margin grows on the training pairs."""
    from sage_libs.sage_finetune import create_trainer

    training = dict(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "run"), max_steps=8,
                    per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-2, warmup_steps=0,
                    weight_decay=0.0, max_seq_length=64, logging_steps=1, eval_on_start=True, save_strategy="no",
                    disable_tqdm=True, report_to=[], bf16=True)
    trainer = create_trainer("dpo", method="lora", preference_config={}, training_config=training,
                             lora_config=dict(LORA, target_modules=["q_proj", "v_proj"]))
    metrics = trainer.train(PAIRS, PAIRS)
    losses = [e["loss"] for e in trainer.hf_trainer.state.log_history if "loss" in e]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses), losses
    assert next(trainer.inner.model.parameters()).device.type == "cuda"
    assert metrics["eval_rewards/margins"] > metrics["eval_rewards/margins_before"], metrics
    assert metrics["eval_loss"] < metrics["eval_loss_before"], metrics
