"""Chunked LM-head cross-entropy equals the plain ``F.cross_entropy(hidden @ W.T)`` path.

Tolerances: float32 loss, grad_hidden and grad_weight: rtol 1e-5 / atol 1e-6 (the same sums in a
different order); float64: torch.autograd.gradcheck (its defaults: eps 1e-6, atol 1e-5, rtol 1e-3);
the tiny Llama with LoRA: loss rel 1e-5, LoRA gradients rtol 1e-5 / atol 1e-7 (as the selective
logits test in test_perf_paths.py)."""


import pytest

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune.data.collate import PaddingCollator  # noqa: E402
from sage_libs.sage_finetune.perf import chunked_ce as _chunked_ce  # noqa: E402
from sage_libs.sage_finetune.perf import selective_logits  # noqa: E402
from sage_libs.sage_finetune.perf.chunked_ce import chunked_linear_cross_entropy  # noqa: E402

from ..paths import EXAMPLE_DATA  # noqa: E402
from .test_perf_paths import _examples  # noqa: E402 - the same literal batches as the plain-path equivalence tests

F = torch.nn.functional
RTOL, ATOL = 1e-5, 1e-6


def _plain(hidden, weight, targets, bias=None, reduction="sum"):
    logits = F.linear(hidden, weight, bias)
    return F.cross_entropy(logits.float(), targets, reduction=reduction, ignore_index=-100)


def _case(n=11, h=6, v=13, seed=0, dtype=torch.float32, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype)
    weight = torch.randn(v, h, generator=g, dtype=dtype) * 0.7
    b = torch.randn(v, generator=g, dtype=dtype) if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, targets


def _grads(fn, hidden, weight, bias, targets, **kw):
    hidden = hidden.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    bias = None if bias is None else bias.clone().requires_grad_(True)
    loss = fn(hidden, weight, targets, bias, **kw)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad, None if bias is None else bias.grad


@pytest.mark.parametrize("recompute", [False, True])
def test_literal_tensors_loss_and_gradients(recompute):
    hidden = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.3, -1.0], [2.0, 1.0, 1.0]])
    weight = torch.tensor([[0.2, 0.1, -0.3], [1.0, 0.0, 0.5], [-0.5, 0.4, 0.2], [0.3, -0.7, 0.9]])
    targets = torch.tensor([1, 3, 0])
    expect = _grads(_plain, hidden, weight, None, targets)
    got = _grads(chunked_linear_cross_entropy, hidden, weight, None, targets, chunk_rows=2, recompute=recompute)
    for a, b in zip(got[:3], expect[:3]):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    # by hand: row 0's logits are W @ h0
    logits0 = weight @ hidden[0]
    row0 = torch.logsumexp(logits0, 0) - logits0[1]
    single = chunked_linear_cross_entropy(hidden[:1], weight, targets[:1])
    torch.testing.assert_close(single, row0, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 11, 64])  # 11 rows: 3 and 4 do not divide it
@pytest.mark.parametrize("bias", [False, True])
def test_matches_plain_path_for_any_chunk_size(chunk_rows, bias, recompute):
    hidden, weight, b, targets = _case(bias=bias)
    expect = _grads(_plain, hidden, weight, b, targets)
    got = _grads(chunked_linear_cross_entropy, hidden, weight, b, targets, chunk_rows=chunk_rows,
                 recompute=recompute)
    for a, e in zip(got, expect):
        if e is None:
            assert a is None
        else:
            torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("recompute", [False, True])
def test_ignore_index_rows_and_mean_and_normalizer(recompute):
    hidden, weight, _, targets = _case(n=9)
    targets[[0, 4, 8]] = -100
    expect = _grads(_plain, hidden, weight, None, targets, reduction="mean")
    got = _grads(chunked_linear_cross_entropy, hidden, weight, None, targets, reduction="mean", chunk_rows=2,
                 recompute=recompute)
    for a, e in zip(got[:3], expect[:3]):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)
    assert torch.count_nonzero(got[1][[0, 4, 8]]) == 0  # ignored rows get no gradient
    s = _plain(hidden, weight, targets) / 17
    torch.testing.assert_close(chunked_linear_cross_entropy(hidden, weight, targets, normalizer=torch.tensor(17)), s,
                               rtol=RTOL, atol=ATOL)
    # every row ignored: zero loss, zero gradients
    got = _grads(chunked_linear_cross_entropy, hidden, weight, None, torch.full_like(targets, -100),
                 recompute=recompute)
    assert got[0].item() == 0 and torch.count_nonzero(got[1]) == 0 and torch.count_nonzero(got[2]) == 0


@pytest.mark.parametrize("recompute", [False, True])
def test_frozen_head_gets_no_gradient(recompute):
    hidden, weight, _, targets = _case()
    h = hidden.clone().requires_grad_(True)
    loss = chunked_linear_cross_entropy(h, weight, targets, chunk_rows=3, recompute=recompute)
    loss.backward()
    h2 = hidden.clone().requires_grad_(True)
    _plain(h2, weight, targets).backward()
    assert weight.grad is None
    torch.testing.assert_close(h.grad, h2.grad, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("recompute", [False, True])
def test_float64_gradcheck(recompute):
    hidden, weight, b, targets = _case(n=5, h=3, v=7, dtype=torch.float64, bias=True)
    targets[2] = -100
    args = [t.clone().requires_grad_(True) for t in (hidden, weight, b)]
    assert torch.autograd.gradcheck(
        lambda h, w, bb: chunked_linear_cross_entropy(h, w, targets, bb, chunk_rows=2, recompute=recompute), args)


@pytest.mark.parametrize("recompute", [False, True])
def test_bf16_autocast_matches_plain_autocast(recompute):
    """bf16 matmuls, float32 softmax: the plain path under the same autocast; tolerances of bf16."""
    hidden, weight, _, targets = _case(n=10, h=16, v=40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expect = _grads(_plain, hidden, weight, None, targets)
        got = _grads(chunked_linear_cross_entropy, hidden, weight, None, targets, chunk_rows=3,
                     recompute=recompute)
    assert got[0].dtype == torch.float32
    for a, e in zip(got[:3], expect[:3]):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-2)


def test_no_grad_and_a_scaled_loss():
    """Under no_grad no gradient is computed; a loss scaled after the fact scales the gradients."""
    hidden, weight, _, targets = _case()
    h = hidden.clone().requires_grad_(True)
    with torch.no_grad():
        loss = chunked_linear_cross_entropy(h, weight, targets, chunk_rows=4)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, _plain(hidden, weight, targets), rtol=RTOL, atol=ATOL)
    (chunked_linear_cross_entropy(h, weight, targets, chunk_rows=4) * 3.5).backward()
    h2 = hidden.clone().requires_grad_(True)
    (_plain(h2, weight, targets) * 3.5).backward()
    torch.testing.assert_close(h.grad, h2.grad, rtol=RTOL, atol=ATOL)


def test_decision_and_chunk_rows():
    assert _chunked_ce.use_chunked_lm_loss(True) and _chunked_ce.use_chunked_lm_loss(None)
    assert not _chunked_ce.use_chunked_lm_loss(False)
    assert _chunked_ce.chunk_rows_for(129280) == 519  # 256 MiB of float32 logits
    assert _chunked_ce.chunk_rows_for(129280) * 129280 * 4 <= _chunked_ce.CHUNK_BYTES


# ------------------------------------------------------------------------------------------------
# On the tiny model
# ------------------------------------------------------------------------------------------------
def _lora_model(model_dir, tie=False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                            init_lora_weights="gaussian"))




def _step(model, batch, chunked, num_items=None):
    model.zero_grad(set_to_none=True)
    loss = selective_logits.selective_causal_lm_loss(model, dict(batch), num_items, chunked=chunked)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("num_items", [None, 57])
def test_lora_step_chunked_on_equals_off(tiny_model_dir, num_items, monkeypatch):
    model = _lora_model(tiny_model_dir)
    batch = PaddingCollator(pad_token_id=0)(_examples())
    n = None if num_items is None else torch.tensor(num_items)
    monkeypatch.setattr(_chunked_ce, "CHUNK_BYTES", 7 * 4 * 512)  # 7 rows a chunk: several, uneven
    assert selective_logits.lm_head_for_chunking(model) is not None
    calls = []
    real = _chunked_ce.ChunkedLinearCrossEntropy.apply
    monkeypatch.setattr(_chunked_ce.ChunkedLinearCrossEntropy, "apply", lambda *a: calls.append(1) or real(*a))
    loss_off, grads_off = _step(model, batch, False, n)
    assert not calls
    loss_on, grads_on = _step(model, batch, True, n)
    assert calls
    assert loss_on == pytest.approx(loss_off, rel=1e-5)
    assert grads_on.keys() == grads_off.keys() and grads_on
    for name in grads_on:
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=1e-5, atol=1e-7, msg=name)
    head = model.get_base_model().lm_head
    assert "forward" not in head.__dict__  # the head is itself again


def test_full_finetune_tied_head_chunked_on_equals_off(tiny_model_dir):
    """A trainable head whose weight is tied to the input embeddings: both uses' gradients add up."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert selective_logits.lm_head_for_chunking(model) is model.lm_head
    batch = PaddingCollator(pad_token_id=0)(_examples(2))
    loss_off, grads_off = _step(model, batch, False)
    loss_on, grads_on = _step(model, batch, True)
    assert loss_on == pytest.approx(loss_off, rel=1e-5)
    for name in grads_on:
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=1e-5, atol=1e-6, msg=name)


def test_wrapped_head_falls_back(tiny_model_dir):
    """A LoRA-adapted lm_head is not a plain Linear: the plain selective path runs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    assert selective_logits.lm_head_for_chunking(model) is None
    batch = PaddingCollator(pad_token_id=0)(_examples())
    loss_on, _ = _step(model, batch, True)
    loss_off, _ = _step(model, batch, False)
    assert loss_on == pytest.approx(loss_off, rel=1e-6)


def test_trainer_chunked_lm_loss_on_equals_off(tiny_model_dir, tmp_path, monkeypatch):
    """Three LoRA steps through the trainer (training.chunked_lm_loss true vs false): same losses
    (rel 1e-5) and LoRA weights (rtol 1e-4 / atol 1e-6, as the fast-path trainer test)."""
    from sage_libs.sage_finetune import DataConfig, LoRAConfig, TrainingConfig, create_trainer

    monkeypatch.setattr(_chunked_ce, "CHUNK_BYTES", 16 * 4 * 512)
    calls = []
    real = _chunked_ce.ChunkedLinearCrossEntropy.apply
    monkeypatch.setattr(_chunked_ce.ChunkedLinearCrossEntropy, "apply", lambda *a: calls.append(1) or real(*a))
    runs = {}
    for chunked in (True, False):
        tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / str(chunked)),
                            max_steps=3, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                            learning_rate=1e-3, warmup_steps=0, logging_steps=1, eval_strategy="no",
                            save_strategy="no", disable_tqdm=True, max_seq_length=128, use_cpu=True,
                            chunked_lm_loss=chunked)
        trainer = create_trainer("lora", training_config=tc, data_config=DataConfig(max_samples=12),
                                 lora_config=LoRAConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                        target_modules="all-linear"))
        metrics = trainer.train(str(EXAMPLE_DATA / "chat_train.jsonl"), str(EXAMPLE_DATA / "chat_eval.jsonl"))
        assert trainer.fast_paths.chunked_lm_loss is chunked
        weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        runs[chunked] = (metrics, weights, len(calls))
    (m_on, w_on, calls_on), (m_off, w_off, calls_total) = runs[True], runs[False]
    assert calls_on > 0 and calls_total == calls_on  # used with true, never with false
    assert m_on["train_loss"] == pytest.approx(m_off["train_loss"], rel=1e-5)
    assert m_on["eval_loss"] == pytest.approx(m_off["eval_loss"], rel=1e-5)
    for name in w_on:
        torch.testing.assert_close(w_on[name], w_off[name], rtol=1e-4, atol=1e-6, msg=name)


def test_default_setting_chunks_any_size(tiny_model_dir, monkeypatch):
    """chunked=None (training.chunked_lm_loss: null) is on for a batch far under one chunk, with
    the plain path's loss."""
    model = _lora_model(tiny_model_dir)
    batch = PaddingCollator(pad_token_id=0)(_examples())
    calls = []
    real = _chunked_ce.ChunkedLinearCrossEntropy.apply
    monkeypatch.setattr(_chunked_ce.ChunkedLinearCrossEntropy, "apply", lambda *a: calls.append(1) or real(*a))
    plain, _ = _step(model, batch, False)
    assert not calls
    default, _ = _step(model, batch, None)
    assert calls and default == pytest.approx(plain, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Per-token log-probabilities (the preference losses' sequence log-probs)
# ------------------------------------------------------------------------------------------------
def _plain_token_logps(hidden, weight, targets, bias=None):
    logits = F.linear(hidden, weight, bias)
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def _token_logps_and_grads(fn, hidden, weight, bias, targets, upstream, **kw):
    """Values, and the gradients of ``upstream . values`` (a different weight per row, as a
    per-sequence sum followed by a loss gives)."""
    hidden = hidden.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    bias = None if bias is None else bias.clone().requires_grad_(True)
    values = fn(hidden, weight, targets, bias, **kw)
    (values * upstream).sum().backward()
    return values.detach(), hidden.grad, weight.grad, None if bias is None else bias.grad


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 11, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_token_logps_match_plain_log_softmax(chunk_rows, bias):
    hidden, weight, b, targets = _case(bias=bias)
    upstream = torch.randn(targets.shape[0], generator=torch.Generator().manual_seed(1))
    expect = _token_logps_and_grads(_plain_token_logps, hidden, weight, b, targets, upstream)
    got = _token_logps_and_grads(_chunked_ce.chunked_linear_token_logps, hidden, weight, b, targets, upstream,
                                 chunk_rows=chunk_rows)
    assert got[0].dtype == torch.float32 and got[0].shape == targets.shape
    for a, e in zip(got, expect):
        if e is not None:
            torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("chunk_rows", [2, 10])  # several chunks (recomputed), one (its softmax kept)
def test_token_logps_float64_gradcheck(chunk_rows):
    hidden, weight, b, targets = _case(n=5, h=3, v=7, dtype=torch.float64, bias=True)
    args = [t.clone().requires_grad_(True) for t in (hidden, weight, b)]
    assert torch.autograd.gradcheck(
        lambda h, w, bb: _chunked_ce.chunked_linear_token_logps(h, w, targets, bb, chunk_rows=chunk_rows), args)


def test_token_logps_one_chunk_backward_twice():
    # one chunk keeps its softmax for backward and only reads it there: a second backward through a
    # retained graph gets the same gradients
    hidden, weight, b, targets = _case(bias=True)
    h = hidden.clone().requires_grad_(True)
    upstream = torch.randn(targets.shape[0], generator=torch.Generator().manual_seed(1))
    out = (_chunked_ce.chunked_linear_token_logps(h, weight, targets, b, chunk_rows=10**6) * upstream).sum()
    out.backward(retain_graph=True)
    first = h.grad.clone()
    h.grad = None
    out.backward()
    torch.testing.assert_close(h.grad, first, rtol=RTOL, atol=ATOL)
    expect = _token_logps_and_grads(_plain_token_logps, hidden, weight, b, targets, upstream)[1]
    torch.testing.assert_close(first, expect, rtol=RTOL, atol=ATOL)


def _preference_batch(tokenizer, flatten):
    from sage_libs.sage_finetune.data.preference import tokenize_preference_records
    from sage_libs.sage_finetune.data.preference_collate import PreferenceCollator

    pairs = [{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
             {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "The number seven."},
             {"prompt": "What is 10-4?", "chosen": "6", "rejected": "I do not know, maybe 14 or so."}]
    columns, _ = tokenize_preference_records(pairs, tokenizer)
    examples = [{k: v[i] for k, v in columns.items()} for i in range(len(pairs))]
    return PreferenceCollator(pad_token_id=0, flatten=flatten)(examples)


def _sequence_logps_and_grads(model, batch, n, **kw):
    from sage_libs.sage_finetune.trainers._preference_core import sequence_logps

    model.zero_grad(set_to_none=True)
    out = sequence_logps(model, dict(batch), n, whole_upto=n // 2, **kw)
    # a loss that weighs every sequence differently, and ORPO's whole-sequence sums
    weights = torch.linspace(0.5, 2.0, n)
    ((out.sums * weights).sum() - out.whole_sums.sum()).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return [t.detach() for t in out], grads


@pytest.mark.parametrize("flatten", [False, True])
def test_preference_sequence_logps_chunked_equal_plain(tiny_model_dir, tiny_tokenizer, flatten, monkeypatch):
    """sequence_logps with the chunked LM head: the same log-probs (scored and whole-sequence) and
    LoRA gradients as the selective logits path and the full-logits path (rtol 1e-5; gradients: atol
    1e-6 of each tensor's largest entry)."""
    model = _lora_model(tiny_model_dir)
    batch = _preference_batch(tiny_tokenizer, flatten)
    n = 6
    monkeypatch.setattr(_chunked_ce, "CHUNK_BYTES", 7 * 4 * 512)  # 7 rows a chunk: several, uneven
    calls = []
    real = _chunked_ce.ChunkedLinearTokenLogps.apply
    monkeypatch.setattr(_chunked_ce.ChunkedLinearTokenLogps, "apply", lambda *a: calls.append(1) or real(*a))
    plain = _sequence_logps_and_grads(model, batch, n, selective=False)
    selective = _sequence_logps_and_grads(model, batch, n, selective=True, chunked=False)
    assert not calls
    chunked = _sequence_logps_and_grads(model, batch, n, selective=True, chunked=True)
    assert calls
    for other in (plain, selective):
        for a, b in zip(chunked[0], other[0]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert chunked[1].keys() == other[1].keys() and chunked[1]
        for name in chunked[1]:
            # the loss sums log-probs (gradients up to ~20): float32 noise is relative to that scale
            scale = float(other[1][name].abs().max())
            torch.testing.assert_close(chunked[1][name], other[1][name], rtol=1e-5, atol=1e-6 * scale,
                                       msg=lambda m, name=name: f"{name}: {m}")
    assert "forward" not in model.get_base_model().lm_head.__dict__  # the head is itself again
