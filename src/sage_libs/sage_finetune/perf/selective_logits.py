"""Selective logits: the LM head and the cross-entropy run only at the positions whose next-token
label is trained (``logits_to_keep`` as a boolean mask, which transformers-5 causal LMs built on
``slice_logits_to_keep`` accept), instead of ``(batch, seq, vocab)`` logits for every prompt and
padding position. With large vocabularies the head and the loss also run in chunks of rows
(:mod:`.chunked_ce`), so not even the ``(trained tokens, vocab)`` logits exist at once.

Whether a model qualifies is found by a probe (:func:`probe_model`): one no-grad forward of three
tokens, run once per model instance, that checks what the forward actually returns for a boolean
``logits_to_keep`` and whether the logits are the LM head's output unchanged (no soft-capping or
scaling after the head, which chunking would skip).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

from ..data.conversation import IGNORE_INDEX

__all__ = ["selective_causal_lm_loss", "supports_selective_logits", "lm_head_for_chunking", "head_to_chunk",
           "kept_hidden_states", "probe_model", "ModelProbe", "base_causal_lm"]

logger = logging.getLogger(__name__)


def model_device_type(model: Any) -> str:
    """The device type of ``model``'s first parameter ("cpu" for a model without parameters)."""
    try:
        return next(model.parameters()).device.type
    except (StopIteration, AttributeError):
        return "cpu"


def base_causal_lm(model: Any) -> Any:
    """The transformers model under a PEFT or DDP wrapper."""
    import torch

    if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    get_base = getattr(model, "get_base_model", None)  # PEFT wrappers
    return get_base() if callable(get_base) else model


@dataclass(frozen=True)
class ModelProbe:
    """What one forward of the model showed. ``selective``: a boolean ``logits_to_keep`` returns
    ``(n_kept, vocab)`` logits. ``plain_head``: the returned logits are exactly the LM head's
    output. ``why``: the reason when ``selective`` is False."""

    selective: bool
    plain_head: bool
    why: str | None = None


_probes: "weakref.WeakKeyDictionary[Any, ModelProbe]" = weakref.WeakKeyDictionary()


def probe_model(model: Any) -> ModelProbe:
    """Run (once per model instance) a no-grad forward of three tokens with ``logits_to_keep`` =
    [True, False, True]. The random number generators are restored afterwards (dropout in train
    mode draws from them), so the probe changes nothing about the run."""
    import torch

    base = base_causal_lm(model)
    cached = _probes.get(base)
    if cached is not None:
        return cached
    config = getattr(base, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text_config, "output_router_logits", False):
        probe = ModelProbe(False, False, "the model's own loss adds a router loss (MoE)")
    else:
        probe = _run_probe(base, torch)
    try:
        _probes[base] = probe
    except TypeError:
        pass
    return probe


def _run_probe(base: Any, torch: Any) -> ModelProbe:
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    try:
        param = next(base.parameters())
    except (StopIteration, AttributeError):
        return ModelProbe(False, False, "no parameters")
    device = param.device
    captured: list[Any] = []
    hook = head.register_forward_hook(lambda _m, _i, out: captured.append(out)) if head is not None else None
    ids = torch.zeros((1, 3), dtype=torch.long, device=device)
    keep = torch.tensor([[True, False, True]], device=device)
    devices = [device.index or 0] if device.type == "cuda" else []
    # train mode, as in training: an eval-mode no-grad forward is what makes some quantized layers
    # repack their weights (bitsandbytes on AVX-512 CPUs); dropout's draws are undone by fork_rng
    was_training = base.training
    base.train()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            logits = base(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
    except Exception as exc:  # noqa: BLE001 - any failure means: not supported, say why
        return ModelProbe(False, False, f"the probe forward failed ({type(exc).__name__}: {exc})"[:200])
    finally:
        base.train(was_training)
        if hook is not None:
            hook.remove()
    if logits is None or logits.dim() != 2 or logits.shape[0] != 2:
        shape = None if logits is None else tuple(logits.shape)
        return ModelProbe(False, False, f"a boolean logits_to_keep gave logits of shape {shape}, not (2, vocab)")
    plain = len(captured) == 1 and torch.is_tensor(captured[0]) and captured[0].shape == logits.shape \
        and torch.equal(captured[0], logits)
    return ModelProbe(True, plain)


def supports_selective_logits(model: Any) -> bool:
    """True when a boolean ``logits_to_keep`` mask makes the model return ``(n_kept, vocab)`` logits
    and its own loss is plain cross-entropy over them (:func:`probe_model`)."""
    return probe_model(model).selective


def lm_head_for_chunking(model: Any) -> Any:
    """The model's LM head when :mod:`.chunked_ce` can stand in for it exactly, else ``None``.

    It must be a plain ``torch.nn.Linear`` (not a LoRA layer, a ``modules_to_save`` wrapper or a
    quantized layer) without hooks, whose weight is an ordinary tensor (not a DeepSpeed ZeRO-3 stub
    or a DTensor shard), whose output the model returns unchanged as its logits (no soft-capping or
    scaling; :func:`probe_model`). A head tied to the
    input embeddings qualifies: both uses' gradients add up in the shared weight."""
    import torch

    base = base_causal_lm(model)
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not torch.nn.Linear or getattr(base, "lm_head", None) is not head:
        return None
    if head._forward_hooks or head._forward_pre_hooks or hasattr(head, "_hf_hook") or "forward" in head.__dict__:
        return None
    weight = head.weight
    if type(weight) not in (torch.Tensor, torch.nn.Parameter) or hasattr(weight, "ds_id") or weight.dim() != 2:
        return None
    return head if probe_model(base).plain_head else None


def _hidden_passthrough(hidden_states: Any) -> Any:
    return hidden_states


def head_to_chunk(model: Any, n_rows: int, chunked: bool | None) -> Any:
    """The LM head to run in chunks for ``n_rows`` kept positions under ``chunked``
    (``training.chunked_lm_loss``: true, false, or null: on), or None: the plain path (off, or a head
    that does not qualify, see :func:`lm_head_for_chunking`)."""
    from . import chunked_ce

    if chunked is False:
        return None
    head = lm_head_for_chunking(model)
    if head is None:
        if chunked:
            logger.debug("chunked LM head: the LM head is not a plain Linear called plainly; plain path")
        return None
    return head if chunked_ce.use_chunked_lm_loss(chunked) else None


def kept_hidden_states(model: Any, forward: dict[str, Any], keep: Any, head: Any) -> Any:
    """The model's forward with ``logits_to_keep=keep``, returning the hidden states the LM head
    ``head`` would have turned into logits at the kept positions (``(n_kept, hidden)``)."""
    head.forward = _hidden_passthrough  # the model's forward returns the hidden states at `keep`
    try:
        hidden = model(**forward, logits_to_keep=keep).logits
    finally:
        del head.forward
    n_kept = int(keep.sum())
    if hidden.dim() != 2 or hidden.shape != (n_kept, head.in_features):
        raise RuntimeError(f"chunked LM head: expected ({n_kept}, {head.in_features}) hidden states, "
                           f"got {tuple(hidden.shape)}; set training.chunked_lm_loss: false for this model")
    return hidden


def selective_causal_lm_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None,
                             chunked: bool | None = None) -> Any:
    """The causal LM loss of ``inputs`` (with ``labels``), computing logits only where a label is
    trained. Same value as the model's own ``loss``: cross-entropy (in float32) summed over the
    trained next-token positions, divided by ``num_items_in_batch`` when given, else by their count.

    ``chunked`` (``training.chunked_lm_loss``, as decided by :func:`..perf.plan_fast_paths`; None, the
    option's default: on, see :func:`.chunked_ce.use_chunked_lm_loss`): the LM head, the
    cross-entropy and their gradients run in chunks of rows, so no ``(trained tokens, vocab)`` logits
    tensor exists; models whose head does not qualify (:func:`lm_head_for_chunking`) take the plain
    path. The default is the run's default: a caller that does not decide (a benchmark, a test)
    computes what the trainer computes with default options. (It was ``False``, so
    ``benchmarks/sft_scale.py`` measured ~4 float32 copies of the ``(trained tokens, vocab)``
    logits that the trainer never holds: 8 GB of its 9.5 GB at 8192 tokens.)
    """
    import torch

    from . import chunked_ce

    labels = inputs["labels"]
    keep = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][keep[:, :-1]]
    forward = {k: v for k, v in inputs.items() if k != "labels"}
    forward["use_cache"] = False
    head = head_to_chunk(model, targets.numel(), chunked)
    if head is not None:
        hidden = kept_hidden_states(model, forward, keep, head)
        normalizer = max(int(targets.numel()), 1) if num_items_in_batch is None else num_items_in_batch
        return chunked_ce.chunked_linear_cross_entropy(hidden, head.weight, targets.to(hidden.device), head.bias,
                                                        normalizer=normalizer,
                                                        chunk_rows=chunked_ce.chunk_rows_for(head.out_features,
                                                                                              chunked_ce.CHUNK_BYTES))
    logits = model(**forward, logits_to_keep=keep).logits
    if logits.dim() != 2 or logits.shape[0] != targets.numel():
        raise RuntimeError(f"selective logits: expected ({targets.numel()}, vocab) logits, got {tuple(logits.shape)}; "
                           "set training.selective_logits: false for this model")
    loss = torch.nn.functional.cross_entropy(logits.float(), targets.to(logits.device), reduction="sum")
    if num_items_in_batch is None:
        return loss / max(int(targets.numel()), 1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch
