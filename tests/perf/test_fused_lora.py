"""The fused LoRA branch (perf/fused_lora.py) against PEFT's own LoRA linear: forward and the
gradients of the input, A and B with the same dropout draws; what each keeps for backward (bytes);
a model's modules switched after the probe and left alone where PEFT computes something else; a
training run with and without it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune.perf.fused_lora import fusable_lora_modules, install_fused_lora, lora_branch  # noqa: E402


class Trio(torch.nn.Module):
    """Three linears on one input, as q/k/v (module level: a pickled model must find its class)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.q = torch.nn.Linear(in_features, out_features, bias=False)
        self.k = torch.nn.Linear(in_features, out_features, bias=False)
        self.v = torch.nn.Linear(in_features, out_features, bias=False)

    def forward(self, x):
        return self.q(x) + 2 * self.k(x) + 3 * self.v(x)


def _lora_linears(dropout=0.1, r=4, use_dora=False, in_features=32, out_features=24, adapters=1):
    """A PEFT model of one q/k/v-like trio of linears that share their input."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(Trio(in_features, out_features), LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules=["q", "k", "v"],
                                              init_lora_weights=False, use_dora=use_dora))
    for i in range(1, adapters):
        model.add_adapter(f"extra{i}", LoraConfig(r=r, lora_alpha=r, lora_dropout=dropout, target_modules=["q", "k", "v"]))
    model.train()
    return model


def _forward_backward(model, x, grad, seed=123):
    torch.manual_seed(seed)  # the same dropout draws for both
    xi = x.clone().requires_grad_(True)
    out = model(xi)
    params = [p for p in model.parameters() if p.requires_grad]
    return [out.detach(), *torch.autograd.grad(out, [xi, *params], grad)]


def test_branch_equals_peft_composition_with_the_same_draws():
    """On literal small tensors: (dropout(x) @ A^T @ B^T) * s, forward and all three gradients."""
    torch.manual_seed(0)
    x, a, b = torch.randn(2, 5, 8), torch.randn(3, 8), torch.randn(6, 3)
    grad = torch.randn(2, 5, 6)

    def reference(xi, ai, bi):
        return torch.nn.functional.linear(torch.nn.functional.linear(torch.nn.functional.dropout(xi, 0.25), ai), bi) * 0.5

    results = []
    for fn in (reference, lambda xi, ai, bi: lora_branch(xi, ai, bi, 0.25, 0.5)):
        torch.manual_seed(7)
        leaves = [t.clone().requires_grad_(True) for t in (x, a, b)]
        out = fn(*leaves)
        results.append([out.detach(), *torch.autograd.grad(out, leaves, grad)])
    undropped = torch.nn.functional.linear(torch.nn.functional.linear(x, a), b) * 0.5
    assert not torch.allclose(results[0][0], undropped)  # dropout dropped something
    for got, ref in zip(results[1], results[0]):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


def test_gradcheck_in_float64():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)

    def fn(xi, ai, bi):
        torch.manual_seed(3)  # the same mask on every evaluation gradcheck makes
        return lora_branch(xi, ai, bi, 0.3, 2.0)

    assert torch.autograd.gradcheck(fn, (x, a, b))


def test_model_matches_peft_forward_and_gradients():
    model = _lora_linears()
    x, grad = torch.randn(3, 7, 32), torch.randn(3, 7, 24)
    ref = _forward_backward(model, x, grad)
    assert install_fused_lora(model) == 3
    got = _forward_backward(model, x, grad)
    assert len(got) == len(ref) == 2 + 6  # output, x, and A and B of three modules
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def _saved_bytes(model, x):
    """Bytes of the distinct storages autograd keeps for backward, the weights of the model excluded."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, total = set(), [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and ptr not in weights:
            seen.add(ptr)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x.clone().requires_grad_(True))
    return total[0]


def test_keeps_the_shared_input_once_and_bool_masks():
    """PEFT keeps, per module, the dropped input and the float noise (8 bytes per input element, three
    times); the fused branch keeps x once, three bool masks and the rank-r intermediates."""
    model = _lora_linears(r=4)
    x = torch.randn(2, 10, 32)
    n = x.numel()
    plain = _saved_bytes(model, x)
    install_fused_lora(model)
    fused = _saved_bytes(model, x)
    rank_r = 3 * 2 * 10 * 4 * 4  # h of each module, float32
    assert fused == 4 * n + 3 * n + rank_r
    assert plain >= 3 * 8 * n + rank_r


def test_forward_allocates_the_noise_and_two_outputs_only():
    """What a module's fused forward allocates at the size of its input or output: the dropout
    noise (scaled and multiplied by x in its own buffer), the base output (the branch is added into
    it) and lora_B's output (scaled in place). PEFT's also allocates the dropped input, the scaled
    branch and the sum: blocks freed between the tensors kept for backward fragment the heap."""
    from torch.utils._python_dispatch import TorchDispatchMode

    module = _lora_linears(r=4).base_model.model.q
    x = torch.randn(2, 10, 32, requires_grad=True)
    out_bytes = 2 * 10 * 24 * 4

    class NewStorages(TorchDispatchMode):  # an op's output on none of its inputs' storages: allocated
        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                      if isinstance(a, torch.Tensor)}
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() >= out_bytes \
                        and t.untyped_storage().data_ptr() not in inputs:
                    self.sizes.append(t.untyped_storage().nbytes())
            return out

    def allocated():
        counter = NewStorages()
        with counter:
            module(x)
        return sorted(counter.sizes)

    peft = allocated()
    install_fused_lora(module)
    assert allocated() == [out_bytes, out_bytes, 4 * x.numel()]
    assert len(peft) >= 6


@pytest.mark.parametrize("case", ["dora", "no_dropout"])
def test_modules_peft_computes_differently_are_not_switched(case):
    model = _lora_linears(use_dora=True) if case == "dora" else _lora_linears(dropout=0.0)
    assert fusable_lora_modules(model) == []
    assert install_fused_lora(model) == 0


def test_calls_it_does_not_cover_run_peft_forward():
    """Eval mode, no_grad, disabled adapters, another active adapter set: PEFT's own forward, same output."""
    model = _lora_linears(adapters=2)
    assert install_fused_lora(model) == 3
    x = torch.randn(2, 4, 32)
    calls = []
    import sage_libs.sage_finetune.perf.fused_lora as fl

    original = fl.lora_branch
    fl.lora_branch = lambda *a: calls.append(1) or original(*a)
    try:
        model.eval()
        with torch.no_grad():
            model(x)
        model.train()
        with model.disable_adapter():
            model(x)
        model.base_model.set_adapter(["default", "extra1"])
        model(x)
        assert calls == []
        model.base_model.set_adapter("default")
        model(x)
        assert len(calls) == 3
    finally:
        fl.lora_branch = original


def test_a_saved_whole_model_loads_with_the_module_forward(tmp_path):
    import copy

    model = _lora_linears()
    install_fused_lora(model)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    q = loaded.base_model.model.q
    assert vars(q).get("forward") is None or getattr(vars(q)["forward"], "__func__", None) is type(q).forward
    loaded.eval(), model.eval()
    x = torch.randn(2, 32)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(copy.deepcopy(model)(x), model(x))


def test_training_run_is_the_same_with_and_without(tiny_model_dir, tmp_path):
    """Two LoRA runs (dropout 0.1) of the tiny model through the trainer: the same dropout draws, so the
    same logged losses to rounding; the fast-path log says which ran."""
    import json

    from sage_libs.sage_finetune import DataConfig, LoRAConfig, TrainingConfig, create_trainer

    from ..paths import EXAMPLE_DATA

    losses = {}
    for fused in (True, False):
        out = tmp_path / f"fused{fused}"
        tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(out), use_cpu=True, max_steps=4,
                            per_device_train_batch_size=4, logging_steps=1, learning_rate=1e-3, fused_lora=fused,
                            plan_check=False, save_strategy="no", eval_strategy="no", seed=5)
        trainer = create_trainer("lora", training_config=tc, lora_config=LoRAConfig(r=4, lora_dropout=0.1),
                                 data_config=DataConfig(train_file=str(EXAMPLE_DATA / "alpaca_train.jsonl")))
        trainer.train()
        assert trainer.fast_paths.fused_lora is fused
        losses[fused] = [json.loads(line)["loss"] for line in (out / "trainer_log.jsonl").read_text().splitlines()
                         if "loss" in json.loads(line)]
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_under_bf16_autocast_the_branch_runs_in_bf16_with_float32_adapter_gradients():
    """bf16 on the CPU: a bfloat16 base, float32 A and B, autocast. The fused branch equals the LoRA
    formula on the same mask in bfloat16 (the mask recovered from the same draws), and A's and B's
    gradients arrive in float32."""
    model = _lora_linears(dropout=0.25)
    for module in fusable_lora_modules(model):
        module.base_layer.to(torch.bfloat16)
    assert install_fused_lora(model) == 3
    q = model.base_model.model.q
    a, b, s = q.lora_A["default"].weight, q.lora_B["default"].weight, q.scaling["default"]
    torch.manual_seed(0)
    x = torch.randn(2, 5, 32).to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(3)
        out = q(x)
    torch.manual_seed(3)  # the draws the branch made: torch's dropout on a bfloat16 tensor
    noise = torch.empty_like(x).bernoulli_(0.75).div_(0.75)
    xr = x.detach().clone().requires_grad_(True)
    ar, br = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    expected = (torch.nn.functional.linear(xr, q.base_layer.weight)
                + ((xr * noise) @ ar.to(torch.bfloat16).t() @ br.to(torch.bfloat16).t()) * s)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn(out.shape).to(torch.bfloat16)
    got = torch.autograd.grad(out, [x, a, b], grad)
    want = torch.autograd.grad(expected, [xr, ar, br], grad)
    assert [g.dtype for g in got] == [torch.bfloat16, torch.float32, torch.float32]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2)
