"""Packing: bins, collated tensors spelled out, and no attention across documents."""

import pytest

from sage_libs.sage_finetune.data.collate import PackedCollator
from sage_libs.sage_finetune.data.packing import best_fit_decreasing, pack_columns, packing_efficiency

from ..paths import EXAMPLE_DATA  # noqa: E402


def test_best_fit_decreasing_literal():
    # longest first (indices: 7@1, 5@3, 4@4, 3@0, 2@5, 1@2), each into the fullest bin it fits:
    # 7 -> new bin0 (free 3); 5 -> new bin1 (free 5); 4 -> bin1 (free 1); 3 -> bin0 (free 0);
    # 2 -> new bin2 (free 8); 1 -> bin1 (free 1 beats bin2's 8)
    assert best_fit_decreasing([3, 7, 1, 5, 4, 2], capacity=10) == [[1, 0], [3, 4, 2], [5]]


def test_bins_respect_capacity_and_keep_every_item():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 64) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert packing_efficiency([sum(lengths[i] for i in b) for b in bins], 64) > 0.95


def test_too_long_item_rejected():
    with pytest.raises(ValueError, match="item 0 has length 11 > capacity 10"):
        best_fit_decreasing([11], 10)


def test_pack_columns_positions_and_first_label():
    cols = {"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
            "labels": [[-100, 2, 3], [4, 5], [6, 7, -100, 9]]}
    packed = pack_columns(cols, capacity=6)
    assert packed["input_ids"] == [[6, 7, 8, 9, 4, 5], [1, 2, 3]]
    assert packed["position_ids"] == [[0, 1, 2, 3, 0, 1], [0, 1, 2]]
    # each document's first label is masked: nothing in its own document predicts it
    assert packed["labels"] == [[-100, 7, -100, 9, -100, 5], [-100, 2, 3]]
    assert packed["length"] == [6, 3] and [p.count(0) for p in packed["position_ids"]] == [2, 1]  # documents


def test_packed_collator_literal():
    batch = PackedCollator(pad_token_id=0)([
        {"input_ids": [6, 7, 8, 4, 5], "labels": [-100, 7, 8, -100, 5], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [1, 2], "labels": [-100, 2]},
    ])
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask, on purpose
    assert batch["input_ids"].tolist() == [[6, 7, 8, 4, 5], [1, 2, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 7, 8, -100, 5], [-100, 2, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]


def test_padding_free_collator_flattens():
    batch = PackedCollator(pad_token_id=0, flatten=True)([
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_per_sample_logits(tiny_model_dir, attn):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.float32)
    model.eval()
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (17, 5, 30, 1, 12)]
    cols = {"input_ids": docs, "labels": docs}
    packed = pack_columns(cols, capacity=40)
    batch = PackedCollator(pad_token_id=0)([{k: packed[k][r] for k in ("input_ids", "labels", "position_ids")}
                                            for r in range(len(packed["input_ids"]))])
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        # locate each document in the packed rows and compare with a separate forward pass
        worst = 0.0
        for doc in docs:
            alone = model(input_ids=torch.tensor([doc]), use_cache=False).logits[0]
            found = False
            for r, row in enumerate(packed["input_ids"]):
                for start in range(len(row) - len(doc) + 1):
                    if row[start:start + len(doc)] == doc and packed["position_ids"][r][start] == 0:
                        diff = (packed_logits[r, start:start + len(doc)] - alone).abs().max().item()
                        worst = max(worst, diff)
                        found = True
                        break
                if found:
                    break
            assert found
    assert worst < 1e-5, worst


def test_packed_and_unpacked_loss_agree(tiny_model_dir):
    """Same documents, same trained tokens: the summed token loss and its normaliser match."""
    import torch
    from transformers import AutoModelForCausalLM

    from sage_libs.sage_finetune.data.collate import PaddingCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.eval()
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (9, 14, 6, 20)]
    labels = [[-100] + d[1:4] + [-100] * 2 + d[6:] if len(d) > 6 else [-100] + d[1:] for d in docs]
    examples = [{"input_ids": d, "labels": lab} for d, lab in zip(docs, labels)]
    packed = pack_columns({"input_ids": docs, "labels": labels}, capacity=32)
    rows = [{k: packed[k][r] for k in ("input_ids", "labels", "position_ids")} for r in range(len(packed["length"]))]

    def token_loss_sum(batch):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        shift_logits, shift_labels = logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten()
        loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
        return loss.item(), int((shift_labels != -100).sum())

    with torch.no_grad():
        unpacked_sum, unpacked_n = token_loss_sum(PaddingCollator(0)(examples))
        packed_sum, packed_n = token_loss_sum(PackedCollator(0)(rows))
    assert packed_n == unpacked_n == sum(sum(1 for x in lab[1:] if x != -100) for lab in labels)
    assert packed_sum == pytest.approx(unpacked_sum, rel=1e-5)


def test_lora_training_with_packing(tiny_model_dir, tmp_path):

    from sage_libs.sage_finetune import DataConfig, LoRAConfig, TrainingConfig, create_trainer

    data = EXAMPLE_DATA
    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "o"), max_steps=6,
                        per_device_train_batch_size=2, learning_rate=1e-2, warmup_steps=0, max_seq_length=256,
                        eval_on_start=True, eval_steps=100, save_strategy="no", disable_tqdm=True)
    trainer = create_trainer("lora", training_config=tc, lora_config=LoRAConfig(r=4, lora_dropout=0.0),
                             data_config=DataConfig(packing=True, max_samples=64))
    metrics = trainer.train(str(data / "chat_train.jsonl"), str(data / "chat_eval.jsonl"))
    stats = metrics["data"]["train"]
    assert stats["examples"] == 64 and stats["packed_rows"] < 64 / 3 and stats["packing_efficiency"] > 0.9
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    # the packed rows were batched with position_ids and no attention mask
    batch = trainer.data_collator()([trainer.hf_trainer.train_dataset[0]])
    assert "attention_mask" not in batch and batch["position_ids"][0].tolist().count(0) > 1


def test_group_by_length_reaches_the_sampler(tiny_model_dir, tmp_path):
    from sage_libs.sage_finetune import DataConfig, TrainingConfig, create_trainer

    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "o"))
    grouped = create_trainer("lora", training_config=tc, data_config=DataConfig(group_by_length=True))
    plain = create_trainer("lora", training_config=tc)
    assert grouped.training_arguments(False).train_sampling_strategy == "group_by_length"
    assert plain.training_arguments(False).train_sampling_strategy == "random"
    assert grouped.training_arguments(False).length_column_name == "length"
    # the default (null), once the model is loaded: off for padding-free rows (the CPU default), on for padded
    # batches (as on CUDA with sdpa), unless said otherwise
    plain.setup()
    assert plain.plan_fast_paths().padding_free and plain.training_arguments(False).train_sampling_strategy == "random"
    for data, want in (({"padding_free": False}, "group_by_length"),
                       ({"padding_free": False, "group_by_length": False}, "random"),
                       ({"packing": True}, "random")):
        trainer = create_trainer("lora", training_config=tc, data_config=DataConfig(**data))
        trainer.setup()
        assert trainer.training_arguments(False).train_sampling_strategy == want, data


def test_resolve_group_by_length():
    from sage_libs.sage_finetune import DataConfig
    from sage_libs.sage_finetune.perf import resolve_group_by_length

    assert resolve_group_by_length(DataConfig(), padding_free=False) is True
    assert resolve_group_by_length(DataConfig(), padding_free=True) is False
    assert resolve_group_by_length(DataConfig(packing=True), padding_free=False) is False
    assert resolve_group_by_length(DataConfig(group_by_length=False), padding_free=False) is False
    assert resolve_group_by_length(DataConfig(group_by_length=True), padding_free=True) is True


def test_evaluation_batches_do_not_follow_the_length_grouped_sampler(tiny_model_dir, tmp_path):
    """The HF Trainer hands evaluation the length-grouped sampler of training, and its eval_loss is a
    mean of per-batch means: grouping moved eval_loss (6.25077 vs 6.25061 here). Evaluation
    batches stay in dataset order, so padded runs report one eval_loss whatever the sampler, and the
    batches are the ones padding-free evaluation sees."""
    from sage_libs.sage_finetune import DataConfig, TrainingConfig, create_loader, create_trainer

    records = create_loader("jsonl").load(str(EXAMPLE_DATA / "chat_eval.jsonl"))
    tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "o"),
                        per_device_eval_batch_size=3)
    losses = {}
    for name, data in (("grouped", {"padding_free": False, "group_by_length": True}),
                       ("random", {"padding_free": False, "group_by_length": False}),
                       ("padding-free", {"padding_free": True})):
        trainer = create_trainer("lora", training_config=tc, data_config=DataConfig(**data))
        losses[name] = trainer.evaluate(records)["eval_loss"]
        if name == "grouped":
            sampler = trainer.hf_trainer._get_eval_sampler(trainer.prepare_dataset(records, "eval"))
            assert type(sampler).__name__ == "SequentialSampler"
    assert losses["grouped"] == pytest.approx(losses["random"], abs=1e-6), losses
    assert losses["padding-free"] == pytest.approx(losses["random"], abs=1e-4), losses
