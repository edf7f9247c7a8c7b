"""One weight-decay rule for every method and strategy (methods/optim.decay_parameter_names): the HF
Trainer's (no biases, no norm weights) minus DoRA magnitudes. PEFT's LoRA+ grouping would decay the
magnitudes; the lora_plus trainer and strategy follow the one rule too."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def dora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(model, LoraConfig(r=4, use_dora=True, target_modules=["q_proj", "v_proj"]))


def decayed(model, groups) -> dict[str, bool]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: bool(g["weight_decay"]) for g in groups for p in g["params"]}


def test_every_method_and_strategy_decays_the_same_parameters(dora_model):
    from sage_libs.sage_finetune.methods.lora_plus import create_lora_plus_optimizer, lora_plus_parameter_groups
    from sage_libs.sage_finetune.methods.optim import decay_parameter_groups, decay_parameter_names
    from sage_libs.sage_finetune.strategies import LoRAPlusStrategy, LoRAStrategy

    trainable = {n for n, p in dora_model.named_parameters() if p.requires_grad}
    magnitudes = {n for n in trainable if "lora_magnitude_vector" in n}
    assert magnitudes and trainable - magnitudes
    rule = {n: n in set(decay_parameter_names(dora_model)) for n in trainable}
    assert not any(rule[n] for n in magnitudes) and all(rule[n] for n in trainable - magnitudes)
    ways = {
        "decay_parameter_groups (full, freeze, lora strategies)": decay_parameter_groups(dora_model, 0.1),
        "lora strategy": LoRAStrategy().get_optimizer_grouped_parameters(dora_model, weight_decay=0.1),
        "lora_plus groups": lora_plus_parameter_groups(dora_model, lr=1e-3, lr_ratio=16, weight_decay=0.1),
        "lora_plus strategy": LoRAPlusStrategy().get_optimizer_grouped_parameters(dora_model, weight_decay=0.1),
        "lora_plus trainer's optimizer": create_lora_plus_optimizer(
            dora_model, torch.optim.AdamW, {}, lr=1e-3, lr_ratio=16, weight_decay=0.1).param_groups,
    }
    for way, groups in ways.items():
        assert decayed(dora_model, groups) == rule, way
    # LoRA+ keeps its learning rates: lora_B and the magnitudes at 16x
    rates = {n: g["lr"] for g in ways["lora_plus groups"] for n in decayed(dora_model, [g])}
    assert all(rates[n] == pytest.approx(16e-3) for n in trainable if "lora_B" in n or n in magnitudes)
    assert all(rates[n] == pytest.approx(1e-3) for n in trainable if "lora_A" in n)
