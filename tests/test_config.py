import pytest

from sage_libs.sage_finetune import ConfigError, DataConfig, LoRAConfig, TrainingConfig


def tc(**kw):
    return TrainingConfig(model_name_or_path="m", output_dir="o", **kw)


def test_defaults_follow_sage_but_the_warm_up_fits_a_short_run():
    c = tc()
    # SAGE declares warmup_steps=500: in a run under 500 steps the learning rate would never reach its value
    assert (c.num_train_epochs, c.per_device_train_batch_size, c.learning_rate, c.warmup_steps) == (3, 4, 5e-5, 0.03)
    assert (c.logging_steps, c.eval_steps, c.save_steps, c.save_total_limit, c.seed) == (10, 500, 500, 3, 42)
    assert LoRAConfig().resolved_target_modules == ["q_proj", "v_proj"]
    assert LoRAConfig().to_dict()["lora_alpha"] == 16


def test_design_fields_accepted():
    c = tc(gradient_accumulation_steps=16, warmup_steps=100, lr_scheduler_type="cosine", fp16=True,
           deepspeed="ds.json", fsdp="full_shard auto_wrap", max_seq_length=2048, gradient_checkpointing=True)
    assert c.to_dict()["fsdp"] == "full_shard auto_wrap"


@pytest.mark.parametrize("kwargs, message", [
    ({"learning_rate": -1.0}, "TrainingConfig.learning_rate: must be > 0, got -1.0"),
    ({"learning_rate": "fast"}, "TrainingConfig.learning_rate: expected a number, got 'fast' (str)"),
    ({"per_device_train_batch_size": 0}, "TrainingConfig.per_device_train_batch_size: must be >= 1, got 0"),
    ({"per_device_train_batch_size": 2.5}, "TrainingConfig.per_device_train_batch_size: expected an integer"),
    ({"fp16": "yes"}, "TrainingConfig.fp16: expected true/false, got 'yes'"),
    ({"lr_scheduler_type": "cosin"}, "'cosin' is not one of"),
    ({"fp16": True, "bf16": True}, "fp16 and bf16 are both true"),
    ({"warmup_steps": 1.5}, "a float is a ratio and must be < 1"),
    ({"report_to": ["tensorbord"]}, "unknown tracker 'tensorbord'"),
])
def test_training_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        tc(**kwargs)
    assert message in str(err.value)


def test_choice_error_suggests():
    with pytest.raises(ConfigError, match=r"did you mean 'cosine'\?"):
        tc(lr_scheduler_type="cosin")


def test_numeric_strings_from_yaml_become_floats():
    assert tc(learning_rate="1e-4").learning_rate == pytest.approx(1e-4)


def test_lora_config_errors():
    with pytest.raises(ConfigError, match=r"LoRAConfig.r: must be >= 1, got 0"):
        LoRAConfig(r=0)
    with pytest.raises(ConfigError, match=r"LoRAConfig.lora_dropout: must be < 1"):
        LoRAConfig(lora_dropout=1.0)
    with pytest.raises(ConfigError, match=r"LoRAConfig.bias: 'some' is not one of"):
        LoRAConfig(bias="some")
    with pytest.raises(ConfigError, match=r"init_lora_weights: 'pisa'"):
        LoRAConfig(init_lora_weights="pisa")
    assert LoRAConfig(target_modules="all-linear").resolved_target_modules == "all-linear"
    assert LoRAConfig(target_modules=("q_proj",)).target_modules == ["q_proj"]


def test_from_dict_unknown_key_did_you_mean():
    with pytest.raises(ConfigError) as err:
        TrainingConfig.from_dict({"model_name_or_path": "m", "output_dir": "o", "learning_rat": 1e-4})
    assert "unknown option 'learning_rat'" in str(err.value)
    assert "did you mean 'learning_rate'?" in str(err.value)


def test_from_dict_missing_required():
    with pytest.raises(ConfigError, match="missing required option 'output_dir'"):
        TrainingConfig.from_dict({"model_name_or_path": "m"})


def test_data_config_contradiction():
    with pytest.raises(ConfigError, match="train_on_prompt and mask_history"):
        DataConfig(train_on_prompt=True, mask_history=True)


def test_every_field_has_help():
    import dataclasses

    for cls in (TrainingConfig, LoRAConfig, DataConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_the_run_identity_is_derived_from_each_options_metadata():
    """An option marked trajectory=False (outputs, logging, execution details) never changes the run's
    fingerprint, so changing it does not refuse a resume; every other option does."""
    import dataclasses

    from sage_libs.sage_finetune.config import DataConfig, TrainingConfig
    from sage_libs.sage_finetune.run.identity import RunIdentity

    def identity(**training):
        tc = TrainingConfig(model_name_or_path="org/model", output_dir="out", **training)
        return RunIdentity.from_resolved_config({"method": "lora", "training": tc.to_dict(),
                                                 "data": DataConfig().to_dict()}, [{"text": "x"}]).fingerprint

    base = identity()
    outputs = {f.name for f in dataclasses.fields(TrainingConfig) if not f.metadata["trajectory"]}
    assert {"output_dir", "fused_norms", "plan_check", "save_merged", "logging_steps"} <= outputs
    assert identity(fused_norms=False, plan_check=False, save_merged=True, logging_steps=3) == base
    assert identity(learning_rate=1e-3) != base and identity(seed=1) != base
    # the split of a global batch is not part of it; the global batch is
    assert identity(per_device_train_batch_size=2, gradient_accumulation_steps=2) == \
        identity(per_device_train_batch_size=4, gradient_accumulation_steps=1)
    assert identity(per_device_train_batch_size=8) != identity(per_device_train_batch_size=4)


def test_one_answer_to_which_device(monkeypatch):
    import torch

    from sage_libs.sage_finetune.config import TrainingConfig
    from sage_libs.sage_finetune.utils.processes import run_device

    tc = TrainingConfig(model_name_or_path="m", output_dir="o")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert run_device(tc) == "cuda" and run_device(tc.replace(use_cpu=True)) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_device(tc) == "cpu"


def test_hf_arguments_come_from_each_options_metadata():
    """Every option marked hf reaches TrainingArguments under its name, with its value; every name
    exists there (a renamed HF field would fail here, not silently)."""
    import dataclasses

    from transformers import TrainingArguments

    from sage_libs.sage_finetune.config import TrainingConfig
    from sage_libs.sage_finetune.trainers.hf_args import hf_options, training_arguments

    tc = TrainingConfig(model_name_or_path="m", output_dir="o", num_train_epochs=2, learning_rate=3e-4,
                        weight_decay=0.05, warmup_steps=3, max_grad_norm=0.5, logging_steps=7, save_steps=9,
                        seed=11, gradient_checkpointing=True, use_cpu=True, per_device_eval_batch_size=3)
    args = training_arguments(tc, has_eval=True)
    hf_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    options = hf_options(tc)
    assert "activation_checkpointing" in options and "gradient_checkpointing" not in options
    assert len(options) >= 24 and set(options) <= hf_fields, set(options) - hf_fields
    for name, value in options.items():
        assert getattr(args, name) == value, name
    assert args.data_seed == 11 and args.use_cpu and args.eval_strategy == "steps"


@pytest.mark.parametrize("warmup,scheduler,warns", [
    (500, "linear", True),            # SAGE's 500 in a 25-step run: the learning rate would never reach its value
    (500, "constant_with_warmup", True),
    (500, "constant", False),         # no warm-up phase: nothing to warn about
    (500, "reduce_lr_on_plateau", False),
    (0.03, "linear", False),          # the default, a ratio: fits any length
    (24, "cosine", False),
])
def test_the_warm_up_warning_is_right_for_every_schedule(warmup, scheduler, warns, caplog):
    from sage_libs.sage_finetune.trainers.preflight import warn_about_schedule

    warn_about_schedule(tc(warmup_steps=warmup, lr_scheduler_type=scheduler, per_device_train_batch_size=8,
                           num_train_epochs=1), n_samples=200)
    assert ("never reaches its peak" in caplog.text) == warns, caplog.text
    if warns:
        assert "warmup_steps=500 >= the 25 optimizer steps of this run" in caplog.text
