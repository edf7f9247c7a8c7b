"""The one mapping from our :class:`TrainingConfig` to ``transformers.TrainingArguments``, with the
checks that belong to it (precision on this machine, the optimizer name, HF's own combination
checks). Everything that builds TrainingArguments (the run, LoRA+'s optimizer, the preflight checks)
calls :func:`training_arguments`."""

from __future__ import annotations

import logging
from typing import Any

from ..config import TrainingConfig
from ..errors import ConfigError
from ..utils.processes import is_main_process, run_device, world_size

__all__ = ["training_arguments", "hf_options", "check_precision", "check_optimizer_name", "use_cpu", "optimizer_class_and_kwargs"]

logger = logging.getLogger(__name__)


def check_precision(tc: TrainingConfig) -> None:
    """fp16 needs a CUDA GPU; bf16 needs a GPU with bfloat16 or, on the CPU, ``use_cpu`` and a CPU
    with bfloat16 instructions (:func:`..models.precision.cpu_native_bf16`)."""
    import torch

    if tc.fp16 and not torch.cuda.is_available():
        raise ConfigError("training.fp16: float16 mixed precision needs a CUDA GPU and none is available; "
                          "set fp16: false (or bf16: true with use_cpu: true on a CPU with bfloat16 support)")
    if not tc.bf16:
        return
    if run_device(tc) == "cuda":
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
    from ..models.precision import cpu_native_bf16

    native, evidence = cpu_native_bf16()
    if native is False:
        raise ConfigError("training.bf16: this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16, or bf16 "
                          f"on Arm; {evidence}), so bfloat16 would be emulated and run slower than float32; set "
                          "bf16: false")


def check_optimizer_name(tc: TrainingConfig) -> None:
    from transformers.training_args import OptimizerNames

    from ..errors import did_you_mean

    optimizers = [o.value for o in OptimizerNames]
    if tc.optim not in optimizers:
        raise ConfigError(f"training.optim: unknown optimizer {tc.optim!r}{did_you_mean(tc.optim, optimizers)}; "
                          "e.g. adamw_torch, adamw_torch_fused, adafactor, sgd, paged_adamw_8bit")


def use_cpu(tc: TrainingConfig) -> bool:
    """``training.use_cpu``, or on when several processes were launched (torchrun) and there is no
    GPU: without it the HF Trainer does not set up DDP on the CPU and every process would train on
    all the data, as N separate jobs."""
    if tc.use_cpu:
        return True
    if world_size() > 1 and run_device(tc) == "cpu":
        if is_main_process():
            logger.info("%s processes and no GPU: training as one DDP job on the CPU (gloo), as with "
                        "training.use_cpu: true", world_size())
        return True
    return False


def hf_options(tc: TrainingConfig) -> dict[str, Any]:
    """The options marked ``hf`` in their metadata, under their TrainingArguments names."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(tc):
        name = f.metadata.get("hf")
        if name:
            out[f.name if name is True else name] = getattr(tc, f.name)
    return out


def training_arguments(tc: TrainingConfig, *, has_eval: bool, group_by_length: bool = False) -> Any:
    """``TrainingArguments`` for a run of ``tc`` (``has_eval``: the run has evaluation data)."""
    import torch
    from transformers import TrainingArguments

    from ..callbacks.reporting import hf_report_to  # tensorboard and wandb: our callbacks (reporting.py)

    check_precision(tc)
    kwargs = hf_options(tc)  # the options passed as they are (their metadata says so, config.py)
    kwargs.update(  # and what a run derives
        logging_first_step=True, eval_strategy=tc.eval_strategy if has_eval else "no", data_seed=tc.seed,
        report_to=hf_report_to(tc.report_to) or "none", dataloader_pin_memory=torch.cuda.is_available(),
        activation_checkpointing_kwargs={"use_reentrant": False} if tc.gradient_checkpointing else None,
        use_cpu=use_cpu(tc), remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding", label_names=["labels"],
        train_sampling_strategy="group_by_length" if group_by_length else "random",
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


def optimizer_class_and_kwargs(tc: TrainingConfig, model: Any) -> tuple[type, dict[str, Any]]:
    """The optimizer class ``training.optim`` names and its arguments (betas, eps, lr), as the HF
    Trainer would build it, for trainers that build their own parameter groups (LoRA+)."""
    from transformers import Trainer

    return Trainer.get_optimizer_cls_and_kwargs(training_arguments(tc, has_eval=False), model)
