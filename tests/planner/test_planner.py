"""The planner (issue #18): exact byte counts of each memory component for literal configs, the
activation model against what autograd really saves, the suggestions, the CLI, the warning in
train and ``training.plan_check: false``. The accuracy against measured runs is the ``slow`` test
at the end (and ``benchmarks/plan_accuracy.py``)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from sage_libs.sage_finetune.planner import constants as C
from sage_libs.sage_finetune.planner.batches import Lengths, epoch_batches, largest_batch
from sage_libs.sage_finetune.planner.memory import Batch, RunShape, plan_memory, quantized_weight_bytes
from sage_libs.sage_finetune.planner.plan import parse_memory, plan_from_lengths
from sage_libs.sage_finetune.planner.spec import ModelSpec

from ..paths import EXAMPLE_DATA, REPO  # noqa: E402

MIB = 2**20

# A literal Llama config: hidden 64, 2 layers, 4 heads of 16, 2 kv heads, MLP 128, vocab 512, untied.
LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 512, "tie_word_embeddings": False,
         "torch_dtype": "float32", "max_position_embeddings": 2048}
H, Q, K, I, NH, HD, L, V = 64, 64, 32, 128, 4, 16, 2, 512
LAYER_LINEAR = H * Q + 2 * H * K + Q * H + 3 * H * I      # 36864
TOTAL = V * H + L * (LAYER_LINEAR + 2 * H) + H + V * H    # 139584


def spec():
    return ModelSpec.from_config(LLAMA)


# ------------------------------------------------------------------------------------------------
# Shapes and weights
# ------------------------------------------------------------------------------------------------
def test_spec_counts_parameters_from_config_json_alone():
    s = spec()
    assert (s.q_width, s.kv_width, s.head_dim) == (Q, K, HD)
    assert [(m.name, m.in_features, m.out_features) for m in s.linears()] == [
        ("q_proj", 64, 64), ("k_proj", 64, 32), ("v_proj", 64, 32), ("o_proj", 64, 64),
        ("gate_proj", 64, 128), ("up_proj", 64, 128), ("down_proj", 128, 64)]
    assert s.total_params == TOTAL == 139584
    tied = ModelSpec.from_config({**LLAMA, "tie_word_embeddings": True})
    assert tied.total_params == TOTAL - V * H
    qwen = ModelSpec.from_config({**LLAMA, "model_type": "qwen2"})  # q/k/v carry biases
    assert qwen.total_params == TOTAL + L * (Q + 2 * K)


def test_spec_matches_the_parameters_torch_builds(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert ModelSpec.from_pretrained(tiny_model_dir).total_params == sum(p.numel() for p in model.parameters())


def test_quantized_weight_bytes():
    n = 4096 * 4096
    # NF4: half a byte per weight; double quantization: a uint8 absmax per 64 and a float32 per 256 blocks
    assert quantized_weight_bytes(n, 4, True) == n // 2 + n // 64 + 4 * (n // 64 // 256) + 64
    assert quantized_weight_bytes(n, 4, False) == n // 2 + 4 * (n // 64)
    assert quantized_weight_bytes(n, 8, False) == n + 4 * (n // 4096)


@pytest.mark.parametrize("text, expected", [("24GB", 24 * 2**30), ("24GiB", 24 * 2**30), ("512MB", 512 * MIB),
                                            ("1.5g", int(1.5 * 2**30)), ("80", 80 * 2**30), (1000, 1000)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


def test_parse_memory_refuses_nonsense():
    from sage_libs.sage_finetune.config import ConfigError

    with pytest.raises(ConfigError, match="expected a size such as 24GB"):
        parse_memory("lots")


# ------------------------------------------------------------------------------------------------
# Exact components for literal configs
# ------------------------------------------------------------------------------------------------
BATCH = Batch(rows=1, row_len=100, doc_lengths=[60, 40], trained=50)
T = 100
R = 4
ADAPTER = R * ((H + Q) + 2 * (H + K) + (Q + H) + 2 * (H + I) + (I + H))  # per layer, all-linear


def lora(**kw):
    # the plain loss, whose tensors these tests spell out (the chunked loss, the default, has its own)
    return RunShape(**{"method": "lora", "lora_r": R, "lora_targets": "all-linear", "lora_dropout": 0.0,
                       "chunked_lm_loss": False, **kw})


def _lora_layer_saved(in_grad: bool) -> int:
    """Bytes per token a LoRA (all-linear, no dropout) layer keeps for backward, float32."""
    norm_in = (4 * H + 4) if in_grad else 0   # x and rsqrt, when a gradient flows in
    n1 = 4 * H                                # the normed input, kept once for q, k, v's lora_A
    qkv = 4 * (Q + 2 * K)                     # q, k after RoPE and v, kept by the attention kernel
    attention = 4 * Q + 4 * NH                # its output and a float32 logsumexp per head
    o_in = 4 * Q                              # the attention output, for o_proj's lora_A
    h2 = 4 * H + 4                            # the residual, for the second norm
    n2 = 4 * H
    mlp = 3 * 4 * I + 4 * I                   # gate, act(gate), up; act*up for down_proj's lora_A
    lora_mid = 7 * R * 4                      # each lora_A output, for lora_B
    return norm_in + n1 + qkv + attention + o_in + h2 + n2 + mlp + lora_mid


def test_lora_components_are_exact():
    p = plan_memory(spec(), lora(), BATCH)
    c = p.components
    assert c["base_weights"] == 4 * TOTAL
    assert c["trainable_weights"] == 4 * L * ADAPTER
    assert c["optimizer_states"] == 8 * L * ADAPTER  # AdamW: two float32 states
    layers = T * (_lora_layer_saved(False) + _lora_layer_saved(True))  # layer 0: nothing flows in
    final_norm = T * (4 * H + 4)
    rope = 2 * T * HD * 4
    log_softmax = 4 * BATCH.trained * V  # selective logits: the trained positions only
    assert c["activations"] == layers + final_norm + rope + log_softmax
    assert p.phase == "loss"
    assert c["step_transients"] == 2 * 4 * BATCH.trained * V  # the loss's and the logits' gradients
    assert c["gradients"] == 0
    # the tuned heap: a share of the forward's freed bytes, and after step 1 the loss's blocks again,
    # as far as what was allocated meanwhile and lives on took their holes: the adapter's gradients
    # and AdamW states, much smaller than the blocks
    assert p.details["loss_blocks"] == 2 * 4 * BATCH.trained * V
    kept = 4 * L * ADAPTER + 8 * L * ADAPTER
    assert kept < p.details["loss_blocks"]
    assert c["allocator_overhead"] == int(C.CPU_FRAG_ADAPTER * p.details["forward_transients"]
                                          + C.CPU_LOSS_BLOCKS_REGROWN * kept)
    assert c["process_baseline"] == C.CPU_PROCESS_BASELINE
    assert p.peak == sum(c.values())


def test_untuned_heap_keeps_blocks_below_the_mmap_threshold():
    """With malloc_tuning off glibc's mmap threshold is fixed (perf.allocator.return_freed_memory):
    blocks under it still come from the heap and stay there, so small activations cost what the tuned
    heap keeps; only when the widest activation is above it do freed blocks go back to the OS."""
    tuned = plan_memory(spec(), lora(), BATCH)
    untuned = plan_memory(spec(), lora(malloc_tuning=False), BATCH)
    assert 4 * T * I < C.RETURNED_BLOCK_BYTES  # this batch's activations are small
    assert untuned.components["allocator_overhead"] == tuned.components["allocator_overhead"] > 0
    rows = C.RETURNED_BLOCK_BYTES // (4 * I) + 1  # enough tokens for a (tokens x I) block over it
    big = Batch(rows=1, row_len=rows, doc_lengths=[rows], trained=rows // 2)
    tuned = plan_memory(spec(), lora(), big)
    untuned = plan_memory(spec(), lora(malloc_tuning=False), big)
    assert untuned.components["allocator_overhead"] == int(C.CPU_FRAG_UNTUNED * untuned.details["forward_transients"])
    assert untuned.components["allocator_overhead"] < tuned.components["allocator_overhead"]


def test_full_logits_cost_every_position():
    selective = plan_memory(spec(), lora(), BATCH).components["activations"]
    full = plan_memory(spec(), lora(selective_logits=False), BATCH).components["activations"]
    assert full - selective == 4 * (T - BATCH.trained) * V


def test_full_fine_tuning_components_are_exact():
    p = plan_memory(spec(), RunShape(method="full", chunked_lm_loss=False), BATCH)
    c = p.components
    assert c["base_weights"] == 4 * TOTAL and c["trainable_weights"] == 0
    assert c["optimizer_states"] == 8 * TOTAL
    # every weight trains (the embeddings too, so a gradient flows into layer 0): each norm keeps its
    # input, rsqrt and normalized input, q/k/v/o/gate/up/down their inputs
    per_layer = ((4 * H + 4) + 4 * H + 4 * H + 4 * (Q + 2 * K) + 4 * Q + 4 * NH + 4 * Q + (4 * H + 4) + 4 * H
                 + 4 * H + 3 * 4 * I + 4 * I)
    final_norm = 4 * H + 4 + 4 * H
    head_input = 4 * BATCH.trained * H  # the trained head keeps its input
    expected = T * (2 * per_layer + final_norm) + 2 * T * HD * 4 + 4 * BATCH.trained * V + head_input
    assert c["activations"] == expected


def test_loss_blocks_regrow_by_what_took_their_holes(monkeypatch):
    """After step 1 the tuned heap grows by the loss's blocks only where gradients and optimizer
    states allocated meanwhile took their holes: all of them in a full fine-tune (its gradients and
    states are larger than the blocks), the adapter's few bytes in a LoRA run."""
    runs = {"full": RunShape(method="full", chunked_lm_loss=False), "lora": lora()}
    plans = {k: plan_memory(spec(), r, BATCH) for k, r in runs.items()}
    blocks = plans["full"].details["loss_blocks"]
    assert plans["full"].details["kept_after_loss"] == 4 * TOTAL + 8 * TOTAL > blocks
    assert plans["lora"].details["kept_after_loss"] == 12 * L * ADAPTER < blocks
    monkeypatch.setattr(C, "CPU_LOSS_BLOCKS_REGROWN", 0.0)
    regrown = {k: plans[k].components["allocator_overhead"]
               - plan_memory(spec(), r, BATCH).components["allocator_overhead"] for k, r in runs.items()}
    assert regrown == {"full": blocks, "lora": 12 * L * ADAPTER}


def test_heap_regrows_by_a_later_larger_loss_block(monkeypatch):
    """A first step with a smaller loss block than the largest batch's leaves a hole the larger
    block does not fit: the heap grows by it, even in a LoRA run. With a random order the odds are
    the share of batches scoring fewer positions than the largest; the plan adds the expected growth."""
    from sage_libs.sage_finetune.planner.memory import smaller_first_loss_block as odds

    plain = lora()  # chunked_lm_loss off: the block is the logits of every scored position
    same = Lengths([50] * 8, [40] * 8, 64)
    spread = Lengths([60, 20, 20, 20, 20, 20, 20, 20], [50, 10, 10, 10, 10, 10, 10, 10], 64)
    assert odds(spec(), plain, same, 2) == 0.0
    assert odds(spec(), plain, spread, 2) == 3 / 4  # 3 of 4 batches score 20 positions, the largest 60
    assert odds(spec(), plain, Lengths([60, 20], [50, 10], 64), 2) == 0.0  # one batch: no later step
    assert odds(spec(), plain, spread, 2, group_by_length=True) == 3 / 4  # 8 samples: grouping is random
    many = Lengths([60] + [20] * 63, [50] + [10] * 63, 64)
    assert odds(spec(), plain, many, 2, group_by_length=True) == 0.0  # 8 mega-batches: the largest first
    # chunked: every batch scoring more positions than a chunk's rows makes the same block
    monkeypatch.setattr(C, "CHUNK_LOGITS_BYTES", 4 * V * 16)  # 16 rows a chunk
    assert odds(spec(), lora(chunked_lm_loss=None), spread, 2) == 0.0
    assert odds(spec(), lora(chunked_lm_loss=None), spread, 1) == 7 / 8  # 10 positions < 16 rows < 50
    monkeypatch.undo()
    fixed = plan_memory(spec(), plain, BATCH)
    for p in (1.0, 0.25):
        grown = (plan_memory(spec(), plain, BATCH, smaller_first_block=p).components["allocator_overhead"]
                 - fixed.components["allocator_overhead"])
        assert abs(grown - p * (fixed.details["loss_blocks"] - 12 * L * ADAPTER)) <= 1


def test_fused_norms_and_fused_lora_free_fewer_blocks():
    """perf/fused_norm multiplies the normalized input by the weight in place (one block fewer per
    norm); perf/fused_lora computes the dropped input in the noise's buffer, scales lora_B's output
    in place and adds it into the base output: per adapted module the noise and lora_B's output are
    freed, where PEFT frees the base output, lora_B's output and the scaled branch."""
    plain = plan_memory(spec(), lora(), BATCH).details["forward_transients"]
    fused = plan_memory(spec(), lora(fused_norms=True), BATCH).details["forward_transients"]
    assert plain - fused == L * 2 * 4 * H * T
    peft = plan_memory(spec(), lora(lora_dropout=0.1), BATCH).details["forward_transients"]
    ours = plan_memory(spec(), lora(lora_dropout=0.1, fused_lora=True), BATCH).details["forward_transients"]
    outs, ins = Q + 2 * K + H + 2 * I + H, H + 2 * H + Q + 2 * H + I  # q k v o gate up down
    assert peft - ours == L * 4 * T * (3 * outs - (outs + ins))


def test_writing_the_whole_model_reads_the_unused_embedding_rows():
    """A frozen, memory-mapped input embedding costs the pages of the rows the data reads during
    training; the run's last act, writing the whole model, reads every row: a freeze run's peak is
    then its training peak plus the rest. A LoRA run writes its adapter only."""
    from sage_libs.sage_finetune.planner.weights import touched_bytes

    freeze = plan_memory(spec(), RunShape(method="freeze", freeze_layers=1), BATCH, embedding_rows=10)
    assert freeze.phase == "save"
    unread = 4 * V * H - touched_bytes(V, 4 * H, 10)
    assert unread > 0 and freeze.details["unread_weights"] == unread
    assert freeze.components["base_weights"] == 4 * TOTAL
    assert freeze.peak == sum(freeze.components.values())
    training = plan_memory(spec(), RunShape(method="freeze", freeze_layers=1), BATCH)  # every row read anyway
    assert freeze.peak == training.peak and training.phase != "save"
    adapter = plan_memory(spec(), lora(), BATCH, embedding_rows=10)
    assert adapter.phase != "save" and adapter.components["base_weights"] == 4 * TOTAL - unread


def test_freeze_keeps_nothing_below_the_first_trained_layer():
    p = plan_memory(spec(), RunShape(method="freeze", freeze_layers=1), BATCH)
    saved = p.details["saved_per_layer"]
    assert saved[0] == 0 and saved[1] > 0
    assert p.components["optimizer_states"] == 8 * (LAYER_LINEAR + 2 * H)


def test_gradient_checkpointing_keeps_layer_inputs_and_recomputes_one_layer():
    on = plan_memory(spec(), lora(gradient_checkpointing=True), BATCH)
    saved = L * T * H * 4 + T * (4 * H + 4) + 2 * T * HD * 4 + 4 * BATCH.trained * V
    assert on.details["activations_after_forward"] == saved
    off = plan_memory(spec(), lora(), BATCH)
    assert on.peak < off.peak
    if on.phase == "backward":  # the inputs below the last layer, and the last layer recomputed
        assert on.components["step_transients"] >= on.details["saved_per_layer"][-1]


def test_cpu_dropout_keeps_a_float_mask_per_adapted_input():
    base = plan_memory(spec(), lora(), BATCH).components["activations"]
    drop = plan_memory(spec(), lora(lora_dropout=0.1), BATCH).components["activations"]
    # per layer: each of the 7 adapters keeps dropout(x) and its float32 mask instead of sharing x
    # (n1, n2, the attention output and act*up are then not kept); layer 0's q/k/v need no mask,
    # no gradient flows into their input
    per_layer = 2 * 4 * (3 * H + Q + 2 * H + I) - 4 * (H + Q + H + I)
    assert drop - base == T * (L * per_layer - 3 * 4 * H)


def test_qlora_weights_are_4bit_blocks_plus_float32_rest():
    linear = L * LAYER_LINEAR
    quantized = quantized_weight_bytes(linear, 4, True) + 4 * (TOTAL - linear)
    gpu = plan_memory(spec(), lora(method="qlora", quant_bits=4, device="cuda"), BATCH)
    assert gpu.components["base_weights"] == quantized
    # on the CPU the checkpoint's pages read while quantizing stay mapped: resident, but the kernel
    # may drop them (clean file pages), so they do not count against the budget
    cpu = plan_memory(spec(), lora(method="qlora", quant_bits=4), BATCH)
    assert cpu.components["base_weights"] == quantized + 4 * linear
    assert cpu.details["reclaimable"] == 4 * linear and cpu.needed == cpu.peak - 4 * linear


def test_frozen_embeddings_cost_only_the_rows_the_data_touches():
    big = ModelSpec.from_config({**LLAMA, "hidden_size": 1024, "vocab_size": 32000, "num_attention_heads": 16,
                                 "num_key_value_heads": 16, "intermediate_size": 256})
    all_rows = plan_memory(big, lora(), BATCH).components["base_weights"]
    used = plan_memory(big, lora(), BATCH, embedding_rows=5000).components["base_weights"]
    assert all_rows - used == (32000 - 5000) * 1024 * 4  # rows of 4 KiB: one page each
    full = plan_memory(big, RunShape(method="full"), BATCH, embedding_rows=5000).components["base_weights"]
    assert full == 4 * big.total_params  # trained embeddings are written: every row
    tied = ModelSpec.from_config({**LLAMA, "hidden_size": 1024, "vocab_size": 32000, "num_attention_heads": 16,
                                  "num_key_value_heads": 16, "intermediate_size": 256, "tie_word_embeddings": True})
    # a tied head reads every row in each step (the qwen0.5b workload: 0.42 GiB under-predicted before)
    assert plan_memory(tied, lora(), BATCH, embedding_rows=5000).components["base_weights"] == 4 * tied.total_params


def test_zero3_shards_weights_gradients_and_states():
    one = plan_memory(spec(), RunShape(method="full", device="cuda"), BATCH).components
    four = plan_memory(spec(), RunShape(method="full", device="cuda", processes=4, zero_stage=3), BATCH).components
    assert four["base_weights"] == one["base_weights"] // 4
    assert four["optimizer_states"] == one["optimizer_states"] // 4


def test_cuda_reports_the_allocated_tensors_separately():
    p = plan_memory(spec(), lora(device="cuda", lora_dropout_cpu=False), BATCH)
    allocated = p.details["cuda_max_allocated"]
    assert p.components["process_baseline"] == C.CUDA_CONTEXT
    assert p.peak == allocated + p.components["allocator_overhead"] + C.CUDA_CONTEXT


# ------------------------------------------------------------------------------------------------
# The activation model against autograd
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, dropout", [("lora", 0.0), ("lora", 0.1), ("full", 0.0), ("freeze", 0.0)])
def test_activations_match_what_autograd_saves(tiny_model_dir, method, dropout):
    """Bytes of the tensors autograd keeps during the forward of a padding-free batch (parameters
    excluded), against the planner's activations for the same batch: within 2%."""
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sage_libs.sage_finetune.data.collate import PackedCollator
    from sage_libs.sage_finetune.perf import doc_attention, selective_logits

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    s = ModelSpec.from_pretrained(tiny_model_dir)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear"))
        run = lora(lora_dropout=dropout)
    elif method == "freeze":
        model.requires_grad_(False)
        model.model.layers[-1].requires_grad_(True)
        run = RunShape(method="freeze", freeze_layers=1, chunked_lm_loss=False)
    else:
        run = RunShape(method="full", chunked_lm_loss=False)
    model.train()
    assert doc_attention.install_doc_attention(model)
    g = torch.Generator().manual_seed(0)
    lengths = [90, 60, 30]
    examples = []
    for n in lengths:
        ids = torch.randint(5, 500, (n,), generator=g).tolist()
        labels = [-100] * (n // 3) + ids[n // 3:]
        examples.append({"input_ids": ids, "labels": labels})
    batch = PackedCollator(pad_token_id=0, flatten=True)(examples)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = selective_logits.selective_causal_lm_loss(model, dict(batch), chunked=False)
    loss.backward()
    measured = sum(saved.values())
    planned = plan_memory(s, run, Batch(rows=1, row_len=sum(lengths), doc_lengths=lengths, trained=trained))
    assert planned.components["activations"] == pytest.approx(measured, rel=0.02)


# ------------------------------------------------------------------------------------------------
# Batches from lengths, and the suggestions
# ------------------------------------------------------------------------------------------------
def test_largest_batch_padding_free_and_padded():
    lens = Lengths(lengths=[10, 50, 30, 40], trained=[5, 20, 25, 10], max_seq_length=64)
    flat = largest_batch(lens, 2, padding_free=True)
    assert (flat.rows, flat.row_len, flat.doc_lengths, flat.trained) == (1, 90, [50, 40], 45)
    padded = largest_batch(lens, 3, padding_free=False)
    assert (padded.rows, padded.row_len, padded.tokens) == (3, 50, 150)
    cut = largest_batch(lens, 2, padding_free=True, max_seq_length=32)
    assert cut.row_len == 64


def test_preference_pairs_are_cut_one_sequence_at_a_time():
    # a pair is chosen + rejected, each up to max_seq_length long: 2 pairs of (250, 240) tokens with
    # 200 + 190 trained positions keep all 780 trained positions, not 2 x 255 (the pair cut as one)
    pairs = Lengths(lengths=[490, 300, 490], trained=[390, 200, 390], max_seq_length=256,
                    doc_lengths=[[250, 240], [150, 150], [250, 240]], pairs=True)
    flat = largest_batch(pairs, 2, padding_free=True)
    assert (flat.rows, flat.row_len, flat.doc_lengths, flat.trained) == (1, 980, [250, 240, 250, 240], 780)
    padded = largest_batch(pairs, 2, padding_free=False)
    assert (padded.rows, padded.row_len, padded.trained) == (4, 250, 780)
    cut = largest_batch(pairs, 1, padding_free=True, max_seq_length=200)
    assert (cut.doc_lengths, cut.trained) == ([200, 200], 390)
    shorter = largest_batch(pairs, 1, padding_free=True, max_seq_length=100)
    assert (shorter.doc_lengths, shorter.trained) == ([100, 100], 198)
    epoch = epoch_batches(pairs, 3, padding_free=True)
    assert [(b.row_len, b.trained) for b in epoch] == [(1280, 980)]


def _uniform(n=64, length=512):
    return Lengths(lengths=[length] * n, trained=[length - 40] * n, max_seq_length=length)


def test_suggestions_keep_the_global_batch_and_give_overrides():
    s = spec()
    run = lora(lora_dropout=0.0)
    lens = _uniform()
    at = {b: plan_from_lengths(s, run, lens, batch_size=b, suggest=False).peak for b in (2, 4, 8)}
    budget = (at[4] + at[8]) // 2  # 8 per device does not fit, 4 does
    plan = plan_from_lengths(s, run, lens, batch_size=8, grad_accum=2, budget=budget)
    assert plan.fits is False
    best = plan.options[1]
    assert (best.label, best.batch_size, best.grad_accum, best.fits) == ("smaller batch", 4, 4, True)
    assert best.overrides == ["training.per_device_train_batch_size=4", "training.gradient_accumulation_steps=4"]
    assert plan.overrides == best.overrides
    text = plan.render()
    assert "DOES NOT FIT" in text and "training.per_device_train_batch_size=4 training.gradient_accumulation_steps=4" in text


def test_suggestions_turn_on_checkpointing_then_qlora_then_cut_sequences():
    s = spec()
    lens = _uniform(length=2048)
    run = lora()
    one = plan_from_lengths(s, run, lens, batch_size=1, suggest=False).peak
    gc = plan_from_lengths(s, lora(gradient_checkpointing=True), lens, batch_size=1, suggest=False).peak
    plan = plan_from_lengths(s, run, lens, batch_size=1, budget=(one + gc) // 2)
    labels = [o.label for o in plan.options]
    assert "gradient checkpointing" in labels
    option = plan.options[labels.index("gradient checkpointing")]
    assert option.overrides == ["training.gradient_checkpointing=true"] and option.fits
    cut = next(o for o in plan.options if o.label.startswith("cut sequences at"))
    assert cut.truncates == 64 and cut.max_seq_length < 2048 and cut.fits  # every sample is longer than the cut
    # weights alone over the budget: QLoRA is offered (with checkpointing)
    big = ModelSpec.from_config({**LLAMA, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 8,
                                 "num_attention_heads": 16, "num_key_value_heads": 16})
    short = _uniform(length=128)
    gpu = dict(device="cuda", lora_dropout_cpu=False)
    q_budget = plan_from_lengths(big, lora(method="qlora", quant_bits=4, gradient_checkpointing=True, **gpu), short,
                                 batch_size=1, suggest=False).peak + 10 * MIB
    plan = plan_from_lengths(big, lora(**gpu), short, batch_size=1, budget=q_budget)
    q = next(o for o in plan.options if o.method == "qlora")
    assert q.fits and "method=qlora" in q.overrides


def test_a_plan_that_fits_suggests_nothing():
    plan = plan_from_lengths(spec(), lora(), _uniform(), batch_size=4, budget=64 * 2**30)
    assert plan.fits and plan.overrides == [] and len(plan.options) == 1
    assert "to fit" not in plan.render()


def test_time_is_flops_over_throughput():
    from sage_libs.sage_finetune.planner.timing import Throughput

    tp = Throughput(matmul_flops=1e11, attention_flops=1e10, bandwidth=1e10, op_seconds=0.0)
    lens = _uniform(n=16, length=256)
    p1 = plan_from_lengths(spec(), lora(), lens, batch_size=4, throughput=tp, suggest=False)
    p2 = plan_from_lengths(spec(), lora(), lens, batch_size=4, throughput=Throughput(2e11, 2e10, 2e10, 0.0),
                           suggest=False)
    assert p1.time.steps_per_epoch == 4
    assert p1.time.step_seconds == pytest.approx(2 * p2.time.step_seconds - C.STEP_OVERHEAD_SECONDS, rel=1e-6)
    assert p1.time.epoch_seconds == pytest.approx(4 * p1.time.step_seconds)
    gc = plan_from_lengths(spec(), lora(gradient_checkpointing=True), lens, batch_size=4, throughput=tp, suggest=False)
    assert gc.time.step_seconds > p1.time.step_seconds  # the forward runs twice


def test_probe_mini_step_is_a_layer_like_most_of_the_run():
    """Freeze tuning under gradient checkpointing sends the gradient down through every frozen
    layer: the probe's mini step (the efficiency factor) is then a frozen layer with an input
    gradient, not a trained one (with a trained one, large-freeze-b4-256-gc in
    benchmarks/plan_accuracy.py was predicted 15-36% slower than measured)."""
    from sage_libs.sage_finetune.planner.probe import _mostly_frozen_through

    s = ModelSpec.from_config({**LLAMA, "num_hidden_layers": 12})
    assert _mostly_frozen_through(s, RunShape(method="freeze", freeze_layers=2, gradient_checkpointing=True))
    assert _mostly_frozen_through(s, RunShape(method="freeze", freeze_layers=2, train_embeddings=True))
    assert not _mostly_frozen_through(s, RunShape(method="freeze", freeze_layers=2))  # the rest: forward only
    assert not _mostly_frozen_through(s, RunShape(method="freeze", freeze_layers=8, gradient_checkpointing=True))
    assert not _mostly_frozen_through(s, RunShape(method="full", gradient_checkpointing=True))
    assert not _mostly_frozen_through(s, lora(gradient_checkpointing=True))

def test_planning_imports_no_torch():
    code = ("import sys\n"
            "from sage_libs.sage_finetune.planner.plan import plan_from_lengths\n"
            "from sage_libs.sage_finetune.planner.batches import Lengths\n"
            "from sage_libs.sage_finetune.planner.spec import ModelSpec\n"
            "from sage_libs.sage_finetune.planner.memory import RunShape\n"
            f"s = ModelSpec.from_config({LLAMA!r})\n"
            "p = plan_from_lengths(s, RunShape(), Lengths([100] * 8, [50] * 8, 128), batch_size=2, budget=2**30)\n"
            "p.render()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------------------------
# trainer.plan(), the CLI, and the check in train
# ------------------------------------------------------------------------------------------------
def _config(tmp_path, model_dir, **training):
    from ..helpers import write_config

    return write_config(tmp_path, model_dir, training={"max_steps": 2, "max_seq_length": 256, "use_cpu": True,
                                                       **training})


def test_trainer_plan_from_python(tmp_path, tiny_model_dir):
    from sage_libs.sage_finetune import create_trainer

    trainer = create_trainer("lora", training_config={"model_name_or_path": str(tiny_model_dir),
                                                      "output_dir": str(tmp_path / "out"), "use_cpu": True,
                                                      "per_device_train_batch_size": 2},
                             lora_config={"r": 4}, data_config={"max_samples": 16})
    plan = trainer.plan(str(EXAMPLE_DATA / "alpaca_train.jsonl"), memory="8GB", tflops=0.05)
    assert trainer.model is None  # nothing was loaded
    assert len(plan.lengths) == 16 and plan.fits
    assert plan.time is not None and plan.time.steps_per_epoch == 8 and plan.time.step_seconds > 0
    d = plan.to_dict()
    assert d["peak_bytes"] == plan.peak and d["method"] == "lora" and d["budget_bytes"] == 8 * 2**30


def test_cli_plan_names_a_missing_model_folder(tmp_path, tiny_model_dir, capsys):
    """The message train gives for a local model folder that does not exist (not a hub-id error)."""
    from sage_libs.sage_finetune.cli import main

    cfg = _config(tmp_path, tiny_model_dir)
    missing = tmp_path / "not-built"
    assert main(["plan", str(cfg), f"training.model_name_or_path={missing}", "--no-probe"]) == 2
    assert f"training.model_name_or_path: {missing}: no such directory" in capsys.readouterr().err


def test_cli_plan_prints_the_breakdown_and_overrides(tmp_path, tiny_model_dir, capsys):
    from sage_libs.sage_finetune.cli import main

    cfg = _config(tmp_path, tiny_model_dir)
    assert main(["plan", str(cfg), "--no-probe", "--memory", "64GB"]) == 0
    out = capsys.readouterr().out
    assert "memory (peak RSS, GiB)" in out and "activations (largest batch)" in out and ": fits" in out
    assert "to fit" not in out and "time:" not in out
    assert main(["plan", str(cfg), "training.per_device_train_batch_size=8", "--no-probe", "--json"]) == 0
    peak = json.loads(capsys.readouterr().out)["peak_bytes"]
    budget = f"{(peak - 2**20) // 2**20}MB"  # a MiB short
    assert main(["plan", str(cfg), "training.per_device_train_batch_size=8", "--no-probe", "--memory", budget]) == 0
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "overrides (paste after the config file):" in out
    assert "training.per_device_train_batch_size=" in out
    assert main(["plan", str(cfg), "--tflops", "0.05", "--json", "--memory", "64GB"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["fits"] is True and d["time"]["step_seconds"] > 0 and d["components"]["base_weights"] > 0
    assert not (tmp_path / "out").exists()  # planning writes nothing


def test_cli_plan_paths_line_and_overrides_after_options(tmp_path, tiny_model_dir, capsys):
    """The paths line says how batches are formed (padded batches are grouped by length by default);
    an override may come after an option."""
    from sage_libs.sage_finetune.cli import main

    cfg = _config(tmp_path, tiny_model_dir)
    assert main(["plan", str(cfg), "--no-probe", "data.padding_free=false"]) == 0
    paths = [x for x in capsys.readouterr().out.splitlines() if x.startswith("paths: ")]
    assert paths and paths[0].startswith("paths: padded batches grouped by length, "), paths
    assert main(["plan", str(cfg), "--no-probe", "data.padding_free=false", "--memory", "64GB",
                 "data.group_by_length=false"]) == 0
    paths = [x for x in capsys.readouterr().out.splitlines() if x.startswith("paths: ")]
    assert paths and paths[0].startswith("paths: padded, "), paths
    with pytest.raises(SystemExit) as exit_:  # an unknown option is still refused
        main(["plan", str(cfg), "--no-probe", "--bogus", "data.padding_free=false"])
    # only what is wrong is named, not the good override beside it
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized argument --bogus;" in err and "padding_free" not in err, err


def test_cli_plan_bad_memory_is_exit_2(tmp_path, tiny_model_dir, capsys):
    from sage_libs.sage_finetune.cli import main

    assert main(["plan", str(_config(tmp_path, tiny_model_dir)), "--memory", "lots", "--no-probe"]) == 2
    assert "expected a size such as 24GB" in capsys.readouterr().err


class _Stop(Exception):
    pass


def _stop_at_model_load(monkeypatch):
    from sage_libs.sage_finetune.trainers.base import BaseTrainer

    def setup(self):
        raise _Stop()

    monkeypatch.setattr(BaseTrainer, "setup", setup)


def test_train_warns_before_loading_a_model_that_will_not_fit(tmp_path, tiny_model_dir, monkeypatch, caplog):
    from sage_libs.sage_finetune import create_trainer
    from sage_libs.sage_finetune.planner import plan as plan_module

    def trainer():
        return create_trainer("lora", training_config={"model_name_or_path": str(tiny_model_dir),
                                                       "output_dir": str(tmp_path / "out"), "use_cpu": True,
                                                       "per_device_train_batch_size": 16, "max_seq_length": 256},
                              lora_config={"r": 4}, data_config={"max_samples": 32})

    data = str(EXAMPLE_DATA / "alpaca_train.jsonl")
    peak = trainer().plan(data, probe=False, memory="64GB").peak
    monkeypatch.setattr(plan_module, "available_memory", lambda device: (peak - 1, "test budget"))
    _stop_at_model_load(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="sage_libs.sage_finetune.planner"), pytest.raises(_Stop):
        trainer().train(data)
    warning = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("plan_check:"))
    assert "GiB of RAM" in warning and "test budget" in warning and "training.plan_check: false" in warning
    assert "to fit, set training.per_device_train_batch_size=" in warning


def test_plan_check_false_turns_the_check_off(tmp_path, tiny_model_dir, monkeypatch):
    from sage_libs.sage_finetune import create_trainer
    from sage_libs.sage_finetune.planner import check

    calls = []
    monkeypatch.setattr(check, "check_before_load", lambda *a: calls.append(a))
    _stop_at_model_load(monkeypatch)
    for enabled in (False, True):
        trainer = create_trainer("lora", training_config={"model_name_or_path": str(tiny_model_dir),
                                                          "output_dir": str(tmp_path / f"out{enabled}"),
                                                          "use_cpu": True, "plan_check": enabled},
                                 lora_config={"r": 4}, data_config={"max_samples": 8})
        with pytest.raises(_Stop):
            trainer.train(str(EXAMPLE_DATA / "alpaca_train.jsonl"))
        assert len(calls) == int(enabled)


# ------------------------------------------------------------------------------------------------
# Accuracy against real runs (slow: ~8 min on 2 cores)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_predictions_match_measured_runs(tmp_path):
    """Four configurations (LoRA with dropout, full, freeze, LoRA with checkpointing) planned, then
    trained 4 steps by the real trainer: peak RSS within 15%, time per step within 25%. Steps and
    the probe are timed in CPU seconds of one thread, so that other jobs on a shared machine do not
    decide the result (``benchmarks/plan_accuracy.py`` without ``--clock cpu`` measures wall time)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import plan_accuracy

    result = plan_accuracy.measure(list(plan_accuracy.SLOW_TEST_CONFIGS), steps=4, repeats=1, work=str(tmp_path),
                                   threads=1, clock="cpu", log=lambda *a: None)
    print(plan_accuracy.table(result))
    for name, row in result["rows"].items():
        assert abs(row["rss_err"]) <= plan_accuracy.RSS_TOLERANCE, (name, row["pred_rss_mb"], row["meas_rss_mb"])
        assert abs(row["time_err"]) <= plan_accuracy.TIME_TOLERANCE, (name, row["pred_step_s"], row["meas_step_s"])


def test_cli_plan_of_preference_pairs_says_what_its_lengths_are(tmp_path, tiny_model_dir, capsys):
    """A DPO config's plan counts pairs (chosen + rejected) and says that max_seq_length cuts each
    sequence; it used to call them samples beside the per-sequence cut-off."""
    from sage_libs.sage_finetune.cli import main

    from ..paths import REPO

    cfg = REPO / "examples" / "configs" / "dpo_tiny.yaml"
    pairs = REPO / "examples" / "preference"
    assert main(["plan", str(cfg), f"training.model_name_or_path={tiny_model_dir}",
                 f"training.output_dir={tmp_path / 'out'}", f"data.train_file={pairs / 'pref_train.jsonl'}",
                 f"data.eval_file={pairs / 'pref_eval.jsonl'}", "--no-probe", "--memory", "64GB"]) == 0
    out = capsys.readouterr().out
    import re

    data_line = next(line for line in out.splitlines() if line.startswith("data: "))
    assert re.match(r"data: \d+ preference pairs, \d+ tokens \(pair lengths: max \d+, p95 \d+; \d+ truncated at "
                    r"max_seq_length 512 per sequence\)", data_line), data_line
    assert "note: preference pairs: chosen and rejected in one forward" in out
    assert not (tmp_path / "out").exists()


def test_fused_lora_keeps_the_input_once_and_a_bool_mask_per_adapted_input():
    base = plan_memory(spec(), lora(), BATCH).components["activations"]
    fused = plan_memory(spec(), lora(lora_dropout=0.1, fused_lora=True), BATCH).components["activations"]
    # perf/fused_lora: x shared as without dropout, plus a 1-byte mask per element of each adapted input
    assert fused - base == T * L * (3 * H + Q + 2 * H + I)


def test_a_trained_plain_head_runs_the_chunked_loss_as_the_trainer_does():
    """perf.selective_logits.lm_head_for_chunking takes a trained plain Linear head (full, freeze) and
    a tied one; only LoRA's modules_to_save wrapper is not plain. The chunked loss then keeps the
    head's float32 gradient from forward on instead of the (trained x vocab) logits."""
    big = Batch(rows=1, row_len=100, doc_lengths=[100], trained=100)
    full = plan_memory(spec(), RunShape(method="full", chunked_lm_loss=True), big)
    assert full.details["chunked_lm_loss"] is True
    plain = plan_memory(spec(), RunShape(method="full", chunked_lm_loss=False), big)
    # plain: float32 log-softmax (4 n V) and the head's input (4 n H); chunked: grad of the hidden
    # states (4 n H), the logsumexp (4 n) and the head's gradient buffer (4 V H)
    n = big.trained
    assert (full.details["activations_after_forward"] - plain.details["activations_after_forward"]
            == (4 * n + 4 * V * H) - 4 * n * V)
    wrapped = plan_memory(spec(), lora(modules_to_save=["lm_head"], chunked_lm_loss=True), big)
    assert wrapped.details["chunked_lm_loss"] is False


def test_a_tied_heads_gradient_is_counted_through_backward():
    """The tied weight's gradient exists from the loss's backward on (the head's share), like an
    untied head's: the backward phase holds it while the layers' gradients accumulate."""
    from sage_libs.sage_finetune.planner.weights import _layout

    tied_spec = ModelSpec.from_config({**LLAMA, "tie_word_embeddings": True})
    lay = _layout(RunShape(method="full"), tied_spec)
    assert lay.head_train and lay.embeddings_train
    tied = plan_memory(tied_spec, RunShape(method="full"), BATCH)
    untied = plan_memory(spec(), RunShape(method="full"), BATCH)
    assert tied.details["trainable_params"] == TOTAL - V * H == untied.details["trainable_params"] - V * H
    # (gradients, activations, transients) at backward's worst moment: the same head gradient (V x H)
    # whether or not it is shared with the embedding
    assert tied.details["phases"]["backward"][0] == untied.details["phases"]["backward"][0] >= 4 * V * H


def test_untuned_allocator_prices_page_faults_of_large_blocks():
    """malloc_tuning off: blocks over the fixed 4 MiB mmap threshold are mapped afresh every step, so
    their bytes are faulted in each time (forward, and their gradients in backward); tuned, none."""
    from sage_libs.sage_finetune.planner.timing import Throughput, seconds, step_cost

    rows = C.RETURNED_BLOCK_BYTES // (4 * H) + 1  # a (tokens x hidden) float32 block over the threshold
    big = Batch(rows=1, row_len=rows, doc_lengths=[rows], trained=rows // 2)
    tuned = step_cost(spec(), lora(), big)
    untuned = step_cost(spec(), lora(malloc_tuning=False), big)
    assert tuned.faulted_bytes == 0 and untuned.faulted_bytes > 0
    small = step_cost(spec(), lora(malloc_tuning=False), BATCH)  # 100 tokens: every block under the threshold
    assert small.faulted_bytes == 0
    tp = Throughput(matmul_flops=1e11, attention_flops=1e11, bandwidth=1e10, fault_seconds_per_byte=1e-9)
    assert seconds(untuned, tp) - seconds(tuned, tp) == pytest.approx(untuned.faulted_bytes * 1e-9, rel=1e-9)


def test_preference_step_adds_one_forward_of_the_reference():
    # DPO with LoRA: the policy's forward and backward, plus the reference's forward (adapter
    # disabled, no graph): every linear once and the LM head at the scored positions once
    from sage_libs.sage_finetune.planner.step_time import batch_cost

    spec = ModelSpec.from_config({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
                                  "vocab_size": 1000, "tie_word_embeddings": False})
    run = RunShape(method="lora", lora_r=4, lora_targets=["q_proj", "v_proj"])
    batch = Batch(rows=1, row_len=100, doc_lengths=[60, 40], trained=50)
    policy, both = batch_cost(spec, run, batch, False), batch_cost(spec, run, batch, True)
    per_layer = 2 * 100 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128)  # q, k, v, o, gate, up, down
    reference = 2 * per_layer + 2 * 64 * 1000 * 50
    assert both.matmul_flops - policy.matmul_flops == pytest.approx(reference)


def test_chunked_preference_head_runs_a_second_time_in_backward(monkeypatch):
    # over one chunk the preference log-probabilities recompute each chunk's logits in backward
    # (perf.chunked_ce.ChunkedLinearTokenLogps): one more head pass than the plain path; in one
    # chunk they keep its softmax instead
    from sage_libs.sage_finetune.planner.step_time import batch_cost

    monkeypatch.setattr(C, "CHUNK_LOGITS_BYTES", 4 * 50 * 1000)  # 50 rows of the 1000 vocabulary

    spec = ModelSpec.from_config({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1,
                                  "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128,
                                  "vocab_size": 1000, "tie_word_embeddings": False})
    batch = Batch(rows=1, row_len=100, doc_lengths=[50, 50], trained=80)
    plain = batch_cost(spec, RunShape(method="lora", lora_r=4, chunked_lm_loss=False), batch, True)
    chunked = batch_cost(spec, RunShape(method="lora", lora_r=4, chunked_lm_loss=True), batch, True)
    assert chunked.matmul_flops - plain.matmul_flops == pytest.approx(2 * 64 * 1000 * 80)
    assert chunked.useful_flops == plain.useful_flops
    one_chunk = Batch(rows=1, row_len=60, doc_lengths=[30, 30], trained=40)
    assert batch_cost(spec, RunShape(method="lora", lora_r=4), one_chunk, True).matmul_flops == \
        batch_cost(spec, RunShape(method="lora", lora_r=4, chunked_lm_loss=False), one_chunk, True).matmul_flops


def test_chunked_loss_holds_one_buffer_of_min_positions_and_chunk_rows(monkeypatch):
    # null chunks at any size: a batch under one chunk holds [positions x vocab] float32 once (the
    # buffer its softmax and gradient are computed in), a larger one [chunk rows x vocab]; the plain
    # path (false) holds the log-softmax and, at backward's start, the two gradients
    import dataclasses

    monkeypatch.setattr(C, "CHUNK_LOGITS_BYTES", 4 * 100 * 1000)  # 100 rows of the 1000 vocabulary
    spec = ModelSpec.from_config({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1,
                                  "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128,
                                  "vocab_size": 1000, "tie_word_embeddings": False})
    run = RunShape(method="lora", lora_r=4, lora_targets=["q_proj"], padding_free=True)
    small = Batch(rows=1, row_len=64, doc_lengths=[64], trained=60)
    large = Batch(rows=1, row_len=400, doc_lengths=[400], trained=350)
    chunked = plan_memory(spec, run, small)
    assert chunked.details["chunked_lm_loss"] and chunked.details["loss_blocks"] == 4 * 60 * 1000
    assert plan_memory(spec, run, large).details["loss_blocks"] == 4 * 100 * 1000
    plain = plan_memory(spec, dataclasses.replace(run, chunked_lm_loss=False), small)
    assert not plain.details["chunked_lm_loss"] and plain.details["loss_blocks"] == 2 * 4 * 60 * 1000
    # forward keeps the hidden states' gradient and a logsumexp per row, where the plain path keeps
    # the float32 log-softmax
    kept = chunked.details["activations_after_forward"] - plain.details["activations_after_forward"]
    assert kept == (4 * 60 * 64 + 4 * 60) - 4 * 60 * 1000
    # 16-bit compute: the chunk's 16-bit logits and gradient copy come on top of the float32 buffer
    bf16 = plan_memory(spec, dataclasses.replace(run, autocast_bytes=2), small)
    assert bf16.details["loss_blocks"] == 4 * 60 * 1000 + 2 * 60 * 1000


def test_optimizer_step_at_the_probed_rate_and_untuned_faults():
    # the probe's per-weight rate of clipping + AdamW (memory-bound on weights larger than the
    # caches); an untuned heap maps the update's two weight-sized temporaries afresh every step
    from sage_libs.sage_finetune.planner.step_time import optimizer_step_seconds
    from sage_libs.sage_finetune.planner.timing import Throughput

    tp = Throughput(matmul_flops=1e11, attention_flops=1e11, bandwidth=4e10, optimizer_seconds_per_param=2e-9,
                    fault_seconds_per_byte=0.5e-9)
    tuned = optimizer_step_seconds(RunShape(method="full"), 10**8, tp)
    assert tuned == pytest.approx(0.2 + C.STEP_OVERHEAD_SECONDS)
    untuned = optimizer_step_seconds(RunShape(method="full", malloc_tuning=False), 10**8, tp)
    assert untuned - tuned == pytest.approx(10**8 * 8 * 0.5e-9)
    # a throughput given without a probe: 32 bytes a weight at the elementwise bandwidth
    given = Throughput(matmul_flops=1e11, attention_flops=1e11, bandwidth=4e10)
    assert optimizer_step_seconds(RunShape(method="full"), 10**8, given) == pytest.approx(
        32 * 10**8 / 4e10 + C.STEP_OVERHEAD_SECONDS)
