"""Configuration dataclasses: one place for every option, validated when constructed. The sections
every run has (training, lora, data) are here, the methods' own sections in :mod:`.config_methods`,
and :data:`SECTIONS` names them all.

Python users build these directly; the CLI maps YAML sections and ``key=value`` overrides onto
the same classes, so both meet the same rules and the same error messages.

Every field carries a ``help`` string in its metadata (``dataclasses.fields(cls)[i].metadata``)
and, where it makes sense, ``choices`` or numeric bounds that ``__post_init__`` enforces.
This module imports only the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .config_fields import _Config, _opt, coerce_config, config_help  # noqa: F401 (re-exported)
from .config_methods import (  # noqa: F401 (re-exported)
    AgentConfig,
    FreezeConfig,
    LoRAPlusConfig,
    PreferenceConfig,
    QuantizationConfig,
)
from .errors import ConfigError  # noqa: F401 (re-exported)

__all__ = [
    "SECTIONS",
    "coerce_config",
    "ConfigError",
    "AgentConfig",
    "PreferenceConfig",
    "TrainingConfig",
    "LoRAConfig",
    "DataConfig",
    "QuantizationConfig",
    "LoRAPlusConfig",
    "FreezeConfig",
    "config_help",
]


SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau",
              "cosine_with_min_lr", "warmup_stable_decay")


@dataclass
class TrainingConfig(_Config):
    """Hyper-parameters of a run. Field names follow SAGE's ``TrainingConfig`` and HF
    ``TrainingArguments``, so a config from either maps over unchanged."""

    model_name_or_path: str = _opt(help="Hub id (e.g. 'Qwen/Qwen2.5-7B-Instruct'), a local model directory, or a "
                                        "GGUF file (dequantized once into a trainable model; see docs/models.md).")
    output_dir: str = _opt(help="Where checkpoints, the adapter, metrics.json, trainer_log.jsonl and loss.png go.",
                           trajectory=False, hf=True)
    gguf_file: Union[str, None] = _opt(None, "A GGUF file inside the local folder model_name_or_path to train from (as "
                                          "transformers' gguf_file=); or set model_name_or_path to the .gguf file.")
    num_train_epochs: float = _opt(3, "Passes over the training data (ignored when max_steps > 0).", gt=0, hf=True)
    max_steps: int = _opt(-1, "Stop after this many optimizer steps; -1 means use num_train_epochs.", ge=-1, hf=True)
    per_device_train_batch_size: int = _opt(4, "Samples per device per forward pass during training.", ge=1, hf=True)
    per_device_eval_batch_size: int = _opt(4, "Samples per device per forward pass during evaluation.", ge=1,
                                           trajectory=False, hf=True)
    gradient_accumulation_steps: int = _opt(1, "Forward/backward passes per optimizer step.", ge=1, hf=True)
    learning_rate: float = _opt(5e-5, "Peak learning rate (LoRA typically 1e-4 to 2e-4, full fine-tuning 1e-5).", gt=0,
                                hf=True)
    weight_decay: float = _opt(0.01, "AdamW weight decay (not applied to biases and norms).", ge=0, hf=True)
    warmup_steps: Union[int, float] = _opt(
        0.03, "Linear warm-up: an integer number of steps, or a float in [0, 1) as a ratio of all steps. The default, "
              "3% of the run, lets the learning rate reach its value in a run of any length (SAGE's TrainingConfig "
              "declares 500 steps, which a config built from one passes on; HF's default is 0).", ge=0, hf=True)
    lr_scheduler_type: str = _opt("linear", "Learning-rate schedule after warm-up.", choices=SCHEDULERS, hf=True)
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm; 0 disables clipping.", ge=0, hf=True)
    optim: str = _opt("adamw_torch", "Optimizer name as understood by HF TrainingArguments.optim.", hf=True)
    fp16: bool = _opt(False, "Mixed precision with float16 (needs a CUDA GPU).", hf=True)
    bf16: bool = _opt(False, "Mixed precision with bfloat16 (CUDA GPU, or a CPU with bf16 support).", hf=True)
    model_dtype: str = _opt("auto", "dtype to load the base weights in: auto (the checkpoint's), float32, bfloat16, float16.",
                            choices=("auto", "float32", "bfloat16", "float16"))
    max_seq_length: int = _opt(1024, "Samples are truncated to this many tokens (see DataConfig.truncation).", ge=8)
    gradient_checkpointing: bool = _opt(False, "Recompute activations in backward to save memory (~20-30% slower).",
                                        trajectory=False, hf="activation_checkpointing")
    neftune_noise_alpha: Union[float, None] = _opt(
        None, "NEFTune: add uniform noise of scale alpha / sqrt(seq_len * hidden_size) to the input embeddings "
              "while training (5-15 is typical); null: off.", gt=0, hf=True)
    logging_steps: int = _opt(10, "Log loss, learning rate and grad norm every N optimizer steps.", ge=1,
                              trajectory=False, hf=True)
    eval_strategy: str = _opt("steps", "When to evaluate if an eval dataset is given: no, steps (every eval_steps), epoch.",
                              choices=("no", "steps", "epoch"), trajectory=False)
    eval_steps: int = _opt(500, "Evaluate every N optimizer steps (eval_strategy=steps).", ge=1, trajectory=False,
                           hf=True)
    eval_on_start: bool = _opt(False, "Evaluate once before training; reported as eval_loss_before in the metrics.",
                               trajectory=False)
    save_strategy: str = _opt("steps", "When to write checkpoints: no, steps, epoch.", choices=("no", "steps", "epoch"),
                              trajectory=False, hf=True)
    save_steps: int = _opt(500, "Write a checkpoint every N optimizer steps (save_strategy=steps).", ge=1,
                           trajectory=False, hf=True)
    save_total_limit: Union[int, None] = _opt(3, "Keep at most this many checkpoints (null keeps all).", ge=1,
                                              trajectory=False, hf=True)
    seed: int = _opt(42, "Random seed for model init, data order and dropout.", ge=0, hf=True)
    report_to: Union[str, list[str]] = _opt(
        help="Experiment trackers: tensorboard, wandb (through the tensorboard/wandb callbacks: TensorBoard events "
             "in $TENSORBOARD_LOGGING_DIR or OUTPUT_DIR/runs, an evaluation before training at step 0), or "
             "transformers' integrations (mlflow, comet_ml, ...); one name or a list. Empty or none: none.",
        default_factory=list, trajectory=False)
    run_name: Union[str, None] = _opt(None, "A name for the run in trackers.", trajectory=False, hf=True)
    deepspeed: Union[str, dict, None] = _opt(None, "Path to a DeepSpeed JSON config (or the dict); passed to the HF Trainer.",
                                             trajectory=False)
    fsdp: Union[str, list[str], None] = _opt(None, "FSDP options, e.g. 'full_shard auto_wrap'; passed to the HF Trainer.",
                                             trajectory=False)
    fsdp_config: Union[str, dict, None] = _opt(None, "FSDP config file or dict; passed to the HF Trainer.",
                                               trajectory=False)
    dataloader_num_workers: int = _opt(0, "Worker processes for the data loader.", ge=0, trajectory=False, hf=True)
    resume_from_checkpoint: Union[bool, str, None] = _opt(
        None, "true: resume from the latest checkpoint in output_dir; a path: resume from it.", trajectory=False)
    trust_remote_code: bool = _opt(False, "Allow model code from the hub repository to run. Off unless you trust it.",
                                   trajectory=False)
    allow_pickle_weights: bool = _opt(
        False, "Allow loading model or adapter weights stored as pickle (pytorch_model.bin, adapter_model.bin). "
               "Unpickling a file from an untrusted source can run arbitrary code; by default only safetensors "
               "weights are loaded. Set true only for checkpoints you trust.", trajectory=False)
    attn_implementation: Union[str, None] = _opt(None, "Attention kernel: sdpa, eager, flash_attention_2; null: the model's default.",
                                                 trajectory=False)
    use_cpu: bool = _opt(False, "Train on the CPU even if a GPU is present.", trajectory=False)
    disable_tqdm: bool = _opt(False, "Hide the progress bar.", trajectory=False, hf=True)
    selective_logits: bool = _opt(
        True, "Compute the LM head and the loss only at the positions whose label is trained (same loss and "
              "gradients, less time and memory); false: the model's own forward with labels (logits everywhere).",
                                  trajectory=False)
    chunked_lm_loss: Union[bool, None] = _opt(
        None, "Compute the LM head, the cross-entropy and their gradients at the trained positions in chunks of "
              "rows, so no (trained tokens x vocab) logits tensor or its gradient is ever held (same loss and "
              "gradients, same matmuls; one float32 buffer of at most 256 MiB of logits, e.g. 519 positions of a "
              "129k vocabulary, where the plain path holds three tensors of all of them). null or true: on; "
              "false: the plain path. Needs selective_logits and a plain "
              "Linear LM head (not LoRA-adapted or in modules_to_save); otherwise, and under FSDP/DeepSpeed, the "
              "plain path runs.", trajectory=False)
    malloc_tuning: Union[bool, None] = _opt(
        None, "Linux/glibc: true keeps memory freed between training steps in the process (mallopt M_MMAP_MAX=0 "
              "and a high trim threshold) instead of returning it to the OS and faulting it in again every step "
              "(speed); false returns every freed block over 4 MiB to the OS (a fixed mmap threshold; glibc's own "
              "rises to 32 MiB and then keeps smaller blocks) (memory); SAGE_FINETUNE_MALLOC_TUNING=0 leaves the "
              "allocator alone. null: on, except with "
              "gradient_checkpointing when a batch's widest activation (batch x max_seq_length x the MLP width) "
              "is over 4 MiB: there the freed memory the heap keeps outweighs what checkpointing saves (0.5B "
              "model, batch 8 x 1024: 10.2 vs 5.7 GB peak; a 128k-vocabulary layer at 2 x 1024: 2.05 vs 1.33 GB), "
              "at the price of faulting those blocks in again every step (the planner counts it).",
                                            trajectory=False)
    compile_layers: bool = _opt(
        False, "Compile each decoder layer in place with torch.compile (dynamic sequence length; the per-document "
               "attention stays eager), fusing norms, RoPE, activations and LoRA scaling. Same losses; costs "
               "compilation at the start (minutes on a few CPU cores), so it pays on long runs; needs a C++ "
               "compiler on the CPU. Measured in benchmarks/layer_fusion.py.", trajectory=False)
    fused_norms: bool = _opt(
        True, "On the CPU, run each RMSNorm as one autograd function with a hand-written backward (fewer passes "
              "over memory; the same forward bits, gradients equal to rounding). A norm is switched only when a "
              "probe reproduces its own forward and backward; others (e.g. Gemma's) keep theirs, and inputs of "
              "another dtype than the probed one run the module's own forward. Off with "
              "compile_layers (inductor fuses them) and when the weights are sharded.", trajectory=False)
    fused_lora: bool = _opt(
        True, "On the CPU, with lora_dropout > 0: run each LoRA branch (dropout, A, B, scaling) as one autograd "
              "function that keeps the adapted input once (shared by q/k/v and by gate/up) and the dropout mask "
              "as bool, and recomputes the dropped input in backward: 8 bytes per adapted input element become "
              "about 1 (SmolLM2-135M, all linears: ~1/3 less activation memory). The same dropout draws, so the "
              "same losses to rounding. A module is switched only when a probe reproduces PEFT's own forward and "
              "backward; DoRA, several adapters, autocast and eval keep PEFT's forward.", trajectory=False)
    save_merged: bool = _opt(
        False, "After training, also write OUTPUT_DIR/merged: the adapter merged into its base, a standalone "
               "model (for full and freeze: a copy of model/). `sage-finetune train --merge` sets it.",
        trajectory=False)
    plan_check: bool = _opt(
        True, "Before loading the model, predict the run's peak memory (sage-finetune plan) and warn, with what to "
              "change, when it exceeds the memory available; false: no check.", trajectory=False)

    def _validate(self) -> None:
        if not self.model_name_or_path:
            raise ConfigError("TrainingConfig.model_name_or_path: required (a hub id or a local model directory)")
        if not self.output_dir:
            raise ConfigError("TrainingConfig.output_dir: required (a directory for the run's outputs)")
        if self.fp16 and self.bf16:
            raise ConfigError("TrainingConfig: fp16 and bf16 are both true; choose one")
        if isinstance(self.warmup_steps, float) and self.warmup_steps >= 1:
            raise ConfigError("TrainingConfig.warmup_steps: a float is a ratio and must be < 1; "
                              f"use an integer for a step count, got {self.warmup_steps!r}")
        if isinstance(self.report_to, str):  # as in TrainingArguments: one name, "none" or "all"
            self.report_to = [] if self.report_to in ("", "none") else [self.report_to]
        bad = [r for r in self.report_to if r not in ("tensorboard", "wandb", "none", "all", "mlflow",
                                                      "comet_ml", "trackio", "swanlab", "clearml")]
        if bad:
            raise ConfigError(f"TrainingConfig.report_to: unknown tracker {bad[0]!r}; "
                              "expected tensorboard, wandb, mlflow, comet_ml, trackio, swanlab, clearml or none")


@dataclass
class LoRAConfig(_Config):
    """LoRA adapter settings (mapped onto ``peft.LoraConfig``)."""

    r: int = _opt(8, "Rank of the update matrices.", ge=1)
    lora_alpha: float = _opt(16, "Scaling numerator: the update is scaled by lora_alpha / r (or / sqrt(r) with rsLoRA).", gt=0)
    target_modules: Union[list[str], str, None] = _opt(
        None, "Module names to adapt, 'all-linear', or null for ['q_proj', 'v_proj'].")
    lora_dropout: float = _opt(0.05, "Dropout on the LoRA input.", ge=0, lt=1)
    bias: str = _opt("none", "Which biases to train: none, all, lora_only.", choices=("none", "all", "lora_only"))
    task_type: str = _opt("CAUSAL_LM", "PEFT task type; causal language modelling is what the trainers do.",
                          choices=("CAUSAL_LM",))
    use_rslora: bool = _opt(False, "Rank-stabilised LoRA: scale by lora_alpha / sqrt(r).")
    use_dora: bool = _opt(False, "DoRA: weight-decomposed LoRA (magnitude + direction).")
    init_lora_weights: Union[bool, str] = _opt(
        True, "Initialisation: true (B=0), gaussian, pissa, olora.")
    modules_to_save: Union[list[str], None] = _opt(None, "Extra modules trained in full and saved with the adapter (e.g. lm_head).")
    layers_to_transform: Union[list[int], None] = _opt(None, "Only adapt these layer indices (null: all layers).")

    def _validate(self) -> None:
        if isinstance(self.init_lora_weights, str) and self.init_lora_weights not in (
                "gaussian", "pissa", "olora") and not self.init_lora_weights.startswith("pissa_niter_"):
            raise ConfigError(f"LoRAConfig.init_lora_weights: {self.init_lora_weights!r} is not one of "
                              "true, false, 'gaussian', 'pissa', 'pissa_niter_N', 'olora'")
        if self.mutates_base:
            # PEFT converts such an adapter to plain LoRA on save (so that it loads onto the original base)
            # and its conversion keeps only the lora_A/lora_B matrices: anything else would be lost.
            extra = [name for name, on in (("modules_to_save", bool(self.modules_to_save)),
                                           ("use_dora", self.use_dora), ("bias", self.bias != "none")) if on]
            if extra:
                raise ConfigError(f"LoRAConfig: init_lora_weights={self.init_lora_weights!r} cannot be combined "
                                  f"with {extra[0]} (the adapter is saved converted to plain LoRA, which keeps "
                                  "only the lora_A/lora_B matrices)")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            # a single module name is allowed by PEFT as a regex; we keep that but make lists explicit
            self.target_modules = [self.target_modules]
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ConfigError("LoRAConfig.target_modules: empty list; give module names, 'all-linear' or null")

    @property
    def resolved_target_modules(self) -> Union[list[str], str]:
        return self.target_modules if self.target_modules is not None else ["q_proj", "v_proj"]

    @property
    def mutates_base(self) -> bool:
        """PiSSA and OLoRA move part of the base weights into the adapter at initialisation."""
        init = str(self.init_lora_weights)
        return init == "olora" or init.startswith("pissa")


DATA_FORMATS = ("auto", "alpaca", "messages", "sharegpt", "prompt_completion", "text")


@dataclass
class DataConfig(_Config):
    """Where the data comes from and how it becomes tokens with labels."""

    train_file: Union[str, list[Union[str, dict]], None] = _opt(
        None, "Training data: a .jsonl/.json/.parquet file, a saved dataset dir or a hub id; or a list of them "
              "(each may use its own format; they are concatenated after tokenization). A list entry may be a "
              "mapping {path: ..., weight: W} (the sources are mixed in proportion to their weights, the mixture "
              "as large as all sources together) or {path: ..., samples: N} (exactly N examples from that "
              "source, repeated when it has fewer), and may carry its own columns mapping.")
    eval_file: Union[str, list[str], None] = _opt(None, "Evaluation data (same forms as train_file).", trajectory=False)
    columns: Union[dict, None] = _opt(
        None, "Field names of records that use other names than their format expects, as {expected: actual}, "
              "e.g. {instruction: question, output: answer} (applied to every file; a train_file entry's own "
              "columns mapping wins).")
    loader: str = _opt("auto", "Loader name (jsonl, instruction, parquet, huggingface, ...); auto: by file extension.",
                       trajectory=False)
    format: str = _opt("auto", "Record format; auto detects it per record.", choices=DATA_FORMATS)
    split: str = _opt("train", "Split to read for hub or saved datasets.")
    eval_split_ratio: float = _opt(0.0, "Hold out this fraction of the training data for evaluation when eval_file is empty.",
                                   ge=0, lt=1)
    max_samples: Union[int, None] = _opt(None, "Use at most this many training records (for quick runs).", ge=1)
    system_prompt: Union[str, None] = _opt(None, "System message added to conversations that have none.")
    chat_template: Union[str, None] = _opt(
        None, "The chat template to train with: a Jinja file, the Jinja text itself, or the name of one of the "
              "tokenizer's named templates; null: the tokenizer's (its 'default' one if it has several), or the "
              "built-in fallback when it has none. Whatever is used is saved as the chat template of every "
              "tokenizer the run writes.")
    train_on_prompt: bool = _opt(False, "Train on every token, prompts included (default: assistant replies only).")
    mask_history: bool = _opt(False, "Train only on the last assistant reply of each conversation (a conversation "
                                     "whose last reply renders empty, e.g. tool calls the template ignores, is dropped).")
    reasoning: str = _opt("train", "An assistant message's reasoning_content (its thinking; also read from 'reasoning' "
                                   "or 'thinking'): train (the chat template renders it, e.g. Qwen3's <think> block, "
                                   "and it is trained with the reply), mask (rendered as context, not trained), drop "
                                   "(removed before rendering). With train or mask, a reply whose template does not "
                                   "render its reasoning is an error, not a silent loss.",
                          choices=("train", "mask", "drop"))
    control_tokens_in_content: str = _opt(
        "text", "The text of a control token (<|im_end|>, </s>, ...) written inside a message: text (tokenized as "
                "ordinary text, so only the chat template's own control tokens are control tokens), control (it "
                "becomes the control token, as plain tokenization does; a reply containing it teaches the model to "
                "stop there), refuse (the record is an error; skipped with on_error: skip). Such records are counted "
                "and named by `sage-finetune data inspect`.", choices=("text", "control", "refuse"))
    agent_format: str = _opt("auto", "How trajectories render: react (Thought/Action/Action Input text), tool_calls "
                                     "(OpenAI tool calls through the chat template), auto (tool_calls when the "
                                     "template supports them).", choices=("auto", "react", "tool_calls"))
    tools_file: Union[str, None] = _opt(None, "JSON file with the tool schemas (OpenAI function format) for "
                                              "every record (trajectory, messages, preference) that carries no "
                                              "'tools' of its own; the chat template renders them.")
    packing: bool = _opt(False, "Pack several samples into rows of training.max_seq_length tokens (best-fit "
                                "decreasing, per-document position_ids, no attention across samples).")
    group_by_length: Union[bool, None] = _opt(
        None, "Unpacked runs: batch samples of similar length together to cut padding (the HF Trainer's length-grouped "
              "sampler). null: on when the batches are padded (padding_free off, no packing), off otherwise.")
    padding_free: Union[bool, None] = _opt(
        None, "Concatenate the samples of each batch into one row with per-document position_ids instead of "
              "padding them: no padding is computed and each sample attends only to itself. null: on when "
              "training on the CPU or with a flash_attention_* kernel, off otherwise (padded batches).")
    cache: bool = _opt(True, "Cache tokenized data from files (keyed by file contents, tokenizer, template and every "
                             "rendering option) and reuse it when the same data is prepared again.", trajectory=False)
    cache_dir: Union[str, None] = _opt(None, "Where the tokenized-data cache lives; null: $SAGE_FINETUNE_CACHE or "
                                              "~/.cache/isage-finetune.", trajectory=False)
    on_error: str = _opt("raise", "Bad records: raise (stop with the file:line) or skip (drop and count them).",
                         choices=("raise", "skip"))
    formatting_func: Union[str, None] = _opt(
        None, "A function that turns each record into text, a list of messages or a record of a known format, "
              "given as FILE.py:FUNCTION (e.g. my_format.py:to_messages). The file is imported from that path "
              "(relative to the current directory, else to the config file's directory) and its code runs: "
              "name only files you trust. Installed modules are not imported by name.")

    def _validate(self) -> None:
        from .data.sources import check_columns, check_source_entries

        check_source_entries(self.train_file, "data.train_file")
        check_columns(self.columns, "data.columns")
        if self.train_on_prompt and self.mask_history:
            raise ConfigError("DataConfig: train_on_prompt and mask_history contradict each other; choose one")
        if self.packing and self.group_by_length is True:
            raise ConfigError("DataConfig: packing and group_by_length both set; packed rows are already "
                              "filled to length, choose one")


# The sections of a run config (YAML) and their classes: the one table the CLI, ``sage-finetune
# options``, run_config.yaml and the trainers' own sections (``BaseTrainer.extra_section``) read.
SECTIONS: dict[str, type] = {"training": TrainingConfig, "lora": LoRAConfig, "data": DataConfig,
                             "quantization": QuantizationConfig, "lora_plus": LoRAPlusConfig, "freeze": FreezeConfig,
                             "agent": AgentConfig, "preference": PreferenceConfig}
