"""Counting real tokens in batches without ``attention_mask`` (packed or padding-free rows), for
``num_input_tokens_seen`` and the tokens/s the run reports."""

from __future__ import annotations

from typing import Any

__all__ = ["real_token_count"]


def real_token_count(input_ids: Any, position_ids: Any, pad_token_id: int | None) -> Any:
    """Tokens of a position_ids batch that are not the padding tail the packed collator appends
    (a run of ``pad_token_id`` starting at position 0 and running to the end of the row). Unlike
    ``input_ids != pad_token_id`` this does not miss real eos tokens when pad == eos."""
    import torch

    if pad_token_id is None:
        return torch.tensor(input_ids.numel())
    is_pad = input_ids == pad_token_id
    tail = is_pad.flip(-1).to(torch.int32).cumprod(-1).flip(-1).bool()  # every token from here on is pad
    starts = tail & (position_ids.expand_as(input_ids) == 0)
    length = input_ids.shape[-1]
    idx = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    first = torch.where(starts, idx, torch.full_like(idx, length)).min(dim=-1).values
    return first.sum()
