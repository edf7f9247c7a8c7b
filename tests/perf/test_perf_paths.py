"""The fast paths compute what the plain paths compute.

Tolerances (float32, tiny 2-layer Llama with grouped-query attention, LoRA on every projection):
losses agree to rel 1e-5, LoRA gradients to rtol 1e-4 / atol 1e-6 (selective logits: 1e-5 / 1e-7,
the same sums in a different order), logits of padding-free rows to 1e-5; the token ids and labels
of batched rendering and of the cache are identical (exact)."""

import json

import pytest

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune.data.collate import PackedCollator, PaddingCollator  # noqa: E402
from sage_libs.sage_finetune.perf import allocator, doc_attention, selective_logits, token_count  # noqa: E402

from ..paths import EXAMPLE_DATA  # noqa: E402


def _lora_model(model_dir, attn="sdpa"):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                             init_lora_weights="gaussian"))  # B != 0: LoRA gradients are non-trivial
    return model


def _examples(seed=0, lengths=(9, 23, 5, 31, 14, 2)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(5, 500, (n,), generator=g).tolist()
        keep = torch.rand(n, generator=g) < 0.6
        labels = [i if k else -100 for i, k in zip(ids, keep.tolist())]
        labels[0] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def _lora_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_grads_close(a, b, rtol, atol):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


# ------------------------------------------------------------------------------------------------
# Selective logits
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_items", [None, 57])
def test_selective_logits_loss_and_gradients_equal_the_models_own(tiny_model_dir, num_items):
    model = _lora_model(tiny_model_dir)
    batch = PaddingCollator(pad_token_id=0)(_examples())
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    plain = model(**batch, use_cache=False, **kwargs).loss
    plain.backward()
    plain_grads = _lora_grads(model)
    model.zero_grad(set_to_none=True)
    fast = selective_logits.selective_causal_lm_loss(model, dict(batch), kwargs.get("num_items_in_batch"))
    fast.backward()
    assert selective_logits.supports_selective_logits(model)
    assert fast.item() == pytest.approx(plain.item(), rel=1e-5)
    _assert_grads_close(_lora_grads(model), plain_grads, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# Padding-free batches with per-document attention
# ------------------------------------------------------------------------------------------------
def test_padding_free_doc_attention_loss_and_gradients_equal_padded(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    examples = _examples(1)
    padded = PaddingCollator(pad_token_id=0)(examples)
    loss_padded = model(**padded, use_cache=False).loss
    loss_padded.backward()
    grads_padded = _lora_grads(model)
    model.zero_grad(set_to_none=True)

    assert doc_attention.install_doc_attention(model)
    assert model.config._attn_implementation == doc_attention.DOC_ATTENTION
    flat = PackedCollator(pad_token_id=0, flatten=True)(examples)
    assert flat["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
    loss_flat = selective_logits.selective_causal_lm_loss(model, flat)
    loss_flat.backward()
    assert loss_flat.item() == pytest.approx(loss_padded.item(), rel=1e-5)
    _assert_grads_close(_lora_grads(model), grads_padded, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("flatten", [True, False])
def test_doc_attention_logits_equal_per_document_logits(tiny_model_dir, flatten):
    from sage_libs.sage_finetune.data.packing import pack_columns

    model = _lora_model(tiny_model_dir)
    model.eval()
    assert doc_attention.install_doc_attention(model)
    docs = [e["input_ids"] for e in _examples(2, lengths=(17, 5, 30, 1, 12, 9))]
    packed = pack_columns({"input_ids": docs, "labels": docs}, capacity=40)
    rows = [{k: packed[k][r] for k in ("input_ids", "labels", "position_ids")} for r in range(len(packed["length"]))]
    batch = PackedCollator(pad_token_id=0, flatten=flatten)(rows)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        worst = 0.0
        for r in range(batch["input_ids"].shape[0]):
            pos = batch["position_ids"][r].tolist()
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            for s, e in zip(starts, starts[1:]):
                alone = model(input_ids=batch["input_ids"][r:r + 1, s:e], use_cache=False).logits[0]
                worst = max(worst, (out[r, s:e] - alone).abs().max().item())
    assert worst < 1e-5, worst


def test_doc_attention_leaves_padded_batches_and_generation_alone(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    model.eval()
    batch = PaddingCollator(pad_token_id=0)(_examples(3))
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert doc_attention.install_doc_attention(model)
        after = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(after[mask], before[mask], rtol=1e-5, atol=1e-5)
    prompt = torch.tensor([[5, 6, 7, 8]])
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False,
                         use_cache=True, pad_token_id=0)
    model.base_model.model.set_attn_implementation("sdpa")
    ref = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False,
                         use_cache=True, pad_token_id=0)
    assert out.tolist() == ref.tolist()


def test_real_token_count_ignores_only_the_padding_tail():
    # pad == eos == 2: the eos ending document 1 is real; the tail (positions 0, 1) is padding
    ids = torch.tensor([[7, 8, 2, 9, 2, 2, 2], [4, 5, 6, 7, 8, 9, 10]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 0, 1, 2]])
    assert int(token_count.real_token_count(ids, pos, 2)) == 5 + 7


# ------------------------------------------------------------------------------------------------
# The trainer: fast defaults vs plain settings, same run
# ------------------------------------------------------------------------------------------------
def _train(tiny_model_dir, out, **options):
    from sage_libs.sage_finetune import DataConfig, LoRAConfig, TrainingConfig, create_trainer

    data_options = {k: options.pop(k) for k in ("padding_free", "group_by_length") if k in options}
    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(out), max_steps=3,
                        per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-3,
                        warmup_steps=0, logging_steps=1, eval_strategy="no", save_strategy="no", disable_tqdm=True,
                        max_seq_length=128, use_cpu=True, **options)
    trainer = create_trainer("lora", training_config=tc, data_config=DataConfig(max_samples=12, **data_options),
                             lora_config=LoRAConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    metrics = trainer.train(str(EXAMPLE_DATA / "chat_train.jsonl"), str(EXAMPLE_DATA / "chat_eval.jsonl"))
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return trainer, metrics, weights


def test_trainer_fast_defaults_match_the_plain_path(tiny_model_dir, tmp_path):
    fast, m_fast, w_fast = _train(tiny_model_dir, tmp_path / "fast")
    plain, m_plain, w_plain = _train(tiny_model_dir, tmp_path / "plain", padding_free=False, group_by_length=False,
                                     selective_logits=False, malloc_tuning=False)
    assert fast.fast_paths.selective_logits and fast.fast_paths.doc_attention and fast.hf_trainer.data_collator.flatten
    assert not plain.fast_paths.selective_logits and not plain.fast_paths.doc_attention
    assert type(plain.hf_trainer.data_collator) is PaddingCollator
    assert m_fast["train_loss"] == pytest.approx(m_plain["train_loss"], rel=1e-5)
    assert m_fast["eval_loss"] == pytest.approx(m_plain["eval_loss"], rel=1e-5)
    assert m_fast["train_tokens"] == m_plain["train_tokens"]  # real tokens, counted without padding
    _assert_grads_close(w_fast, w_plain, rtol=1e-4, atol=1e-6)


def test_malloc_tuning_applies_on_glibc_and_can_be_turned_off(monkeypatch):
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    monkeypatch.setattr(allocator, "_mode", None)
    monkeypatch.setenv("SAGE_FINETUNE_MALLOC_TUNING", "0")
    assert allocator.tune_malloc() is False and allocator.return_freed_memory() is False
    monkeypatch.delenv("SAGE_FINETUNE_MALLOC_TUNING")
    assert allocator.tune_malloc() is True


def test_fast_paths_log_says_what_the_allocator_got(tiny_model_dir, tmp_path, monkeypatch):
    """malloc_tuning off logs the fixed threshold only when it applied; with SAGE_FINETUNE_MALLOC_TUNING=0
    glibc keeps its defaults and the log says so."""
    import platform

    from sage_libs.sage_finetune import DataConfig, TrainingConfig
    from sage_libs.sage_finetune.perf import install_fast_paths, plan_fast_paths

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "o"), malloc_tuning=False)
    monkeypatch.setattr(allocator, "_mode", None)
    monkeypatch.setenv("SAGE_FINETUNE_MALLOC_TUNING", "0")
    paths = install_fast_paths(model, plan_fast_paths(model, tc, DataConfig()))
    assert "malloc tuning off (glibc's defaults)" in paths.describe() and not paths.returns_freed_memory
    monkeypatch.delenv("SAGE_FINETUNE_MALLOC_TUNING")
    paths = install_fast_paths(model, plan_fast_paths(model, tc, DataConfig()))
    assert "malloc tuning off (freed blocks over 4 MiB returned)" in paths.describe() and paths.returns_freed_memory
    allocator.tune_malloc()  # the speed setting again, for the tests after this one


_HEAP_PROBE = """
import ctypes, sys
sys.path.insert(0, {src!r})
from sage_libs.sage_finetune.perf import allocator
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def anon_mb():
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("RssAnon:")) / 1024
if sys.argv[1] == "memory":
    allocator.return_freed_memory()
block = 24 * 2**20  # an activation of 8192 tokens x 768 floats: under glibc's 32 MiB ceiling
first = libc.malloc(block + 2**22); libc.memset(first, 1, block); libc.free(first)  # the threshold rises above block
base = anon_mb()
blocks = [libc.malloc(block) for _ in range(8)]
for b in blocks:
    libc.memset(b, 1, block)
keep = libc.malloc(2**20); libc.memset(keep, 1, 2**20)  # a live block above them, as a saved tensor would be
for b in blocks:
    libc.free(b)
print(anon_mb() - base)
"""


def test_malloc_tuning_off_returns_freed_blocks_under_the_dynamic_threshold():
    """With malloc_tuning off, freed 24 MiB blocks go back to the OS. glibc's default would have
    raised its mmap threshold to 24 MiB after the first such block and kept the rest in the heap
    (what made the 0.5B model at 8192 tokens peak at twice its memory under checkpointing)."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    from ..paths import REPO

    code = _HEAP_PROBE.format(src=str(REPO / "src"))
    kept = {mode: float(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "memory")}
    assert kept["default"] > 150 and kept["memory"] < 20, kept


# ------------------------------------------------------------------------------------------------
# Data preparation: batched rendering and the cache
# ------------------------------------------------------------------------------------------------
def _one_by_one(records, tokenizer, **options):
    """The reference: every record through ChatRenderer.__call__ / render_plain on its own."""
    from sage_libs.sage_finetune.data.formats import detect_format, record_text, to_conversation
    from sage_libs.sage_finetune.data.render import ChatRenderer

    renderer = ChatRenderer(tokenizer, **options)
    out = []
    for record in records:
        fmt = detect_format(record)
        result = (renderer.render_plain(record_text(record)) if fmt == "text"
                  else renderer(to_conversation(record, fmt, agent_format="tool_calls")))
        out.append(None if result is None else (result.input_ids, result.labels))
    return [x for x in out if x is not None]


@pytest.mark.parametrize("options", [{}, {"max_seq_length": 48}, {"mask_history": True}, {"train_on_prompt": True}])
def test_batched_rendering_equals_one_record_at_a_time(tiny_tokenizer, options):
    from sage_libs.sage_finetune.data.pipeline import tokenize_records
    from sage_libs.sage_finetune.loaders.jsonl import JSONLLoader

    for name in ("chat_train.jsonl", "alpaca_train.jsonl"):
        records = list(JSONLLoader().load(EXAMPLE_DATA / name))
        cols, stats = tokenize_records(records, tiny_tokenizer, **options)
        assert list(zip(cols["input_ids"], cols["labels"])) == _one_by_one(records, tiny_tokenizer, **options)
        assert stats.examples == len(cols["input_ids"]) > 0


def test_batched_rendering_with_tools_equals_one_record_at_a_time(tiny_tokenizer):
    from sage_libs.sage_finetune.data.pipeline import tokenize_records

    from ..data.test_render import TOOL_CONVERSATION

    records = [TOOL_CONVERSATION, {"messages": TOOL_CONVERSATION["messages"][1:3]},
               {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}] * 3
    cols, _ = tokenize_records(records, tiny_tokenizer, agent_format="tool_calls")
    assert list(zip(cols["input_ids"], cols["labels"])) == _one_by_one(records, tiny_tokenizer)


def test_batched_rendering_reports_errors_in_record_order(tiny_tokenizer):
    from sage_libs.sage_finetune.data.pipeline import tokenize_records
    from sage_libs.sage_finetune.data.render import TemplateError

    def rec(text):
        return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": text},
                             {"role": "user", "content": "q2"}, {"role": "assistant", "content": text + "2"}]}

    # this template renders the last assistant turn differently from history: every record fails
    bad = ("{% for m in messages %}{{ m['role'] }}: {% if loop.last %}[{{ m['content'] }}]{% else %}"
           "{{ m['content'] }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    records = [rec("a"), {"messages": []}, rec("b")]
    with pytest.raises(TemplateError, match="record 0"):
        tokenize_records(records, tiny_tokenizer, chat_template=bad)
    cols, stats = tokenize_records(records, tiny_tokenizer, chat_template=bad, on_error="skip")
    assert stats.skipped_invalid == 3 and not cols["input_ids"]
    assert "record 0" in stats.errors[0] and "record 1" in stats.errors[1] and "record 2" in stats.errors[2]


def test_prepare_dataset_second_run_hits_the_cache_with_identical_tensors(tiny_model_dir, tmp_path, monkeypatch):
    from sage_libs.sage_finetune import DataConfig, TrainingConfig, create_trainer
    from sage_libs.sage_finetune.data import pipeline

    data = tmp_path / "train.jsonl"
    data.write_text((EXAMPLE_DATA / "chat_train.jsonl").read_text())
    cache = tmp_path / "cache"

    def trainer(**data_options):
        tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "o"), max_seq_length=64)
        t = create_trainer("lora", training_config=tc, data_config=DataConfig(cache_dir=str(cache), **data_options))
        t.setup_tokenizer()
        return t

    first = trainer().prepare_dataset(str(data))
    entries = list((cache / "tokenized").iterdir())
    assert len(entries) == 1 and (entries[0] / "data.arrow").is_file() and (entries[0] / "manifest.json").is_file()
    uncached = trainer(cache=False)
    reference = uncached.prepare_dataset(str(data))

    calls = []
    real = pipeline.tokenize_records
    monkeypatch.setattr(pipeline, "tokenize_records", lambda *a, **k: calls.append(1) or real(*a, **k))
    second_trainer = trainer()
    second = second_trainer.prepare_dataset(str(data))
    assert calls == []  # read from the cache, not rendered
    for ds in (second, reference):
        assert ds["input_ids"] == first["input_ids"] and ds["labels"] == first["labels"]
        assert ds["length"] == first["length"]
    assert second_trainer.data_stats["train"] == uncached.data_stats["train"]

    # anything the result depends on is in the key: an option, the file content
    trainer(mask_history=True).prepare_dataset(str(data))
    assert len(calls) == 1
    data.write_text(data.read_text().replace("Monday", "Sunday", 1))
    trainer().prepare_dataset(str(data))
    assert len(calls) == 2
    assert len(list((cache / "tokenized").iterdir())) == 3


def test_cache_key_covers_tokenizer_and_template(tiny_tokenizer):
    from sage_libs.sage_finetune.data.cache import cache_key

    records = [json.loads(line) for line in (EXAMPLE_DATA / "chat_train.jsonl").read_text().splitlines()[:5]]
    base = cache_key(records, tiny_tokenizer, {"chat_template": "A"})
    assert base == cache_key(list(records), tiny_tokenizer, {"chat_template": "A"})
    assert base != cache_key(records, tiny_tokenizer, {"chat_template": "B"})
    assert base != cache_key(records[:4], tiny_tokenizer, {"chat_template": "A"})
    other = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    other.add_tokens(["<brand-new-token>"])
    assert base != cache_key(records, other, {"chat_template": "A"})
    assert cache_key(iter(records), tiny_tokenizer, {}) is None  # a stream is not cached


def test_malloc_tuning_default_is_off_with_gradient_checkpointing_and_large_activations():
    """``training.malloc_tuning: null`` (the default): on, except with gradient checkpointing when the
    widest activation is above the 4 MiB over which the untuned allocator returns freed blocks, where
    the tuned heap's stuck share of the freed activations outweighs what checkpointing saves; an
    explicit value wins. The planner reads the same decision."""
    from sage_libs.sage_finetune import TrainingConfig
    from sage_libs.sage_finetune.perf import GLIBC_MMAP_THRESHOLD_MAX, malloc_tuning_for, widest_activation_bytes
    from sage_libs.sage_finetune.perf.allocator import RETURNED_BLOCK_BYTES

    def tc(**kw):
        return TrainingConfig(model_name_or_path="m", output_dir="o", **kw)

    assert tc().malloc_tuning is None
    assert malloc_tuning_for(tc()) is True
    qwen05b = tc(gradient_checkpointing=True, per_device_train_batch_size=8, max_seq_length=1024)
    widest = widest_activation_bytes(qwen05b, 896, 4864)
    assert widest == 8 * 1024 * 4864 * 4 > GLIBC_MMAP_THRESHOLD_MAX
    assert malloc_tuning_for(qwen05b, widest) is False
    mid = tc(gradient_checkpointing=True, per_device_train_batch_size=16, max_seq_length=256)
    assert malloc_tuning_for(mid, widest_activation_bytes(mid, 512, 1408)) is False  # 23 MiB: returned untuned
    small = tc(gradient_checkpointing=True, per_device_train_batch_size=1, max_seq_length=512)
    assert widest_activation_bytes(small, 512, 1408) == 512 * 1408 * 4 <= RETURNED_BLOCK_BYTES
    assert malloc_tuning_for(small, widest_activation_bytes(small, 512, 1408)) is True  # kept in the heap anyway
    assert malloc_tuning_for(tc(gradient_checkpointing=True)) is False  # size unknown
    assert malloc_tuning_for(tc(gradient_checkpointing=True, malloc_tuning=True), widest) is True
    assert malloc_tuning_for(tc(malloc_tuning=False)) is False
