"""No ``(trained tokens, vocab)`` logits tensor exists during a training step where the chunked LM
loss is on by size (``training.chunked_lm_loss: null``, the default).

Behavioural, not timing: a ``TorchDispatchMode`` records the shape of every tensor an operator
creates (views of existing tensors, e.g. the head weight's transpose, are skipped) and the tests
assert that none is wider than the vocabulary for more rows than one chunk. Before this was the
function's default too, ``selective_causal_lm_loss(model, batch)`` (what ``benchmarks/sft_scale.py``
called) took the unchunked path: four float32 ``(trained tokens, vocab)`` tensors (the logits,
``log_softmax``, and their gradients), 8 GB of the 9.5 GB one decoder layer of the 0.5B workload
added at 8192 tokens."""

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from sage_libs.sage_finetune.data.collate import PackedCollator  # noqa: E402
from sage_libs.sage_finetune.perf import chunked_ce as _chunked_ce  # noqa: E402
from sage_libs.sage_finetune.perf import selective_logits  # noqa: E402

from ..paths import EXAMPLE_DATA  # noqa: E402

VOCAB = 4096
CHUNK_ROWS = 8


class VocabWideTensors(TorchDispatchMode):
    """Rows of every new (non-view) tensor whose last dimension is ``vocab``."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.rows = vocab, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab:
                    self.rows.append((str(func), t.numel() // self.vocab))
        return out


def _small_chunks(monkeypatch, vocab):
    """Chunks of CHUNK_ROWS rows (as 256 MiB is for a 129k vocabulary at full size)."""
    monkeypatch.setattr(_chunked_ce, "CHUNK_BYTES", CHUNK_ROWS * 4 * vocab)


def _large_vocab_lora_model():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=True, use_cache=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))


def test_default_loss_step_holds_no_tokens_by_vocab_tensor(monkeypatch):
    """``selective_causal_lm_loss`` with its defaults computes what a run with default options does."""
    _small_chunks(monkeypatch, VOCAB)
    model = _large_vocab_lora_model()
    model.train()
    g = torch.Generator().manual_seed(0)
    examples = []
    for n in (120, 60, 20):  # one padding-free row of three documents, second halves trained
        ids = torch.randint(0, VOCAB, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (n - n // 2) + ids[n - n // 2:]})
    batch = PackedCollator(pad_token_id=0, flatten=True)(examples)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    assert trained == 60 + 30 + 10 > CHUNK_ROWS  # several chunks
    mode = VocabWideTensors(VOCAB)
    with mode:
        loss = selective_logits.selective_causal_lm_loss(model, dict(batch))
        loss.backward()
    assert torch.isfinite(loss)
    assert mode.rows, "the LM head ran (in chunks)"
    assert max(rows for _, rows in mode.rows) <= CHUNK_ROWS, sorted(mode.rows, key=lambda r: -r[1])[:5]
    # one chunk buffer for the whole loss: every chunk's logits, softmax and gradient are written
    # into it (in-place and out= operators), so no other vocabulary-wide block is allocated
    fresh = [f for f, rows in mode.rows if rows > 2 and not (f.split(".")[1].endswith("_") or f.endswith(".out"))]
    assert fresh == ["aten.empty.memory_format"], fresh
    # the same step with the chunked loss off does hold them: the assertion sees what it should
    off = VocabWideTensors(VOCAB)
    with off:
        selective_logits.selective_causal_lm_loss(model, dict(batch), chunked=False).backward()
    assert max(rows for _, rows in off.rows) >= trained


def test_trainer_step_with_default_options_holds_no_tokens_by_vocab_tensor(tiny_model_dir, tmp_path, monkeypatch):
    """Through the trainer (default ``training.chunked_lm_loss``, decided by ``perf.plan_fast_paths``):
    no training step creates a tensor wider than the vocabulary for more rows than one chunk."""
    from sage_libs.sage_finetune import DataConfig, LoRAConfig, TrainingConfig, create_trainer
    from sage_libs.sage_finetune.trainers.hf_core import SFTTrainerCore

    vocab = 512  # the tiny model's
    _small_chunks(monkeypatch, vocab)
    modes = []
    real_step = SFTTrainerCore.training_step

    def tracked_step(self, model, inputs, num_items_in_batch=None):
        mode = VocabWideTensors(self.model.get_output_embeddings().out_features)
        modes.append((mode, int((inputs["labels"][:, 1:] != -100).sum())))
        with mode:
            return real_step(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(SFTTrainerCore, "training_step", tracked_step)
    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "out"), max_steps=2,
                        per_device_train_batch_size=8, learning_rate=1e-3, warmup_steps=0, logging_steps=1,
                        eval_strategy="no", save_strategy="no", disable_tqdm=True, max_seq_length=128, use_cpu=True)
    assert tc.chunked_lm_loss is None
    trainer = create_trainer("lora", training_config=tc, data_config=DataConfig(max_samples=16),
                             lora_config=LoRAConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    trainer.train(str(EXAMPLE_DATA / "chat_train.jsonl"))
    assert trainer.fast_paths.selective_logits and trainer.fast_paths.chunked_lm_loss is None
    assert len(modes) == 2
    for mode, trained in modes:
        assert mode.vocab == vocab and trained > CHUNK_ROWS  # several chunks
        assert mode.rows, "the LM head ran (in chunks)"
        assert max(rows for _, rows in mode.rows) <= CHUNK_ROWS, sorted(mode.rows, key=lambda r: -r[1])[:5]
