from sage_libs.sage_finetune.data.collate import PaddingCollator


def test_padding_collator_literal():
    batch = PaddingCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [8], "labels": [8], "length": 1},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pad_to_multiple_of():
    batch = PaddingCollator(pad_token_id=9, pad_to_multiple_of=4)([{"input_ids": [1, 2, 3, 4, 5], "labels": [1] * 5}])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 9, 9, 9]]
    assert batch["labels"].tolist() == [[1, 1, 1, 1, 1, -100, -100, -100]]
