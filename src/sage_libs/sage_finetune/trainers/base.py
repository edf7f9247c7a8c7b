"""The one trainer base: the hooks a method changes, and the FineTuner API around them.

    load_tokenizer()      -> tokenizer        (rarely overridden)
    load_base_model()     -> model            (QLoRA: quantized loading)
    apply_adapter(model)  -> model            (LoRA/DoRA/...: PEFT; full: unfreeze)
    create_optimizer(m)   -> optimizer|None   (LoRA+: per-matrix learning rates)

A run (:meth:`BaseTrainer.train`) is :mod:`..run.recipe`: preflight checks -> output folder lock ->
resume decision -> tokenizer and data (:mod:`..data.datasets`) -> model -> fast paths (:mod:`..perf`)
-> the HF Trainer (:mod:`.hf_core`, arguments from :mod:`.hf_args`) -> outputs (:mod:`..run.files`)
-> the final weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..run import files as run_files
from ..run.identity import write_checkpoint_identity
from ..config import SECTIONS, DataConfig, LoRAConfig, TrainingConfig, coerce_config
from ..errors import (  # noqa: F401 (re-exported)
    ConfigError,
    DiskFullError,
    NonFiniteLossError,
    TrainingError,
    TrainingInterrupted,
    did_you_mean,
)
from ..interface import FineTuner
from .preflight import check_run_inputs

__all__ = ["BaseTrainer", "TrainingError", "NonFiniteLossError", "TrainingInterrupted", "DiskFullError"]

logger = logging.getLogger(__name__)

_BASE_ARGUMENTS = ("training_config", "lora_config", "data_config", "callbacks", "formatting_func")


class BaseTrainer(FineTuner):
    """Supervised fine-tuning on the HF Trainer. Subclasses set :attr:`method` and override hooks.

    Args:
        training_config: :class:`TrainingConfig` (or a dict / SAGE TrainingConfig).
        lora_config: :class:`LoRAConfig` for adapter methods.
        data_config: :class:`DataConfig`: formats, masking, chat template.
        callbacks: :class:`TrainingCallback` objects (or HF ``TrainerCallback`` objects).
        formatting_func: record -> text, list of messages, or a record in a known format.
        <section>_config: the method's own config section, when it has one (:attr:`extra_section`).
    """

    method = "base"
    uses_lora = False
    #: The method's own config section besides training/lora/data (a key of ``config.SECTIONS``):
    #: passed as ``<section>_config=`` (a config, a dict or SAGE's), read from the YAML ``<section>:``,
    #: kept as ``self.<section>_config`` and written into run_config.yaml.
    extra_section: ClassVar[str | None] = None

    def __init__(self, training_config: Any = None, lora_config: Any = None, data_config: Any = None,
                 callbacks: list[Any] | None = None, formatting_func: Callable | None = None,
                 **section_config: Any) -> None:
        if training_config is None:
            raise ConfigError(f"create_trainer({self.method!r}): training_config is required "
                              "(TrainingConfig(model_name_or_path=..., output_dir=...))")
        self.training_config: TrainingConfig = coerce_config(TrainingConfig, training_config, "training_config")
        self.lora_config: LoRAConfig | None = coerce_config(LoRAConfig, lora_config, "lora_config")
        if self.uses_lora and self.lora_config is None:
            self.lora_config = LoRAConfig()
        self.data_config: DataConfig = coerce_config(DataConfig, data_config, "data_config") or DataConfig()
        self._take_section_config(section_config)
        self.callbacks = list(callbacks or [])
        self.formatting_func = formatting_func
        if self.data_config.formatting_func:
            # a FILE.py:FUNCTION named in the config; imported now, so a wrong name fails before any work
            if formatting_func is not None:
                raise ConfigError("data.formatting_func is set and a formatting_func argument was passed too; "
                                  "use one of them")
            from ..utils.user_code import load_function

            self.formatting_func = load_function(self.data_config.formatting_func, "data.formatting_func")
        self.model: Any = None
        self.tokenizer: Any = None
        self.hf_trainer: Any = None
        self.fast_paths: Any = None  # installed (install_fast_paths)
        self._fast_path_plan: Any = None  # decided (plan_fast_paths)
        self.data_stats: dict[str, Any] = {}
        # more top-level run_config.yaml entries, set by whoever wraps this trainer (the agent
        # trainer, the CLI's callbacks section) so that the file can reproduce the run
        self.run_config_extra: dict[str, Any] = {}

    @classmethod
    def section_option(cls) -> str | None:
        """The keyword argument of :attr:`extra_section` (``freeze`` -> ``freeze_config``)."""
        return f"{cls.extra_section}_config" if cls.extra_section else None

    def _take_section_config(self, given: dict[str, Any]) -> None:
        option = self.section_option()
        unknown = [k for k in given if k != option]
        if unknown:
            known = [*_BASE_ARGUMENTS, *([option] if option else [])]
            raise ConfigError(f"create_trainer({self.method!r}): unknown option {unknown[0]!r}"
                              f"{did_you_mean(unknown[0], known)}; known: {', '.join(known)}")
        if option:
            cls = SECTIONS[self.extra_section]
            setattr(self, option, coerce_config(cls, given.get(option), option) or cls())

    # -- Hooks ---------------------------------------------------------------------------------------
    def load_tokenizer(self) -> Any:
        from ..models.loading import load_tokenizer

        return load_tokenizer(self.training_config)

    @property
    def frozen_base(self) -> bool:
        """Every base weight stays frozen (an adapter trains): under bf16 they are then held in
        bfloat16 (:func:`..models.precision.base_weights_dtype`). The base trains all of them."""
        return False

    def model_load_kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` keyword arguments (QLoRA adds its quantization)."""
        from ..models.loading import model_load_kwargs

        return model_load_kwargs(self.training_config, frozen_base=self.frozen_base)

    def load_base_model(self) -> Any:
        from ..models.loading import load_causal_lm

        return load_causal_lm(self.training_config.model_name_or_path, self.model_load_kwargs(),
                              allow_pickle_weights=self.training_config.allow_pickle_weights)

    def apply_adapter(self, model: Any) -> Any:
        """Decide which parameters train. The base trains all of them."""
        from ..methods.optim import unfreeze_all

        return unfreeze_all(model)

    def create_optimizer(self, model: Any) -> Any:
        """Return an optimizer, or None to let the HF Trainer build AdamW from the config."""
        return None

    # -- Model life cycle ----------------------------------------------------------------------------
    def setup_tokenizer(self) -> None:
        """Load the tokenizer and decide how conversations render (:meth:`render_options`). The
        training template becomes the tokenizer's own, so everything that saves it carries it."""
        if self.tokenizer is None:
            self.adopt_tokenizer(self.load_tokenizer())

    def adopt_tokenizer(self, tokenizer: Any, *, saved: bool = False) -> None:
        """Use ``tokenizer`` from now on: resolve the rendering against it and install the template
        it renders with. ``saved``: read back from a saved run (:meth:`load_model`), whose own
        template is the one it trained with and wins over ``data.chat_template``."""
        from ..data.rendering import render_options
        from ..data.templates import install_chat_template

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
        from ..data.templates import end_of_turn_token_ids

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

    # -- Data ----------------------------------------------------------------------------------------
    def _record_sets(self, data: Any, split: str) -> list[Any]:
        """A path, a list of paths, or in-memory data -> one or more record collections."""
        from ..data.sources import record_sets

        return record_sets(data, self.data_config, split)

    def prepare_dataset(self, data: Any, split: str = "train") -> Any:
        """Records, a path (or list of paths), or already tokenized data -> a tokenized
        ``datasets.Dataset`` with ``input_ids``, ``labels`` and ``length``."""
        from ..data.datasets import prepare_split

        if data is None:
            return None
        options = self.render_options()
        dataset, stats = prepare_split(self._record_sets(data, split), split, tokenizer=self.tokenizer,
                                       render_options=options, data_config=self.data_config,
                                       seed=self.training_config.seed,
                                       max_seq_length=self.training_config.max_seq_length)
        if stats:
            self.data_stats[split] = stats
        return dataset

    def dataset_tools(self) -> list[dict[str, Any]] | None:
        """The dataset-wide tool schemas of ``data.tools_file``."""
        return self.render_options().tools

    def plan_fast_paths(self) -> Any:
        """This run's fast paths, decided once the model is loaded (:mod:`..perf.decide`: pure, read
        by the collator and the sampler; :meth:`install_fast_paths` applies them)."""
        from ..perf import plan_fast_paths

        if self.fast_paths is not None:
            return self.fast_paths
        if self._fast_path_plan is None:
            tc = self.training_config
            self._fast_path_plan = plan_fast_paths(self.model, tc, self.data_config,
                                                   sharded=bool(tc.deepspeed or tc.fsdp))
        return self._fast_path_plan

    def install_fast_paths(self) -> Any:
        """Apply the decided fast paths to the model and the process (:mod:`..perf.install`), once:
        :meth:`build_hf_trainer` calls it before anything reads them."""
        from ..perf import install_fast_paths

        if self.fast_paths is None:
            self.fast_paths = install_fast_paths(self.model, self.plan_fast_paths())
        return self.fast_paths

    def data_collator(self) -> Any:
        from ..data.collate import PackedCollator, PaddingCollator

        flat = self.plan_fast_paths().padding_free  # data.padding_free
        if self.data_config.packing or flat:
            # also right for the unpacked eval rows: each is one document plus a padding tail
            return PackedCollator(pad_token_id=self.tokenizer.pad_token_id, flatten=flat)
        return PaddingCollator(pad_token_id=self.tokenizer.pad_token_id)

    # -- The HF Trainer ------------------------------------------------------------------------------
    def training_arguments(self, has_eval: bool) -> Any:
        from .hf_args import training_arguments

        return training_arguments(self.training_config, has_eval=has_eval,
                                  group_by_length=self._group_by_length())

    def _group_by_length(self) -> bool:
        """The run's sampler decision (perf.resolve_group_by_length, through the fast paths once the
        model is loaded; before that, as for the preflight checks, only an explicit true counts)."""
        if self.model is None:
            return self.data_config.group_by_length is True
        return self.plan_fast_paths().group_by_length

    def _hf_callbacks(self, step_losses: Any) -> list[Any]:
        """The HF callbacks of a run (:func:`..callbacks.wiring.run_callbacks`); QLoRA adds its guard."""
        from ..callbacks.wiring import run_callbacks

        callbacks, self._interrupt = run_callbacks(self, step_losses, lambda: self.hf_trainer.accumulated_loss())
        return callbacks

    def hf_trainer_core(self) -> tuple[type, dict[str, Any]]:
        """The HF Trainer subclass :meth:`build_hf_trainer` builds, and extra keyword arguments for it
        (the preference trainer swaps in its loss here)."""
        from .hf_core import SFTTrainerCore

        return SFTTrainerCore, {}

    def build_hf_trainer(self, train_dataset: Any = None, eval_dataset: Any = None) -> Any:
        from .hf_core import StepLosses

        self.setup()
        fast_paths = self.install_fast_paths()  # decided, then installed once, before anything reads them
        optimizer = self.create_optimizer(self.model)
        core, extra = self.hf_trainer_core()
        step_losses = StepLosses() if self.callbacks else None  # a .item() per micro-batch: only when someone listens
        self.hf_trainer = core(
            model=self.model, args=self.training_arguments(eval_dataset is not None),
            train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=self.data_collator(),
            processing_class=self.tokenizer, callbacks=self._hf_callbacks(step_losses),
            optimizers=(optimizer, None), fast_paths=fast_paths, step_losses=step_losses,
            before_checkpoint=lambda path: write_checkpoint_identity(self, path), **extra)
        # our console output instead of HF's log dicts and nested bars (see callbacks/console.py)
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from ..callbacks.console import ConsoleCallback

        self.hf_trainer.remove_callback(ProgressCallback)
        self.hf_trainer.remove_callback(PrinterCallback)
        self.hf_trainer.add_callback(ConsoleCallback(bar=not self.training_config.disable_tqdm))
        return self.hf_trainer

    # -- Public API ----------------------------------------------------------------------------------
    def train(self, train_dataset: Any = None, eval_dataset: Any = None, config: Any = None) -> dict[str, Any]:
        """Train on ``train_dataset`` (records, a path, or tokenized data); returns metrics.

        ``config`` optionally replaces the training config for this call (SAGE's signature).
        The run holds its output folder's lock throughout (:func:`..run.lock.hold_output_dir`).
        """
        if config is not None:
            self.training_config = coerce_config(TrainingConfig, config, "config")
            self.model, self.hf_trainer, self.fast_paths, self._fast_path_plan = None, None, None, None
        from ..run.recipe import run_training

        return run_training(self, train_dataset, eval_dataset)

    def check_inputs(self, train_data: Any = None, eval_data: Any = None) -> None:
        """Everything that can be checked before the data is read and the model is loaded
        (:func:`.preflight.check_run_inputs`)."""
        check_run_inputs(self, train_data, eval_data)

    def evaluate(self, eval_dataset: Any) -> dict[str, Any]:
        """``eval_loss`` and ``perplexity`` on ``eval_dataset``. As in the HF Trainer, ``eval_loss``
        is the mean over samples of each evaluation batch's loss (its mean over the batch's trained
        tokens), so it moves slightly with ``per_device_eval_batch_size``; the batches follow the
        dataset's order whatever the training sampler (``SFTTrainerCore._get_eval_sampler``)."""
        from ..callbacks.console import label_standalone_evaluation

        eval_ds = self.prepare_dataset(eval_dataset, "eval")
        if self.hf_trainer is None:
            self.build_hf_trainer(None, eval_ds)
        label_standalone_evaluation(self.hf_trainer)
        ev = self.hf_trainer.evaluate(eval_dataset=eval_ds)
        return {"eval_loss": ev["eval_loss"], "perplexity": run_files.perplexity(ev["eval_loss"]),
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
        return run_files.save_weights(output_dir, self.write_weights, self.tokenizer, self.hf_trainer)

    def set_generation_stops(self, model: Any) -> None:
        """The template's end-of-turn token(s) into ``model.generation_config.eos_token_id``
        (:func:`..serving.add_generation_stops`)."""
        from ..serving import add_generation_stops

        add_generation_stops(model, self.end_of_turn_token_ids())

    def write_weights(self, output_dir: str | os.PathLike) -> None:
        """What :meth:`save_model` writes besides the tokenizer (LoRA: the adapter)."""
        self.model.save_pretrained(str(output_dir), safe_serialization=True)

    def merge_and_save(self, output_dir: str | os.PathLike) -> str:
        """Save a standalone model with the adapter merged in (the full model for ``full``)."""
        return self.save_model(output_dir)

    def load_model(self, model_path: str | os.PathLike) -> None:
        """Load a model directory written by :meth:`save_model` or :meth:`merge_and_save`."""
        from ..models.loading import load_saved_model

        tokenizer, self.model = load_saved_model(model_path, self.training_config, self.model_load_kwargs())
        self.adopt_tokenizer(tokenizer, saved=True)
        self.hf_trainer = None

    def generate(self, prompt: Any, *, max_new_tokens: int = 64, chat: bool = True, **kwargs: Any) -> str:
        """Greedy (by default) generation. A string prompt is wrapped as one user message (a list
        is taken as the messages) and rendered with the template training used; generation stops
        at its end-of-turn token. ``chat=False`` continues the raw text instead."""
        from ..serving import continue_ids, generate_reply

        self.setup()
        tok = self.tokenizer
        if chat:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            kwargs.setdefault("eos_token_id", self.end_of_turn_token_ids())
            return generate_reply(self.model, tok, messages, chat_template=self.render_options().chat_template.text,
                                  max_new_tokens=max_new_tokens, **kwargs)
        return continue_ids(self.model, tok, tok(prompt, return_tensors="pt")["input_ids"],
                            max_new_tokens=max_new_tokens, **kwargs)

    # -- Outputs -------------------------------------------------------------------------------------
    def resolved_config(self) -> dict[str, Any]:
        from .._version import __version__

        out: dict[str, Any] = {"method": self.method, "version": __version__,
                               "training": self.training_config.to_dict(), "data": self.data_config.to_dict()}
        if self.lora_config is not None:
            out["lora"] = self.lora_config.to_dict()
        if self.extra_section:
            out[self.extra_section] = getattr(self, self.section_option()).to_dict()
        out.update(self.run_config_extra)
        return out

    def write_outputs(self, metrics: dict[str, Any]) -> None:
        """metrics.json and loss.png."""
        tc = self.training_config
        run_files.write_outputs(tc.output_dir, metrics, title=f"{self.method}: {Path(tc.model_name_or_path).name}")
