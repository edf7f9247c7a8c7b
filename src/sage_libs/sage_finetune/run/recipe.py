"""One training run of a trainer, start to end: the order in which :class:`.base.BaseTrainer`'s hooks
are called, and what is checked, locked, written and reported around them.

    preflight checks (no data read, no model loaded)      check_inputs -> .preflight
    the output folder's lock                              .lock.hold_output_dir
    which checkpoint to resume, if any                    .resume.resume_checkpoint
    tokenizer and data (errors before the model load)     prepare_dataset -> data.datasets
    will it fit? (a warning, training.plan_check)         planner.check
    model and adapter                                     setup -> load_base_model, apply_adapter
    the output folder (fresh or resumed)                  start_run_folder
    fast paths, the HF Trainer, its callbacks             build_hf_trainer -> perf, .hf_core, callbacks.wiring
    evaluation before, the loop, evaluation after         .metrics
    metrics.json and loss.png                             write_outputs -> .files
    the weights: adapter/ or model/ (and merged/)         save_final_weights -> save_model, merge_and_save

A run that fails before its first step leaves no output folder behind (when there was none); one
that runs out of disk space says so in one line (disk_full_guard).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from . import files as run_files
from ..data.sources import MultiSource, split_records
from ..errors import ConfigError
from ..perf.allocator import restore_allocator
from ..utils.noise import known_noise_dropped
from ..utils.processes import is_main_process, main_process_first
from ..trainers.preflight import warn_about_schedule
from .checkpoints import move_aside_previous_run
from .identity import RunIdentity, write_identity
from .disk import run_disk_guard
from .lock import hold_output_dir, lock_only, remove_stale_temporaries
from .metrics import final_evaluation, interrupted, loop_metrics
from .resume import check_checkpoint_fits, resume_checkpoint
from .signals import outputs_first

__all__ = ["run_training", "start_run_folder", "save_final_weights"]

logger = logging.getLogger(__name__)


def run_training(trainer: Any, train_dataset: Any = None, eval_dataset: Any = None) -> dict[str, Any]:
    """Train ``trainer`` (a :class:`.base.BaseTrainer`) and return its metrics."""
    tc, dc = trainer.training_config, trainer.data_config
    out = Path(tc.output_dir)
    created = is_main_process() and (not out.exists() or lock_only(out))
    trainer._loop_started = False
    holding = False  # whether this run took the folder's lock: only then is the folder its to remove
    try:
        if train_dataset is None:
            if not dc.train_file:
                raise ConfigError("no training data: set data.train_file in the config (or pass train_dataset to "
                                  "train() in Python)")
            train_dataset = dc.train_file
        if eval_dataset is None and dc.eval_file:
            eval_dataset = dc.eval_file
        trainer.check_inputs(train_dataset, eval_dataset)
        with known_noise_dropped(), hold_output_dir(trainer):
            holding = True
            if is_main_process():
                for path in remove_stale_temporaries(out):
                    logger.warning("removed %s, left behind by a run that was killed while writing it", path)
            with run_disk_guard(trainer):  # whichever write hits a full disk: one line, what to do
                return _train_locked(trainer, train_dataset, eval_dataset)
    except BaseException:
        # nothing worth keeping was written yet: a run that fails before its first step leaves no
        # output directory behind (when it did not exist before). A run refused by another's lock
        # (two started on a new folder at once) never removes it: the folder is the other run's.
        if created and holding and not trainer._loop_started:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        run_files.stop_log_file()
        restore_allocator()  # the speed setting keeps freed memory in the process: not past the run


def _train_locked(trainer: Any, train_dataset: Any, eval_dataset: Any) -> dict[str, Any]:
    """The run, once its inputs are checked and its folder is locked."""
    tc = trainer.training_config
    trainer._identity = RunIdentity.from_resolved_config(trainer.resolved_config(), train_dataset)
    resume = resume_checkpoint(trainer, trainer._identity)
    train_ds, eval_ds = _prepare_data(trainer, train_dataset, eval_dataset)
    if tc.plan_check and is_main_process():  # the planner: warn before a model that will not fit is loaded
        from ..planner.check import check_before_load

        check_before_load(trainer, train_ds)
    trainer.setup()
    if resume and not (tc.deepspeed or tc.fsdp):
        check_checkpoint_fits(trainer.model, resume)  # lora.r 8 -> 4: exit 2 before anything is rewritten
    if is_main_process():
        start_run_folder(tc.output_dir, resume=resume, identity=trainer._identity,
                                   resolved_config=trainer.resolved_config())
    hf = trainer.build_hf_trainer(train_ds, eval_ds)
    warn_about_schedule(tc, len(train_ds))
    metrics: dict[str, Any] = {"method": trainer.method}
    if eval_ds is not None and tc.eval_on_start:
        before = hf.evaluate()
        metrics.update(eval_loss_before=before["eval_loss"], perplexity_before=run_files.perplexity(before["eval_loss"]))
    result, runtime = _run_loop(trainer, hf, resume)
    with outputs_first() as late_signal:  # a signal now waits for the outputs: never metrics.json without adapter/
        metrics.update(loop_metrics(hf, result, runtime, len(train_ds), trainer.model, resumed_from=resume))
        if eval_ds is not None:
            metrics.update(final_evaluation(hf, len(eval_ds)))
        for callback in trainer.callbacks:  # what a callback reports about the run (early_stop: stopped_early)
            if callable(getattr(callback, "final_metrics", None)):
                metrics.update(callback.final_metrics())
        metrics["data"] = trainer.data_stats
        if is_main_process():
            trainer.write_outputs(metrics)
        save_final_weights(trainer)
    if late_signal["signum"] is not None:
        logger.warning("%s after the last step (%d of %d): the run is complete and its outputs are written",
                       "SIGTERM" if late_signal["signum"] == 15 else "Ctrl-C", hf.state.global_step, hf.state.max_steps)
    return metrics


def save_final_weights(trainer: Any) -> None:
    """The run's result: OUTPUT_DIR/adapter (adapter methods) or OUTPUT_DIR/model, and with
    ``training.save_merged`` OUTPUT_DIR/merged. Every process calls it (under ZeRO-3 or FSDP the
    engine gathers the shards); the main process writes."""
    tc = trainer.training_config
    out = Path(tc.output_dir)
    trainer.save_model(run_files.weights_dir(out, getattr(trainer, "uses_lora", False)))
    if tc.save_merged:
        trainer.merge_and_save(out / run_files.MERGED)


def _prepare_data(trainer: Any, train_dataset: Any, eval_dataset: Any) -> tuple[Any, Any]:
    """Both splits tokenized. Data errors surface before the (possibly slow) model load: only
    the tokenizer is needed."""
    tc, dc = trainer.training_config, trainer.data_config
    trainer.setup_tokenizer()
    if eval_dataset is None and dc.eval_split_ratio > 0:
        pairs = [split_records(r, dc.eval_split_ratio, tc.seed) for r in trainer._record_sets(train_dataset, "train")]
        train_dataset = MultiSource(tr for tr, _ in pairs)
        eval_dataset = MultiSource(ev for _, ev in pairs)
    with main_process_first():  # the main process tokenizes (and caches); the others wait, then reuse
        return trainer.prepare_dataset(train_dataset, "train"), trainer.prepare_dataset(eval_dataset, "eval")


def _run_loop(trainer: Any, hf: Any, resume: str | None) -> tuple[Any, float]:
    """The HF Trainer's loop, with Ctrl-C/SIGTERM turned into a checkpoint and a resume command."""
    from ..errors import RunFinished

    interrupt = getattr(trainer, "_interrupt", None)
    if resume and is_main_process():  # on the console too: a rerun that continues says so
        logger.warning("resuming from %s", resume)
    start = time.perf_counter()
    trainer._loop_started = True
    try:
        with interrupt.catch_signals() if interrupt is not None else contextlib.nullcontext():
            result = hf.train(resume_from_checkpoint=resume)
    except RunFinished:  # resumed from the final checkpoint: no step left, its weights are the result
        logger.warning("%s is the end of this run (step %d of %d): nothing left to train; the outputs are "
                       "written from it", resume, hf.state.global_step, hf.state.max_steps)
        result = None
    runtime = time.perf_counter() - start
    stop = interrupted(hf, interrupt, trainer.training_config.output_dir)
    if stop is not None:
        raise stop
    if interrupt is not None and interrupt.requested and interrupt.stopped_at is None:
        logger.warning("%s after the last step (%d of %d): the run is complete; its outputs are written now "
                       "(no checkpoint is needed)", "SIGTERM" if interrupt.signum == 15 else "Ctrl-C",
                       hf.state.global_step, hf.state.max_steps)
    return result, runtime


def start_run_folder(output_dir: str | os.PathLike, *, resume: str | None, identity: Any,
                     resolved_config: dict[str, Any]) -> None:
    """Make ``output_dir`` this run's (main process only): a fresh run moves an earlier run's files
    aside (.checkpoints) and starts an empty folder; a resumed one trims trainer_log.jsonl to its
    checkpoint and appends to train.log. Then run_identity.json and run_config.yaml are written."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        moved = move_aside_previous_run(out)
        if moved is not None:
            logging.getLogger(__name__).warning(
                "output_dir held the checkpoints and outputs of an earlier run; moved them to %s (a fresh run never "
                "mixes its files with another run's; delete that folder if you do not need it). Next time, "
                "training.resume_from_checkpoint=true continues an interrupted run of the same config instead",
                moved)
    else:
        run_files.trim_log(out, run_files.checkpoint_step(resume))
    run_files.log_to_file(out, append=bool(resume))
    write_identity(out, identity)
    run_files.write_run_config(out, resolved_config)
