"""Gradient checkpointing composes with padding-free rows and per-document attention.

``training.gradient_checkpointing`` maps to ``TrainingArguments(activation_checkpointing=True,
use_reentrant=False)``: each decoder layer's forward runs again in backward. The recomputed forward
must see the same documents (the same ``position_ids``, hence the same per-document attention
calls) and produce the same activations, so losses and LoRA gradients equal those of the run
without checkpointing. Tolerances (float32, tiny 2-layer Llama, LoRA on every projection): the
recomputation runs the same kernels on the same inputs, so loss and gradients agree to
rtol 1e-5 / atol 1e-6 (in practice bit-for-bit on one thread)."""

import pytest

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune.data.collate import PackedCollator  # noqa: E402
from sage_libs.sage_finetune.perf import doc_attention, selective_logits  # noqa: E402

from ..paths import EXAMPLE_DATA  # noqa: E402
from .test_perf_paths import _assert_grads_close, _examples, _lora_grads, _lora_model  # noqa: E402

LENGTHS = (9, 23, 5, 31, 14, 2, 40, 7)  # eight documents of one padding-free row


def _count_calls(monkeypatch):
    """Counts causal sdpa calls without a mask (one per document per layer on the per-document path)."""
    counts = {"sdpa_causal": 0}
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        if kwargs.get("is_causal") and kwargs.get("attn_mask") is None:
            counts["sdpa_causal"] += 1
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    return counts


def _step(model, batch, chunked):
    model.zero_grad(set_to_none=True)
    loss = selective_logits.selective_causal_lm_loss(model, dict(batch), chunked=chunked)
    loss.backward()
    return loss.detach(), _lora_grads(model)


@pytest.mark.parametrize("chunked", [False, True])
def test_checkpointing_with_padding_free_doc_attention_equals_no_checkpointing(tiny_model_dir, monkeypatch, chunked,
                                                                                 one_thread):
    # one_thread: one reduction order for both runs
    model = _lora_model(tiny_model_dir)
    model.train()
    assert doc_attention.install_doc_attention(model)
    examples = _examples(5, lengths=LENGTHS)
    batch = PackedCollator(pad_token_id=0, flatten=True)(examples)
    assert batch["input_ids"].shape == (1, sum(LENGTHS)) and "attention_mask" not in batch
    n_layers = model.base_model.model.config.num_hidden_layers
    mlp_calls = []
    mlp = model.base_model.model.model.layers[0].mlp
    real_forward = mlp.forward

    def counting_forward(*args, **kwargs):  # (module hooks do not fire in the recomputation)
        mlp_calls.append(1)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(mlp, "forward", counting_forward)
    _step(model, batch, chunked)  # warm-up: the model's one-time capability probe runs a forward of its own
    counts = _count_calls(monkeypatch)
    mlp_calls.clear()

    loss_plain, grads_plain = _step(model, batch, chunked)
    assert counts["sdpa_causal"] == len(LENGTHS) * n_layers and len(mlp_calls) == 1

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.base_model.model.model.gradient_checkpointing
    counts["sdpa_causal"], mlp_calls[:] = 0, []
    loss_ckpt, grads_ckpt = _step(model, batch, chunked)
    # the layers ran again in backward, and the recomputation attended per document again
    assert len(mlp_calls) == 2
    assert counts["sdpa_causal"] == 2 * len(LENGTHS) * n_layers

    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=1e-5, atol=1e-6)
    _assert_grads_close(grads_ckpt, grads_plain, rtol=1e-5, atol=1e-6)


def test_checkpointing_with_several_padding_free_rows(tiny_model_dir, one_thread):
    """Two rows of packed documents (PackedCollator without flatten, right-padded): the same with
    and without checkpointing."""
    from sage_libs.sage_finetune.data.packing import pack_columns

    model = _lora_model(tiny_model_dir)
    model.train()
    assert doc_attention.install_doc_attention(model)
    docs = _examples(6, lengths=LENGTHS)
    packed = pack_columns({"input_ids": [d["input_ids"] for d in docs], "labels": [d["labels"] for d in docs]},
                          capacity=70)
    rows = [{k: packed[k][r] for k in ("input_ids", "labels", "position_ids")} for r in range(len(packed["length"]))]
    assert len(rows) >= 2
    batch = PackedCollator(pad_token_id=0)(rows)
    loss_plain, grads_plain = _step(model, batch, chunked=False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss_ckpt, grads_ckpt = _step(model, batch, chunked=False)
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=1e-5, atol=1e-6)
    _assert_grads_close(grads_ckpt, grads_plain, rtol=1e-5, atol=1e-6)


def _train(tiny_model_dir, out, **options):
    from sage_libs.sage_finetune import DataConfig, LoRAConfig, TrainingConfig, create_trainer

    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(out), max_steps=3,
                        per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-3,
                        warmup_steps=0, logging_steps=1, eval_strategy="no", save_strategy="no", disable_tqdm=True,
                        max_seq_length=128, use_cpu=True, **options)
    trainer = create_trainer("lora", training_config=tc, data_config=DataConfig(max_samples=12),
                             lora_config=LoRAConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    metrics = trainer.train(str(EXAMPLE_DATA / "chat_train.jsonl"), str(EXAMPLE_DATA / "chat_eval.jsonl"))
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return trainer, metrics, weights


def test_trainer_gradient_checkpointing_keeps_the_fast_paths_and_the_result(tiny_model_dir, tmp_path):
    torch.set_num_threads(1)
    on, m_on, w_on = _train(tiny_model_dir, tmp_path / "on", gradient_checkpointing=True)
    off, m_off, w_off = _train(tiny_model_dir, tmp_path / "off", gradient_checkpointing=False)
    for trainer in (on, off):  # checkpointing turns none of the fast paths off
        assert trainer.fast_paths.selective_logits and trainer.fast_paths.doc_attention
        assert trainer.fast_paths.padding_free and trainer.hf_trainer.data_collator.flatten
    assert on.hf_trainer.args.activation_checkpointing and not off.hf_trainer.args.activation_checkpointing
    base = on.model.get_base_model()
    assert base.model.gradient_checkpointing and not off.model.get_base_model().model.gradient_checkpointing
    assert m_on["train_loss"] == pytest.approx(m_off["train_loss"], rel=1e-5)
    assert m_on["eval_loss"] == pytest.approx(m_off["eval_loss"], rel=1e-5)
    _assert_grads_close(w_on, w_off, rtol=1e-5, atol=1e-6)
