"""The fused RMSNorm (perf/fused_norm.py) against transformers' own RMSNorm: forward, input and
weight gradients, in float32, float64 (gradcheck) and bfloat16; a model's norms switched after the
probe; norms that compute something else left alone; a LoRA step with and without it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune.perf.fused_norm import install_fused_norms, norm_modules, rms_norm  # noqa: E402


def _llama_norm(hidden: int, dtype=torch.float32, trained: bool = True):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(hidden, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, hidden))
    norm.weight.requires_grad_(trained)
    return norm


def _forward_backward(fn, x, grad, weight):
    x = x.clone().requires_grad_(True)
    out = fn(x)
    inputs = [x] + ([weight] if weight.requires_grad else [])
    return [out.detach(), *torch.autograd.grad(out, inputs, grad)]


@pytest.mark.parametrize("trained", [True, False])
def test_matches_transformers_rmsnorm_in_float32(trained):
    torch.manual_seed(0)
    norm = _llama_norm(64, trained=trained)
    x, grad = torch.randn(2, 7, 64) * 3, torch.randn(2, 7, 64)
    ref = _forward_backward(norm, x, grad, norm.weight)
    got = _forward_backward(lambda h: rms_norm(h, norm.weight, 1e-6), x, grad, norm.weight)
    assert len(ref) == len(got) == (3 if trained else 2)
    assert torch.equal(got[0], ref[0])  # the same forward ops in the same order
    for a, b in zip(got[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradcheck_in_float64():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (x, w))


def test_bfloat16_follows_transformers_casts():
    """A 16-bit input is normalised in float32 and cast back before the weight, as transformers does."""
    torch.manual_seed(0)
    norm = _llama_norm(64, dtype=torch.bfloat16)
    x, grad = torch.randn(4, 64).bfloat16(), torch.randn(4, 64).bfloat16()
    ref = _forward_backward(norm, x, grad, norm.weight)
    got = _forward_backward(lambda h: rms_norm(h, norm.weight, 1e-6), x, grad, norm.weight)
    assert got[0].dtype == ref[0].dtype == torch.bfloat16 and torch.equal(got[0], ref[0])
    for a, b in zip(got[1:], ref[1:]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)


class _GemmaLikeRMSNorm(torch.nn.Module):
    """Scales by (1 + w): not what the fused function computes."""

    def __init__(self, hidden):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(hidden))
        self.eps = 1e-6

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)).to(x.dtype)


def test_install_switches_only_norms_it_reproduces():
    model = torch.nn.ModuleDict({"a": _llama_norm(32), "b": _GemmaLikeRMSNorm(32), "c": _llama_norm(32)})
    assert len(norm_modules(model)) == 3
    assert install_fused_norms(model) == 2
    assert "forward" in vars(model["a"]) and "forward" in vars(model["c"]) and "forward" not in vars(model["b"])
    assert install_fused_norms(model) == 2  # idempotent
    assert set(model.state_dict()) == {"a.weight", "b.weight", "c.weight"}  # nothing added to what is saved


class _OlmoLikeRMSNorm(torch.nn.Module):
    """Multiplies by the weight before casting back: equal in float32, not in bfloat16."""

    def __init__(self, hidden):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, hidden))
        self.eps = 1e-6

    def forward(self, x):
        x32 = x.float()
        return (self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps))).to(x.dtype)


def test_probe_wants_the_same_forward_bits_and_runs_under_no_grad():
    """A norm whose 16-bit forward rounds differently is refused (16-bit gradients have a tolerance,
    the forward has none); the probe works when the first call comes under torch.no_grad."""
    with torch.no_grad():
        assert install_fused_norms(_OlmoLikeRMSNorm(32).bfloat16()) == 0
        assert install_fused_norms(_OlmoLikeRMSNorm(32)) == 1  # float32: the same bits


def test_other_dtypes_than_the_probed_one_take_the_module_forward():
    """Switched in float32, then cast to bfloat16 (or given a bfloat16 input under autocast): the
    module's own forward runs, so nothing it computes differently slips through."""
    olmo = _OlmoLikeRMSNorm(32)
    assert install_fused_norms(olmo) == 1
    olmo.bfloat16()
    x = torch.randn(4, 32).bfloat16()
    assert torch.equal(olmo(x), type(olmo).forward(olmo, x))
    llama = _llama_norm(32)  # float32 weight, bfloat16 input (Qwen3's q_norm under autocast)
    assert install_fused_norms(llama) == 1
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = [llama(xs[0]), type(llama).forward(llama, xs[1])]
    grad = torch.randn_like(outs[0])
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(torch.autograd.grad(outs[0], xs[0], grad)[0], torch.autograd.grad(outs[1], xs[1], grad)[0])


def test_a_saved_whole_model_loads_with_the_module_forward(tmp_path):
    """torch.save of the module object (the fused forward is an instance attribute) loads back, even
    where this package is not imported, with the module's own forward; deepcopy likewise."""
    import copy

    model = torch.nn.ModuleDict({"norm": _llama_norm(32)})
    assert install_fused_norms(model) == 1
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    x = torch.randn(3, 32)
    restored = vars(loaded["norm"]).get("forward")
    assert restored is None or getattr(restored, "__func__", None) is type(loaded["norm"]).forward
    assert torch.equal(loaded["norm"](x), model["norm"](x))
    copied = copy.deepcopy(model)
    assert torch.equal(copied["norm"](x), model["norm"](x)) and copied["norm"].weight is not model["norm"].weight


def test_lora_step_is_the_same_with_fused_norms(tiny_model_dir):
    """A LoRA forward+backward of the tiny model (padding-free rows): loss to 1e-6, LoRA gradients to 1e-5."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sage_libs.sage_finetune.data.collate import PackedCollator

    g = torch.Generator().manual_seed(0)
    examples = []
    for n in (40, 25, 12):
        ids = torch.randint(5, 500, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:]})
    batch = PackedCollator(pad_token_id=0, flatten=True)(examples)

    def step(fused: bool):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                                 init_lora_weights=False))
        if fused:
            layers = model.config.num_hidden_layers
            assert install_fused_norms(model) == 2 * layers + 1
        loss = model(**batch).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain_loss, plain_grads = step(False)
    fused_loss, fused_grads = step(True)
    assert fused_loss == pytest.approx(plain_loss, rel=1e-6)
    assert plain_grads.keys() == fused_grads.keys() and plain_grads
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_trainer_decides_and_logs_it(tiny_model_dir, tmp_path):
    from sage_libs.sage_finetune import TrainingConfig, create_trainer

    for option, want in ((True, True), (False, False)):
        tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / f"o{option}"),
                            fused_norms=option, use_cpu=True)
        trainer = create_trainer("lora", training_config=tc)
        trainer.setup()
        paths = trainer.plan_fast_paths()
        assert paths.fused_norms is want
        assert f"fused RMSNorm {'on' if want else 'off'}" in paths.describe()


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_a_first_evaluation_under_no_grad_or_inference_mode(tiny_model_dir, tmp_path, context):
    """The run's fast paths are decided on the first call; when that is an evaluation inside
    torch.no_grad (the probe needs gradients) or torch.inference_mode (no version counters: the
    per-document attention's memo) it works and gives the plain evaluation's loss."""
    from sage_libs.sage_finetune import TrainingConfig, create_trainer

    from ..paths import EXAMPLE_DATA

    losses = []
    for ctx in (getattr(torch, context), torch.enable_grad):
        tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / context),
                            use_cpu=True, plan_check=False)
        trainer = create_trainer("lora", training_config=tc)
        with ctx():
            losses.append(trainer.evaluate(str(EXAMPLE_DATA / "alpaca_eval.jsonl"))["eval_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
