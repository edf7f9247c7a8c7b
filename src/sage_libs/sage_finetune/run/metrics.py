"""What a finished (or stopped) training loop reports: metrics.json's numbers, read from the HF
Trainer's state, and the one-line stop message of an interrupted run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import files as run_files
from ..errors import TrainingInterrupted

__all__ = ["loop_metrics", "final_evaluation", "interrupted"]


def loop_metrics(trainer: Any, result: Any, runtime: float, n_samples: int, model: Any,
                 resumed_from: str | None = None) -> dict[str, Any]:
    """``result``: what ``Trainer.train`` returned (None: the loop had no step left to run).
    ``resumed_from``: the checkpoint this session started from. ``train_tokens`` counts the whole
    run; ``train_runtime`` and ``train_tokens_per_second`` this session (the tokens it trained, over
    its time), and ``train_loss``, as the HF Trainer reports it, the mean over this session's steps."""
    state = trainer.state
    tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
    before = run_files.tokens_seen(resumed_from) if resumed_from else 0
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    rate = round((tokens - before) / runtime, 2) if runtime > 0 and result and tokens >= before else None
    return dict(
        train_loss=result.training_loss if result else (sum(losses) / len(losses) if losses else None),
        train_runtime=round(runtime, 3), global_step=state.global_step, epoch=state.epoch, train_samples=n_samples,
        train_tokens=tokens, train_tokens_per_second=rate,
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


def final_evaluation(trainer: Any, n_samples: int) -> dict[str, Any]:
    """eval_loss and perplexity after training, reusing an evaluation the loop already ran at its
    final step instead of repeating it."""
    last = trainer.state.log_history[-2:-1] or [{}]
    ev = last[0] if last[0].get("step") == trainer.state.global_step and "eval_loss" in last[0] else None
    ev = ev or trainer.evaluate()
    return dict(eval_loss=ev["eval_loss"], perplexity=run_files.perplexity(ev["eval_loss"]), eval_samples=n_samples)


def interrupted(trainer: Any, interrupt: Any, output_dir: str) -> TrainingInterrupted | None:
    """The error to raise when Ctrl-C / SIGTERM stopped the loop before its last step (else None)."""
    state = trainer.state
    if interrupt is None or interrupt.stopped_at is None or state.global_step >= state.max_steps:
        return None
    checkpoint = Path(output_dir) / f"checkpoint-{state.global_step}"
    saved = f"checkpoint saved: {checkpoint}" if checkpoint.is_dir() else "no checkpoint could be saved"
    return TrainingInterrupted(
        f"training {interrupt.verb} at step {state.global_step} of {state.max_steps}; {saved}. Resume with "
        f"training.resume_from_checkpoint=true (same output_dir {output_dir})",
        step=state.global_step, checkpoint=str(checkpoint) if checkpoint.is_dir() else None, signum=interrupt.signum)
