"""The one trainer base: it owns the run; variants change small hooks only.

    load_tokenizer()      -> tokenizer        (rarely overridden)
    load_base_model()     -> model            (QLoRA: quantized loading)
    apply_adapter(model)  -> model            (LoRA/DoRA/...: PEFT; full: unfreeze)
    create_optimizer(m)   -> optimizer|None   (LoRA+: per-matrix learning rates)

Everything else (data preparation, the HF Trainer, evaluation, outputs, saving) lives here once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError, DataConfig, LoRAConfig, TrainingConfig
from ..data.sources import MultiSource, split_records
from ..interface import FineTuner
from ..utils.io import atomic_dir, atomic_write_json, atomic_write_text

__all__ = ["BaseTrainer", "coerce_config", "TrainingError", "NonFiniteLossError", "TrainingInterrupted",
           "DiskFullError"]

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training started but cannot go on (the CLI exits with code 1; bad input before the start is a
    :class:`ConfigError`, code 2)."""


class NonFiniteLossError(TrainingError):
    """The loss (or a trained weight) became NaN or inf. ``step`` is the optimizer step it happened
    at; ``checkpoint`` the last good checkpoint on disk, if any (nothing is saved after it)."""

    def __init__(self, message: str, *, step: int | None = None, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


class DiskFullError(TrainingError):
    """A write failed for lack of space; ``checkpoint`` is the last complete checkpoint, if any."""

    def __init__(self, message: str, *, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM: ``signum``) stopped training after a checkpoint was saved at ``step``. A
    KeyboardInterrupt, so that code which catches Exception does not swallow the user's interrupt."""

    def __init__(self, message: str, *, step: int, checkpoint: str | None, signum: int = 2) -> None:
        super().__init__(message)
        self.step, self.checkpoint, self.signum = step, checkpoint, signum

    def __str__(self) -> str:
        return str(self.args[0])


def coerce_config(cls: type, value: Any, name: str) -> Any:
    """Accept our dataclass, a dict, or another config object with the same field names (e.g.
    SAGE's ``TrainingConfig``)."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value, where=name)
    if dataclasses.is_dataclass(value):
        return cls.from_dict(_installed_trackers_only(dataclasses.asdict(value)), where=name)
    if hasattr(value, "to_dict"):
        return cls.from_dict(_installed_trackers_only(dict(value.to_dict())), where=name)
    raise ConfigError(f"{name}: expected a {cls.__name__} or a dict, got {type(value).__name__}")


_BASE_OPTIONS = ("training_config", "lora_config", "data_config", "callbacks", "formatting_func")


def _installed_trackers_only(fields: dict[str, Any]) -> dict[str, Any]:
    """SAGE's TrainingConfig defaults to report_to=["tensorboard"]; a SAGE user without the
    tensorboard package should still train, so trackers that are not installed are dropped
    (with a warning) for configs coming from another library. Our own config fails loudly."""
    import importlib.util

    trackers = fields.get("report_to")
    if isinstance(trackers, list):
        missing = [t for t in trackers if t in ("tensorboard", "wandb") and importlib.util.find_spec(t) is None]
        if missing:
            logger.warning("report_to: %s not installed, not reporting there (pip install %s)",
                           ", ".join(missing), " ".join(missing))
            fields = {**fields, "report_to": [t for t in trackers if t not in missing]}
    return fields


def _main_process_first() -> Any:
    """In a multi-process run (torchrun, accelerate, deepspeed): a context in which the main
    process goes first and the others wait for it; a no-op in a single process."""
    import contextlib

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().main_process_first()


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class _RunLogFile(logging.FileHandler):
    """OUTPUT_DIR/train.log: INFO and above from every library (the console shows warnings only)."""


def _stop_log_file() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _RunLogFile)]:
        root.removeHandler(handler)
        handler.close()


def _log_to_file(path: Path, append: bool = False) -> None:
    """Send log records to ``path`` until the run ends (``append``: a resumed run continues the log
    of the run it resumes)."""
    ours = logging.getLogger("sage_libs.sage_finetune")
    _stop_log_file()
    handler = _RunLogFile(path, mode="a" if append else "w", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)  # our INFO records reach the file; the console handler still filters them


def _use_cpu(tc: TrainingConfig) -> bool:
    """``training.use_cpu``, or on when several processes were launched (torchrun) and there is no
    GPU: without it the HF Trainer does not set up DDP on the CPU and every process would train on
    all the data, as N separate jobs."""
    if tc.use_cpu:
        return True
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        if _is_main_process():
            logger.info("%s processes and no GPU: training as one DDP job on the CPU (gloo), as with "
                        "training.use_cpu: true", os.environ["WORLD_SIZE"])
        return True
    return False


class BaseTrainer(FineTuner):
    """Supervised fine-tuning on the HF Trainer. Subclasses set :attr:`method` and override hooks.

    Args:
        training_config: :class:`TrainingConfig` (or a dict / SAGE TrainingConfig).
        lora_config: :class:`LoRAConfig` for adapter methods.
        data_config: :class:`DataConfig`: formats, masking, chat template.
        callbacks: :class:`TrainingCallback` objects (or HF ``TrainerCallback`` objects).
        formatting_func: record -> text, list of messages, or a record in a known format.
    """

    method = "base"
    uses_lora = False

    def __init__(self, training_config: Any = None, lora_config: Any = None, data_config: Any = None,
                 callbacks: list[Any] | None = None, formatting_func: Callable | None = None,
                 **options: Any) -> None:
        if training_config is None:
            raise ConfigError(f"create_trainer({self.method!r}): training_config is required "
                              "(TrainingConfig(model_name_or_path=..., output_dir=...))")
        self.training_config: TrainingConfig = coerce_config(TrainingConfig, training_config, "training_config")
        self.lora_config: LoRAConfig | None = coerce_config(LoRAConfig, lora_config, "lora_config")
        if self.uses_lora and self.lora_config is None:
            self.lora_config = LoRAConfig()
        self.data_config: DataConfig = coerce_config(DataConfig, data_config, "data_config") or DataConfig()
        self.callbacks = list(callbacks or [])
        self.formatting_func = formatting_func
        if self.data_config.formatting_func:
            # a FILE.py:FUNCTION named in the config; imported now, so a wrong name fails before any work
            if formatting_func is not None:
                raise ConfigError("data.formatting_func is set and a formatting_func argument was passed too; "
                                  "use one of them")
            from ..utils.user_code import load_function

            self.formatting_func = load_function(self.data_config.formatting_func, "data.formatting_func")
        self.options = options
        self._check_options()
        self.model: Any = None
        self.tokenizer: Any = None
        self.hf_trainer: Any = None
        self.data_stats: dict[str, Any] = {}
        self._step_losses: list[float] = []
        # more top-level run_config.yaml entries, set by whoever wraps this trainer (the agent
        # trainer, the CLI's callbacks section) so that the file can reproduce the run
        self.run_config_extra: dict[str, Any] = {}

    def _check_options(self) -> None:
        """Reject keyword options this trainer does not know (subclasses extend ``known_options``)."""
        known = self.known_options()
        unknown = [k for k in self.options if k not in known]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], [*_BASE_OPTIONS, *known], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"create_trainer({self.method!r}): unknown option {unknown[0]!r}{hint}; "
                              f"known: {', '.join(_BASE_OPTIONS)}"
                              + (", " + ", ".join(known) if known else ""))

    @classmethod
    def known_options(cls) -> list[str]:
        return []

    # ----------------------------------------------------------------------------------------
    # Hooks
    # ----------------------------------------------------------------------------------------
    def load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        from ..utils.model_files import check_model_dir

        tc = self.training_config
        check_model_dir(tc.model_name_or_path, allow_pickle_weights=tc.allow_pickle_weights)
        try:
            tokenizer = AutoTokenizer.from_pretrained(tc.model_name_or_path, trust_remote_code=tc.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"training.model_name_or_path: cannot load a tokenizer from "
                              f"{tc.model_name_or_path!r}: {exc}") from exc
        if tokenizer.pad_token is None:
            # Padding positions are masked by attention_mask and labels=-100, so reusing eos is safe.
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        return tokenizer

    def model_load_kwargs(self) -> dict[str, Any]:
        import torch

        tc = self.training_config
        kwargs: dict[str, Any] = {"trust_remote_code": tc.trust_remote_code}
        # safetensors only, unless pickled weights are explicitly allowed (None: prefer safetensors)
        kwargs["use_safetensors"] = None if tc.allow_pickle_weights else True
        kwargs["dtype"] = "auto" if tc.model_dtype == "auto" else getattr(torch, tc.model_dtype)
        if tc.attn_implementation:
            kwargs["attn_implementation"] = tc.attn_implementation
        return kwargs

    def load_base_model(self) -> Any:
        from transformers import AutoModelForCausalLM

        tc = self.training_config
        try:
            model = AutoModelForCausalLM.from_pretrained(tc.model_name_or_path, **self.model_load_kwargs())
        except OSError as exc:
            hint = ("; only safetensors weights are loaded unless training.allow_pickle_weights is true"
                    if "safetensors" in str(exc) and not tc.allow_pickle_weights else "")
            raise ConfigError(f"training.model_name_or_path: cannot load a model from "
                              f"{tc.model_name_or_path!r}: {exc}{hint}") from exc
        model.config.use_cache = False  # the KV cache is useless in training and breaks packed position_ids
        return model

    def apply_adapter(self, model: Any) -> Any:
        """Decide which parameters train. The base trains all of them."""
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def create_optimizer(self, model: Any) -> Any:
        """Return an optimizer, or None to let the HF Trainer build AdamW from the config."""
        return None

    # ----------------------------------------------------------------------------------------
    # Model life cycle
    # ----------------------------------------------------------------------------------------
    def setup_tokenizer(self) -> None:
        """Load the tokenizer and decide how conversations render (:meth:`render_options`). The
        training template becomes the tokenizer's own, so everything that saves it carries it."""
        if self.tokenizer is None:
            self.adopt_tokenizer(self.load_tokenizer())

    def adopt_tokenizer(self, tokenizer: Any, *, saved: bool = False) -> None:
        """Use ``tokenizer`` from now on: resolve the rendering against it and install the template
        it renders with. ``saved``: read back from a saved run (:meth:`load_model`), whose own
        template is the one it trained with and wins over ``data.chat_template``."""
        from ..data.rendering import install_chat_template, render_options

        data_config = self.data_config
        if saved and isinstance(getattr(tokenizer, "chat_template", None), str):
            data_config = data_config.replace(chat_template=None)
        options = render_options(data_config, tokenizer, max_seq_length=self.training_config.max_seq_length,
                                 formatting_func=self.formatting_func)
        install_chat_template(tokenizer, options.chat_template)
        self.tokenizer, self._render_options = tokenizer, options

    def render_options(self) -> Any:
        """How this trainer renders conversations (:class:`..data.rendering.RenderOptions`): for
        training, evaluation, generation and the agent evaluation alike."""
        self.setup_tokenizer()
        return self._render_options

    def end_of_turn_token_ids(self) -> list[int]:
        """The tokens that end a reply: the template's end-of-turn token(s) and the eos."""
        from ..data.rendering import end_of_turn_token_ids

        self.setup_tokenizer()
        ids = end_of_turn_token_ids(self.tokenizer, self.render_options().chat_template.text)
        eos = self.tokenizer.eos_token_id
        return ids + ([eos] if eos is not None and eos not in ids else [])

    def setup(self) -> None:
        """Load tokenizer and model and apply the adapter (once)."""
        if self.model is not None:
            return
        import torch

        self.setup_tokenizer()
        torch.manual_seed(self.training_config.seed)
        model = self.load_base_model()
        if self.training_config.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        self.model = self.apply_adapter(model)

    def plan(self, train_dataset: Any = None, **options: Any) -> Any:
        """Predict this run's peak memory and time without loading weights (planner, issue #18):
        ``options`` are :func:`..planner.plan_trainer`'s (device, memory, processes, probe, tflops)."""
        from ..planner.plan import plan_trainer

        return plan_trainer(self, train_dataset, **options)

    def trainable_parameters(self) -> dict[str, Any]:
        self.setup()
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    # ----------------------------------------------------------------------------------------
    # Data
    # ----------------------------------------------------------------------------------------
    def _record_sets(self, data: Any, split: str) -> list[Any]:
        """A path, a list of paths, or in-memory data -> one or more record collections."""
        from ..data.sources import record_sets

        return record_sets(data, self.data_config, split)

    def prepare_dataset(self, data: Any, split: str = "train") -> Any:
        """Records, a path (or list of paths), or already tokenized data -> a tokenized
        ``datasets.Dataset`` with ``input_ids``, ``labels`` and ``length``."""
        from datasets import Dataset, concatenate_datasets

        from ..data.pipeline import PrepareStats, is_tokenized, prepare_records

        if data is None:
            return None
        parts, stats_parts, mixes, sources = [], [], [], []
        for records in self._record_sets(data, split):
            mixes.append(getattr(records, "mix", None))
            sources.append(getattr(records, "source", None))
            if is_tokenized(records):
                parts.append(records if isinstance(records, Dataset) else Dataset.from_list([dict(x) for x in records]))
                continue
            dc, options = self.data_config, self.render_options()
            dataset, stats = prepare_records(  # through the tokenized-data cache (data.cache, data.cache_dir)
                records, self.tokenizer, cache=dc.cache, cache_dir=dc.cache_dir, **options.tokenize_kwargs())
            stats.skipped_invalid += getattr(records, "skipped", 0)  # lines the loader could not parse
            stats_parts.append(stats)
            if len(dataset) == 0:
                source = getattr(records, "source", None) or f"{split} data"
                raise ConfigError(f"{source}: no trainable examples ({stats.records} records, "
                                  f"{stats.skipped_invalid} invalid, {stats.dropped_no_trained_tokens} with every "
                                  "trained token cut by max_seq_length)")
            parts.append(dataset)
        if stats_parts:
            self.data_stats[split] = PrepareStats.merge(stats_parts).to_dict()
        if split == "train" and any(mixes):  # weighted / counted sources (data.train_file entries)
            from ..data.sources import mixture_indices

            picks = mixture_indices([len(p) for p in parts], mixes, self.training_config.seed)
            self.data_stats.setdefault("train", {})["mixture"] = [
                {"source": src, "examples": len(part), "used": len(idx), **(mix or {})}
                for src, part, idx, mix in zip(sources, parts, picks, mixes)]
            parts = [part.select(idx) for part, idx in zip(parts, picks)]
        dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        if split == "train" and self.data_config.packing:
            dataset = self._pack(dataset)
        return dataset

    def _pack(self, dataset: Any) -> Any:
        from datasets import Dataset

        from ..data.packing import pack_columns

        capacity = self.training_config.max_seq_length
        packed = Dataset.from_dict(pack_columns({"input_ids": dataset["input_ids"], "labels": dataset["labels"]},
                                                capacity))
        stats = self.data_stats.setdefault("train", {})
        stats["packed_rows"] = len(packed)
        stats["packing_efficiency"] = round(sum(packed["length"]) / (len(packed) * capacity), 4)
        return packed

    def dataset_tools(self) -> list[dict[str, Any]] | None:
        """The dataset-wide tool schemas of ``data.tools_file``."""
        return self.render_options().tools

    def data_collator(self) -> Any:
        from ..data.collate import PackedCollator, PaddingCollator
        from ._fast import resolve_padding_free

        flat = resolve_padding_free(self.data_config, self.training_config, self.model)  # data.padding_free
        if self.data_config.packing or flat:
            # also right for the unpacked eval rows: each is one document plus a padding tail
            return PackedCollator(pad_token_id=self.tokenizer.pad_token_id, flatten=flat)
        return PaddingCollator(pad_token_id=self.tokenizer.pad_token_id)

    # ----------------------------------------------------------------------------------------
    # The HF Trainer
    # ----------------------------------------------------------------------------------------
    def training_arguments(self, has_eval: bool) -> Any:
        import torch
        from transformers import TrainingArguments

        from ..callbacks.reporting import hf_report_to  # tensorboard and wandb: our callbacks (_hf_callbacks)

        tc = self.training_config
        if tc.fp16 and not torch.cuda.is_available():
            raise ConfigError("training.fp16: float16 mixed precision needs a CUDA GPU and none is available; "
                              "set fp16: false (or bf16: true on a CPU with bfloat16 support)")
        kwargs: dict[str, Any] = dict(
            output_dir=tc.output_dir, num_train_epochs=tc.num_train_epochs, max_steps=tc.max_steps,
            per_device_train_batch_size=tc.per_device_train_batch_size,
            per_device_eval_batch_size=tc.per_device_eval_batch_size,
            gradient_accumulation_steps=tc.gradient_accumulation_steps, learning_rate=tc.learning_rate,
            weight_decay=tc.weight_decay, warmup_steps=tc.warmup_steps, lr_scheduler_type=tc.lr_scheduler_type,
            max_grad_norm=tc.max_grad_norm, optim=tc.optim, fp16=tc.fp16, bf16=tc.bf16,
            logging_steps=tc.logging_steps, logging_first_step=True,
            eval_strategy=tc.eval_strategy if has_eval else "no", eval_steps=tc.eval_steps,
            save_strategy=tc.save_strategy, save_steps=tc.save_steps, save_total_limit=tc.save_total_limit,
            seed=tc.seed, data_seed=tc.seed, report_to=hf_report_to(tc.report_to) or "none", run_name=tc.run_name,
            dataloader_num_workers=tc.dataloader_num_workers, dataloader_pin_memory=torch.cuda.is_available(),
            activation_checkpointing=tc.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False} if tc.gradient_checkpointing else None,
            use_cpu=_use_cpu(tc), disable_tqdm=tc.disable_tqdm, remove_unused_columns=False,
            neftune_noise_alpha=tc.neftune_noise_alpha,
            include_num_input_tokens_seen="non_padding", label_names=["labels"],
            train_sampling_strategy="group_by_length" if self.data_config.group_by_length else "random",
            length_column_name="length",
            # the HF Trainer would replace a NaN/inf step loss by the running mean; NonFiniteGuard must see it
            logging_nan_inf_filter=False,
        )
        if tc.deepspeed:
            kwargs["deepspeed"] = tc.deepspeed
        if tc.fsdp:
            kwargs["fsdp"] = tc.fsdp
            if tc.fsdp_config:
                kwargs["fsdp_config"] = tc.fsdp_config
        try:
            return TrainingArguments(**kwargs)
        except ValueError as exc:  # HF's own checks of option combinations
            raise ConfigError(f"training: {exc}") from None

    def _hf_callbacks(self) -> list[Any]:
        from transformers import TrainerCallback

        from ..callbacks.bridge import CallbackBridge
        from ..callbacks.reporting import tracker_callbacks
        from ..callbacks.run_log import RunLogCallback
        from ..callbacks.safety import InterruptCallback, NonFiniteGuard

        ours = [cb for cb in self.callbacks if not isinstance(cb, TrainerCallback)]
        theirs = [cb for cb in self.callbacks if isinstance(cb, TrainerCallback)]
        theirs += tracker_callbacks(self.training_config.report_to, self.callbacks)  # report_to tensorboard/wandb
        self._interrupt = InterruptCallback()
        out = [RunLogCallback(Path(self.training_config.output_dir) / "trainer_log.jsonl"), self._interrupt,
               NonFiniteGuard(self), *theirs]
        if ours:
            out.append(CallbackBridge(self, ours))
        return out

    def hf_trainer_core(self) -> tuple[type, dict[str, Any]]:
        """The HF Trainer subclass :meth:`build_hf_trainer` builds, and extra keyword arguments for it
        (the preference trainer swaps in its loss here)."""
        from ._hf import SFTTrainerCore

        return SFTTrainerCore, {}

    def build_hf_trainer(self, train_dataset: Any = None, eval_dataset: Any = None) -> Any:
        self.setup()
        optimizer = self.create_optimizer(self.model)
        core, extra = self.hf_trainer_core()
        self.hf_trainer = core(
            owner=self, model=self.model, args=self.training_arguments(eval_dataset is not None),
            train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=self.data_collator(),
            processing_class=self.tokenizer, callbacks=self._hf_callbacks(),
            optimizers=(optimizer, None), **extra)
        # our console output instead of HF's log dicts and nested bars (see callbacks/console.py)
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from ..callbacks.console import ConsoleCallback

        self.hf_trainer.remove_callback(ProgressCallback)
        self.hf_trainer.remove_callback(PrinterCallback)
        self.hf_trainer.add_callback(ConsoleCallback(bar=not self.training_config.disable_tqdm))
        return self.hf_trainer

    def _pop_step_loss(self) -> float | None:
        """Mean loss of the micro-batches of the optimizer step that just ended (for callbacks)."""
        if not self._step_losses:
            return None
        loss = sum(self._step_losses) / len(self._step_losses)
        self._step_losses.clear()
        return loss

    # ----------------------------------------------------------------------------------------
    # Public API
    # ----------------------------------------------------------------------------------------
    def train(self, train_dataset: Any = None, eval_dataset: Any = None, config: Any = None) -> dict[str, Any]:
        """Train on ``train_dataset`` (records, a path, or tokenized data); returns metrics.

        ``config`` optionally replaces the training config for this call (SAGE's signature).
        The run holds its output folder's lock throughout (see :meth:`hold_output_dir`).
        """
        if config is not None:
            self.training_config = coerce_config(TrainingConfig, config, "config")
            self.model, self.hf_trainer = None, None
        tc, dc = self.training_config, self.data_config
        from ..utils.run_lock import lock_only, remove_stale_temporaries

        out = Path(tc.output_dir)
        created = _is_main_process() and (not out.exists() or lock_only(out))
        self._loop_started = False
        try:
            if train_dataset is None:
                if not dc.train_file:
                    raise ConfigError("train(): no training data; pass train_dataset or set data.train_file")
                train_dataset = dc.train_file
            if eval_dataset is None and dc.eval_file:
                eval_dataset = dc.eval_file
            self.check_inputs(train_dataset, eval_dataset)
            with self.hold_output_dir():
                if _is_main_process():
                    for path in remove_stale_temporaries(out):
                        logger.warning("removed %s, left behind by a run that was killed while writing it", path)
                with self._disk_full_guard():  # whichever write hits a full disk: one line, what to do
                    return self._train_locked(train_dataset, eval_dataset)
        except BaseException:
            # nothing worth keeping was written yet: a run that fails before its first step leaves no
            # output directory behind (when it did not exist before)
            if created and not self._loop_started:
                shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            _stop_log_file()

    def hold_output_dir(self) -> Any:
        """A context holding ``output_dir``'s lock: a second live run on the folder stops at once
        (:class:`OutputDirBusy`, exit code 2). Re-entrant; the CLI holds it across train and save."""
        from ..utils.run_lock import run_lock

        _check_output_dir(self.training_config.output_dir)
        return run_lock(self.training_config.output_dir, enabled=_is_main_process())

    def _train_locked(self, train_dataset: Any, eval_dataset: Any) -> dict[str, Any]:
        from ..utils.run_identity import RunIdentity

        tc, dc = self.training_config, self.data_config
        self._identity = RunIdentity.from_resolved_config(self.resolved_config(), train_dataset)
        resume = self.resume_checkpoint(self._identity)
        # Data errors surface before the (possibly slow) model load; only the tokenizer is needed.
        self.setup_tokenizer()
        if eval_dataset is None and dc.eval_split_ratio > 0:
            pairs = [split_records(r, dc.eval_split_ratio, tc.seed) for r in self._record_sets(train_dataset, "train")]
            train_dataset = MultiSource(tr for tr, _ in pairs)
            eval_dataset = MultiSource(ev for _, ev in pairs)
        with _main_process_first():  # the main process tokenizes (and caches); the others wait, then reuse
            train_ds = self.prepare_dataset(train_dataset, "train")
            eval_ds = self.prepare_dataset(eval_dataset, "eval")
        if tc.plan_check and _is_main_process():  # planner (issue #18): warn before a model that will not fit
            from ..planner.check import check_before_load

            check_before_load(self, train_ds)
        self.setup()
        out = Path(tc.output_dir)
        if resume and not (tc.deepspeed or tc.fsdp):
            from ..utils.run_identity import check_checkpoint_fits

            check_checkpoint_fits(self.model, resume)  # lora.r 8 -> 4: exit 2 before anything is rewritten
        if _is_main_process():
            from ..utils.checkpoint import move_aside_previous_run
            from ..utils.run_identity import write_identity

            out.mkdir(parents=True, exist_ok=True)
            if not resume:  # a fresh run starts in an empty folder; a resumed one appends to its log
                moved = move_aside_previous_run(out)
                if moved is not None:
                    logger.warning("output_dir held the checkpoints and outputs of an earlier run; moved them to %s "
                                   "(a fresh run never mixes its files with another run's; delete that folder if "
                                   "you do not need it)", moved)
            else:
                _trim_log(out / "trainer_log.jsonl", _checkpoint_step(resume))
            _log_to_file(out / "train.log", append=bool(resume))
            write_identity(out, self._identity)
            self.write_run_config(out / "run_config.yaml")
        trainer = self.build_hf_trainer(train_ds, eval_ds)
        self._warn_about_schedule(len(train_ds))
        metrics: dict[str, Any] = {"method": self.method}
        if eval_ds is not None and tc.eval_on_start:
            before = trainer.evaluate()
            metrics["eval_loss_before"] = before["eval_loss"]
            metrics["perplexity_before"] = _perplexity(before["eval_loss"])
        from ..callbacks.safety import RunFinished

        interrupt = getattr(self, "_interrupt", None)
        start = time.perf_counter()
        self._loop_started = True
        try:
            with interrupt.catch_signals() if interrupt is not None else contextlib.nullcontext():
                result = trainer.train(resume_from_checkpoint=resume)
        except RunFinished:  # resumed from the final checkpoint: no step left, its weights are the result
            logger.warning("%s is the end of this run (step %d of %d): nothing left to train; the outputs are "
                           "written from it", resume, trainer.state.global_step, trainer.state.max_steps)
            result = None
        runtime = time.perf_counter() - start
        if interrupt is not None and interrupt.stopped_at is not None and \
                trainer.state.global_step < trainer.state.max_steps:
            step = trainer.state.global_step
            checkpoint = out / f"checkpoint-{step}"
            saved = f"checkpoint saved: {checkpoint}" if checkpoint.is_dir() else "no checkpoint could be saved"
            raise TrainingInterrupted(
                f"training {interrupt.verb} at step {step} of {trainer.state.max_steps}; {saved}. Resume with "
                f"training.resume_from_checkpoint=true (same output_dir {tc.output_dir})",
                step=step, checkpoint=str(checkpoint) if checkpoint.is_dir() else None, signum=interrupt.signum)
        tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        metrics.update(
            train_loss=result.training_loss if result else (sum(losses) / len(losses) if losses else None),
            train_runtime=round(runtime, 3), global_step=trainer.state.global_step,
            epoch=trainer.state.epoch, train_samples=len(train_ds), train_tokens=tokens,
            train_tokens_per_second=round(tokens / runtime, 2) if runtime > 0 and result else None,
            trainable_parameters=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
        )
        if eval_ds is not None:
            # reuse an evaluation the loop already ran at the final step instead of repeating it
            last = trainer.state.log_history[-2:-1] or [{}]
            ev = last[0] if last[0].get("step") == trainer.state.global_step and "eval_loss" in last[0] else None
            ev = ev or trainer.evaluate()
            metrics.update(eval_loss=ev["eval_loss"], perplexity=_perplexity(ev["eval_loss"]),
                           eval_samples=len(eval_ds))
        for callback in self.callbacks:  # what a callback reports about the run (early_stop: stopped_early)
            if callable(getattr(callback, "final_metrics", None)):
                metrics.update(callback.final_metrics())
        metrics["data"] = self.data_stats
        if _is_main_process():
            self.write_outputs(metrics)
        return metrics

    def _disk_full(self, message: str) -> "DiskFullError":
        from ..utils.run_identity import disk_full_details

        tc = self.training_config
        text, last = disk_full_details(message, tc.output_dir, getattr(self, "_identity", None),
                                       plain=not (tc.deepspeed or tc.fsdp), remove_incomplete=_is_main_process())
        return DiskFullError(text, checkpoint=last)

    @contextlib.contextmanager
    def _disk_full_guard(self) -> Any:
        """A write that fails for lack of space becomes one :class:`DiskFullError` line."""
        try:
            yield
        except DiskFullError:
            raise
        except BaseException as exc:
            from ..utils.io import disk_full_message

            message = disk_full_message(exc, self.training_config.output_dir)
            if message is None:
                raise
            raise self._disk_full(message) from exc

    def _before_checkpoint(self, path: str) -> None:
        """Called by the HF Trainer core before it writes ``checkpoint-N``: the run's identity goes in
        first, so that every checkpoint can be attributed to the config that wrote it."""
        if getattr(self, "_identity", None) is not None and _is_main_process():
            from ..utils.run_identity import write_identity

            os.makedirs(path, exist_ok=True)
            write_identity(path, self._identity)

    def resume_checkpoint(self, identity: Any = None) -> str | None:
        """The checkpoint directory ``training.resume_from_checkpoint`` names, checked before anything
        is loaded (the HF Trainer would only fail after data preparation and model loading).

        ``true`` takes the newest complete checkpoint written by a run of the same identity
        (:class:`RunIdentity`; None: the identity of this trainer's config and ``data.train_file``);
        checkpoints of another config are skipped with a warning, and when only such checkpoints
        exist it is an error. A path is resumed as asked, with a warning if another config wrote it.
        """
        tc = self.training_config
        value = tc.resume_from_checkpoint
        if not value:
            return None
        from ..utils.checkpoint import checkpoint_problems
        from ..utils.run_identity import RunIdentity, choose_checkpoint, warn_if_written_by_another

        if identity is None:
            identity = RunIdentity.from_resolved_config(self.resolved_config(), self.data_config.train_file)
        # DeepSpeed and FSDP save weights and optimizer state in their own sharded layouts
        plain = not (tc.deepspeed or tc.fsdp)
        if value is True:
            return str(choose_checkpoint(tc.output_dir, identity, plain=plain))
        if not os.path.isfile(os.path.join(value, "trainer_state.json")) and not any(
                os.path.isfile(os.path.join(value, n)) for n in ("optimizer.pt", "adapter_model.safetensors",
                                                                  "model.safetensors")):
            raise ConfigError(f"training.resume_from_checkpoint: {value!r} is not a checkpoint folder (one with "
                              "trainer_state.json, such as OUTPUT_DIR/checkpoint-500)")
        problems = checkpoint_problems(value, training_state=plain, weights=plain)
        if problems:
            raise ConfigError(f"training.resume_from_checkpoint: {value} is incomplete ({'; '.join(problems)}), "
                              "probably written by a run that was killed while saving; resume from an earlier "
                              "checkpoint, or use true to pick the newest complete one")
        warn_if_written_by_another(value, identity)
        return str(value)

    def check_inputs(self, train_data: Any = None, eval_data: Any = None) -> None:
        """Everything that can be checked before the data is read and the model is loaded: paths,
        devices and option combinations. A mistake then costs seconds, not a model load, and the
        run has written nothing yet."""
        from ..utils.model_files import check_model_dir, max_positions

        tc, dc = self.training_config, self.data_config
        _check_output_dir(tc.output_dir)
        check_model_dir(tc.model_name_or_path, allow_pickle_weights=tc.allow_pickle_weights)
        self._check_precision()
        limit, rope_scaled = max_positions(tc.model_name_or_path)
        if limit is not None and not rope_scaled and tc.max_seq_length > limit:
            what = "packed rows (data.packing)" if dc.packing else "samples"
            raise ConfigError(
                f"training.max_seq_length: {tc.max_seq_length} is more than the model's max_position_embeddings "
                f"({limit}, in {tc.model_name_or_path}/config.json); {what} that long would use positions the model "
                f"never learned; set max_seq_length to at most {limit}")
        from ..utils.input_checks import check_chat_template, check_data_argument, check_lora_rank

        for option, data in (("data.train_file", train_data), ("data.eval_file", eval_data)):
            check_data_argument("train(): " + ("train_dataset" if "train" in option else "eval_dataset"), data)
            for path in _local_paths(data):
                _check_data_file(option, path)
        template = dc.chat_template
        # a bare name may name one of the tokenizer's templates (checked when the tokenizer loads)
        looks_like_path = template and ("/" in template or os.sep in template or Path(template).suffix)
        if looks_like_path and "{" not in template and not os.path.isfile(template):
            raise ConfigError(f"data.chat_template: {template}: no such file; expected a Jinja template file or "
                              "the template text itself")
        check_chat_template(template)
        if self.lora_config is not None and self.uses_lora:
            check_lora_rank(self.lora_config.r, tc.model_name_or_path)
        if dc.tools_file and not os.path.isfile(dc.tools_file):
            raise ConfigError(f"data.tools_file: {dc.tools_file}: no such file; expected a JSON list of tool schemas")
        if tc.deepspeed:
            import importlib.util

            if isinstance(tc.deepspeed, str) and not os.path.isfile(tc.deepspeed):
                raise ConfigError(f"training.deepspeed: {tc.deepspeed}: no such file; expected a DeepSpeed JSON config")
            if importlib.util.find_spec("deepspeed") is None:
                raise ConfigError("training.deepspeed is set but the deepspeed package is not installed; "
                                  "pip install deepspeed (the [deepspeed] extra)")
        from transformers.training_args import OptimizerNames

        optimizers = [o.value for o in OptimizerNames]
        if tc.optim not in optimizers:
            import difflib

            close = difflib.get_close_matches(tc.optim, optimizers, n=1)
            raise ConfigError(f"training.optim: unknown optimizer {tc.optim!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else "")
                              + "; e.g. adamw_torch, adamw_torch_fused, adafactor, sgd, paged_adamw_8bit")
        # HF's own checks of option combinations, now rather than after the model load
        self.training_arguments(eval_data is not None or dc.eval_split_ratio > 0)

    def _check_precision(self) -> None:
        import torch

        tc = self.training_config
        if tc.fp16 and not torch.cuda.is_available():
            raise ConfigError("training.fp16: float16 mixed precision needs a CUDA GPU and none is available; "
                              "set fp16: false (or bf16: true with use_cpu: true on a CPU with bfloat16 support)")
        if not tc.bf16:
            return
        if torch.cuda.is_available() and not tc.use_cpu:
            if not torch.cuda.is_bf16_supported():
                raise ConfigError("training.bf16: this GPU has no bfloat16 support (it needs compute capability "
                                  "8.0 or newer, such as A100, H100, RTX 30xx); use fp16: true instead")
            return
        from transformers.utils import is_torch_bf16_available_on_device

        if not is_torch_bf16_available_on_device("cpu"):
            raise ConfigError("training.bf16: this CPU cannot compute in bfloat16 and no CUDA GPU is available; "
                              "set bf16: false")
        if not tc.use_cpu:
            raise ConfigError("training.bf16: no CUDA GPU is available; bfloat16 mixed precision on the CPU needs "
                              "training.use_cpu: true (or set bf16: false)")

    def evaluate(self, eval_dataset: Any) -> dict[str, Any]:
        """``eval_loss`` (mean over trained tokens) and ``perplexity`` on ``eval_dataset``."""
        eval_ds = self.prepare_dataset(eval_dataset, "eval")
        if self.hf_trainer is None:
            self.build_hf_trainer(None, eval_ds)
        ev = self.hf_trainer.evaluate(eval_dataset=eval_ds)
        return {"eval_loss": ev["eval_loss"], "perplexity": _perplexity(ev["eval_loss"]),
                "eval_samples": len(eval_ds), "eval_runtime": ev.get("eval_runtime")}

    def save_model(self, output_dir: str | os.PathLike) -> str:
        """Write the model (an adapter for PEFT methods) and tokenizer atomically, in safetensors.

        In a multi-process run only the main process writes. Under DeepSpeed ZeRO-3 or FSDP the
        weights are sharded across processes, so every process must call this: the engine
        gathers them and its main process writes (in place, not atomically).
        """
        self.setup()
        if not self.uses_lora:  # a whole model is written: it stops where its replies end
            self.set_generation_stops(self.model)
        if self.hf_trainer is not None and (self.hf_trainer.is_deepspeed_enabled or self.hf_trainer.is_fsdp_enabled):
            self.hf_trainer.save_model(str(output_dir))
            if _is_main_process():
                self.tokenizer.save_pretrained(str(output_dir))
            return str(output_dir)
        if not _is_main_process():
            return str(output_dir)
        with atomic_dir(output_dir) as tmp:
            self.write_weights(tmp)
            self.tokenizer.save_pretrained(tmp)
        return str(output_dir)

    def set_generation_stops(self, model: Any) -> None:
        """List the template's end-of-turn token(s) in ``model.generation_config.eos_token_id``, so
        that plain ``generate`` (and servers that read generation_config.json) stops at the end of a
        reply instead of running on to the base model's eos."""
        config = getattr(model, "generation_config", None)
        if config is None:
            return
        current = config.eos_token_id
        ids = [] if current is None else list(current) if isinstance(current, (list, tuple)) else [current]
        ids += [i for i in self.end_of_turn_token_ids() if i not in ids]
        config.eos_token_id = ids[0] if len(ids) == 1 else ids

    def write_weights(self, output_dir: str | os.PathLike) -> None:
        """What :meth:`save_model` writes besides the tokenizer (LoRA: the adapter)."""
        self.model.save_pretrained(str(output_dir), safe_serialization=True)

    def merge_and_save(self, output_dir: str | os.PathLike) -> str:
        """Save a standalone model with the adapter merged in (the full model for ``full``)."""
        return self.save_model(output_dir)

    def load_model(self, model_path: str | os.PathLike) -> None:
        """Load a model directory written by :meth:`save_model` or :meth:`merge_and_save`."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..utils.model_files import check_model_dir

        path = Path(model_path)
        if not path.is_dir():
            raise ConfigError(f"load_model: {path} is not a directory")
        check_model_dir(str(path), allow_pickle_weights=self.training_config.allow_pickle_weights, option="load_model")
        self.adopt_tokenizer(AutoTokenizer.from_pretrained(path, trust_remote_code=self.training_config.trust_remote_code),
                             saved=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, **self.model_load_kwargs())
        self.hf_trainer = None

    def generate(self, prompt: Any, *, max_new_tokens: int = 64, chat: bool = True, **kwargs: Any) -> str:
        """Greedy (by default) generation. A string prompt is wrapped as one user message (a list
        is taken as the messages) and rendered with the template training used; generation stops
        at its end-of-turn token. ``chat=False`` continues the raw text instead."""
        from ..chat import continue_ids, generate_reply

        self.setup()
        tok = self.tokenizer
        if chat:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            kwargs.setdefault("eos_token_id", self.end_of_turn_token_ids())
            return generate_reply(self.model, tok, messages, chat_template=self.render_options().chat_template.text,
                                  max_new_tokens=max_new_tokens, **kwargs)
        return continue_ids(self.model, tok, tok(prompt, return_tensors="pt")["input_ids"],
                            max_new_tokens=max_new_tokens, **kwargs)

    # ----------------------------------------------------------------------------------------
    # Outputs
    # ----------------------------------------------------------------------------------------
    def resolved_config(self) -> dict[str, Any]:
        from .._version import __version__

        out: dict[str, Any] = {"method": self.method, "version": __version__,
                               "training": self.training_config.to_dict(), "data": self.data_config.to_dict()}
        if self.lora_config is not None:
            out["lora"] = self.lora_config.to_dict()
        out.update(self.run_config_extra)
        return out

    def write_run_config(self, path: Path) -> None:
        import yaml

        atomic_write_text(path, yaml.safe_dump(self.resolved_config(), sort_keys=False))

    def write_outputs(self, metrics: dict[str, Any]) -> None:
        from ..callbacks.run_log import read_log
        from ..utils.plotting import plot_loss

        out = Path(self.training_config.output_dir)
        atomic_write_json(out / "metrics.json", metrics)
        plot_loss(read_log(out / "trainer_log.jsonl"), out / "loss.png",
                  title=f"{self.method}: {Path(self.training_config.model_name_or_path).name}")

    def _warn_about_schedule(self, n_samples: int) -> None:
        tc = self.training_config
        per_step = tc.per_device_train_batch_size * tc.gradient_accumulation_steps
        steps = tc.max_steps if tc.max_steps > 0 else math.ceil(math.ceil(n_samples / per_step) * tc.num_train_epochs)
        if isinstance(tc.warmup_steps, int) and tc.warmup_steps >= steps:
            logger.warning("warmup_steps=%d >= the %d optimizer steps of this run: the learning rate never "
                           "reaches its peak; use fewer steps or a ratio such as 0.03", tc.warmup_steps, steps)


_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def _local_paths(data: Any) -> list[str]:
    """The file paths among a train()/evaluate() data argument (records and datasets are skipped)."""
    if isinstance(data, (str, os.PathLike)):
        return [os.fspath(data)]
    from ..data.sources import is_source_list

    if is_source_list(data):
        return [os.fspath(d["path"] if isinstance(d, dict) else d) for d in data]
    return []


def _check_data_file(option: str, path: str) -> None:
    """A path with a data-file suffix must be a readable file (other strings may be hub ids or
    saved-dataset folders, which their loader checks)."""
    from ..utils.model_files import looks_like_local_path

    p = Path(path)
    if p.suffix not in _DATA_SUFFIXES:
        if not p.exists() and looks_like_local_path(path):
            raise ConfigError(f"{option}: {p}: no such file or directory")
        return
    if p.is_dir():
        raise ConfigError(f"{option}: {p} is a directory; expected a {', '.join(_DATA_SUFFIXES)} file "
                          "(or a folder written by Dataset.save_to_disk, without a file suffix)")
    if not p.exists():
        raise ConfigError(f"{option}: {p}: no such file")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{option}: {p}: not readable (permission denied)")


def _check_output_dir(path: str) -> None:
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"training.output_dir: {p} is an existing file; expected a directory (an existing one, "
                          "or a path to create)")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"training.output_dir: cannot create {p}: {parent} is a file, not a directory")
            target = p if p.exists() else parent
            if not os.access(target, os.W_OK | os.X_OK):
                raise ConfigError(f"training.output_dir: {target} is not writable")
            return


def _checkpoint_step(path: str) -> int | None:
    import json

    try:
        return int(json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _trim_log(path: Path, step: int | None) -> None:
    """A resumed run appends to trainer_log.jsonl; drop the entries the interrupted run logged after
    the checkpoint it resumes from, which the resumed run logs again."""
    import json

    if step is None or not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            entry_step = json.loads(line).get("step", 0)
        except ValueError:
            continue  # a line cut short by the kill
        if isinstance(entry_step, int) and entry_step <= step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")
