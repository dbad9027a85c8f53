"""bitsandbytes, torchao and misc families: every transformers name trained for real, typed options,
32-bit embedding state, exact resume, clear errors for packages that cannot be installed here, and
parity with ``transformers.Trainer.get_optimizer_cls_and_kwargs``."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import warnings

import pytest
import torch
import transformers

from optim_registry import OptimTrainer, create_optimizer, get_optimizer_cls_and_kwargs
from optim_registry.testing import TokenDataset, check_optimizer, max_param_diff, run, state_round_trip, tiny_model
from optim_registry.testing import arguments as args
from optim_registry.trainer import unwrap_optimizer

BNB = [
    "adamw_8bit", "adamw_bnb_8bit", "ademamix", "ademamix_8bit", "lion_32bit", "lion_8bit", "paged_adamw_32bit",
    "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
    "rmsprop_bnb", "rmsprop_bnb_32bit", "rmsprop_bnb_8bit",
]
TORCHAO = ["adamw_torch_4bit", "adamw_torch_8bit", "ao_adamw_4bit", "ao_adamw_8bit", "ao_adamw_fp8"]
#: The tiny model's tensors all have < 4096 elements, so 8-bit names would silently run 32-bit state:
#: lowering bitsandbytes' threshold makes their 8-bit path the one under test.
REAL_8BIT = "min_8bit_size=64"
#: A vocabulary of 256 gives the embedding and the head 256 x 16 = 4096 elements: torchao's threshold.
AO_VOCAB = 256


def stock_args(optim: str, **kw):
    return transformers.TrainingArguments("unused", optim=optim, report_to=[], use_cpu=True, **kw)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Paged optimizers are not supported on CPU.*")
        yield


# -- bitsandbytes -----------------------------------------------------------------------------------


@pytest.mark.harness
@pytest.mark.parametrize("name", BNB)
def test_bnb_conformance(name, tmp_path):
    report = check_optimizer(name, REAL_8BIT if "8bit" in name else None, steps=2, workdir=str(tmp_path))
    assert report.ok, report.failures


@pytest.mark.harness
@pytest.mark.parametrize("name", ["adamw_8bit_layerwise", "lion_8bit_layerwise"])
def test_bnb_layerwise_conformance(name, tmp_path):
    report = check_optimizer(name, REAL_8BIT, steps=2, workdir=str(tmp_path))
    assert report.ok, report.failures


def _state1_dtypes(trainer):
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    opt = unwrap_optimizer(trainer.optimizer)
    return {names[id(p)]: st["state1"].dtype for p, st in opt.state.items()}


@pytest.mark.parametrize("name", ["adamw_8bit", "adamw_8bit_layerwise"])
def test_bnb_embedding_state_stays_32bit(name, tmp_path):
    """The override covers the embedding only, in whole-model and layer-wise runs, after earlier 8-bit runs.

    bitsandbytes' global manager keys overrides by (group, index): without our per-optimizer lookup a
    layer-wise run gave every parameter 32-bit state, and later runs inherited earlier overrides (this
    test runs after the conformance runs above, in the same process).
    """
    import bitsandbytes

    overrides = dict(max_grad_norm=0.0) if "layerwise" in name else {}
    trainer = run(name, str(tmp_path), REAL_8BIT, max_steps=1, **overrides)
    dtypes = _state1_dtypes(trainer)
    assert dtypes.pop("model.embed_tokens.weight") == torch.float32
    assert dtypes["lm_head.weight"] == torch.uint8
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == torch.uint8
    # norms have 16 elements: below min_8bit_size, so 32-bit by bitsandbytes' own rule
    assert {n for n, d in dtypes.items() if d != torch.uint8} == {n for n in dtypes if "norm" in n}
    # consumed: the process-wide list no longer holds this model's embedding
    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    assert all(m is not trainer.model.model.embed_tokens for m, _, _ in manager.module_weight_config_triple)


def test_bnb_rmsprop_options_are_typed(tiny_model):
    cls, kwargs = get_optimizer_cls_and_kwargs(args("rmsprop_bnb", optim_args="alpha=0.9,centered=False,eps=1e-6"))
    assert kwargs["alpha"] == 0.9 and type(kwargs["alpha"]) is float
    assert kwargs["centered"] is False and kwargs["eps"] == 1e-6
    opt = create_optimizer(args("rmsprop_bnb", optim_args="alpha=0.9,centered=False"), tiny_model)
    assert opt.param_groups[0]["betas"] == (0.9, 0)  # bitsandbytes stores (alpha, momentum) there
    for p in tiny_model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # transformers passes "False" (a truthy string) and "0.9" here: NotImplementedError / TypeError


@pytest.mark.parametrize(
    "raw, match",
    [
        ("centered=true", r"no centred RMSprop.*optim='rmsprop'"),
        ("momentum=0.9", r"ignore momentum.*optim='rmsprop'"),
        ("alpha=0", r"alpha=0.0 is out of range"),
        ("centered=maybe", r"'centered': 'maybe' is not a valid boolean"),
    ],
)
def test_bnb_rmsprop_refuses_what_it_cannot_do(raw, match):
    with pytest.raises(ValueError, match=match):
        get_optimizer_cls_and_kwargs(args("rmsprop_bnb_8bit", optim_args=raw))


def test_bnb_rmsprop_momentum_really_is_ignored_by_the_library():
    """Why momentum!=0 is refused: bitsandbytes' RMSprop has one state buffer and its kernels skip momentum."""
    import bitsandbytes

    results = []
    for momentum in (0.0, 0.9):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(64))
        opt = bitsandbytes.optim.RMSprop([p], lr=0.01, momentum=momentum)
        for i in range(3):
            p.grad = torch.full_like(p, 1.0 + i)
            opt.step()
        results.append(p.detach().clone())
    assert torch.equal(results[0], results[1])


def test_bnb_ademamix_options(tiny_model):
    cls, kwargs = get_optimizer_cls_and_kwargs(
        args("ademamix_8bit", adam_beta1=0.8, optim_args="beta3=0.999,alpha=8,t_alpha=100,t_beta3=50")
    )
    assert kwargs["betas"] == (0.8, 0.999, 0.999)
    assert kwargs["alpha"] == 8.0 and type(kwargs["alpha"]) is float
    assert kwargs["t_alpha"] == 100 and type(kwargs["t_alpha"]) is int and kwargs["t_beta3"] == 50
    assert kwargs["optim_bits"] == 8 and kwargs["is_paged"] is False
    _, kwargs = get_optimizer_cls_and_kwargs(args("ademamix", optim_args="betas=(0.7,0.9,0.99)"))
    assert kwargs["betas"] == (0.7, 0.9, 0.99)
    _, kwargs = get_optimizer_cls_and_kwargs(args("ademamix", optim_args="beta1=0.5,beta2=0.6"))
    assert kwargs["betas"] == (0.5, 0.6, 0.9999)
    with pytest.raises(ValueError, match=r"betas=.*and also beta3"):
        get_optimizer_cls_and_kwargs(args("ademamix", optim_args="betas=(0.7,0.9,0.99),beta3=0.9"))
    with pytest.raises(ValueError, match=r"'t_alpha': '1.5' is not a valid integer"):
        args("ademamix", optim_args="t_alpha=1.5")
    opt = create_optimizer(args("paged_ademamix_32bit", optim_args="alpha=3"), tiny_model)
    assert opt.param_groups[0]["alpha"] == 3.0 and opt.param_groups[0]["betas"] == (0.9, 0.999, 0.9999)


def test_bnb_features_are_record_data():
    from optim_registry.registry import optimizers

    for name in BNB:
        spec = optimizers.get(name)
        assert spec.fixed["optim_bits"] == (8 if "8bit" in name else 32), name
        assert spec.fixed.get("is_paged", False) == name.startswith("paged_"), name
        assert spec.embedding_32bit == (spec.fixed["optim_bits"] == 8), name


# -- torchao ----------------------------------------------------------------------------------------


@pytest.mark.harness("adamw_torch_4bit")
def test_torchao_conformance(tmp_path):
    report = check_optimizer("adamw_torch_4bit", workdir=str(tmp_path), lr_scheduler_type="linear")
    assert report.ok, report.failures


def _ao_model():
    return tiny_model(vocab_size=AO_VOCAB)


def test_torchao_quantised_state_round_trip_and_exact_resume(tmp_path):
    """On a model where torchao really quantises (tensors of >= 4096 elements): the harness's checks by hand."""
    data = TokenDataset(vocab_size=AO_VOCAB)
    model = _ao_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    straight = run("adamw_torch_4bit", str(tmp_path / "a"), model=model, dataset=data, save_strategy="steps",
                   save_steps=2, lr_scheduler_type="linear")
    opt = unwrap_optimizer(straight.optimizer)
    kinds = {n: type(opt.state[p]["exp_avg"]).__name__ for n, p in model.named_parameters()}
    assert kinds["model.embed_tokens.weight"] == kinds["lm_head.weight"] == "OptimState4bit"
    assert kinds["model.layers.0.self_attn.q_proj.weight"] == "Tensor"  # 256 elements: below the threshold
    assert all(not torch.equal(p, start[n]) for n, p in model.named_parameters())
    assert all(isinstance(g["lr"], float) for g in opt.param_groups)
    ok, why = state_round_trip(straight.optimizer)
    assert ok, why
    resumed = run("adamw_torch_4bit", str(tmp_path / "b"), model=_ao_model(), dataset=data,
                  resume=str(tmp_path / "a" / "checkpoint-2"), lr_scheduler_type="linear")
    assert max_param_diff(straight.model, resumed.model) < 1e-6


@pytest.mark.parametrize("name, kind", [("adamw_torch_8bit", "OptimState8bit"), ("ao_adamw_fp8", "OptimStateFp8")])
def test_torchao_short_training(name, kind):
    """Two real steps, a weights_only save/load into a fresh optimizer, one more step: same as uninterrupted."""
    data = TokenDataset(vocab_size=AO_VOCAB)
    batch = {k: torch.stack([data[i][k] for i in range(8)]) for k in ("input_ids", "labels")}

    def step(model, opt):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()

    a, b = _ao_model(), _ao_model()
    opt_a = create_optimizer(args(name, learning_rate=1e-2), a)
    step(a, opt_a)
    step(a, opt_a)
    assert type(opt_a.state[a.lm_head.weight]["exp_avg"]).__name__ == kind
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(a.state_dict())
    opt_b = create_optimizer(args(name, learning_rate=1e-2), b)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    assert type(opt_b.state[b.lm_head.weight]["exp_avg"]).__name__ == kind
    step(a, opt_a)
    step(b, opt_b)
    assert max_param_diff(a, b) == 0.0


def test_torchao_options_typed_and_aliases():
    import torchao.optim

    cls4, kw4 = get_optimizer_cls_and_kwargs(args("ao_adamw_4bit", optim_args="block_size=128"))
    assert kw4["block_size"] == 128 and type(kw4["block_size"]) is int  # transformers passes "128": TypeError
    assert get_optimizer_cls_and_kwargs(args("adamw_torch_4bit"))[0] is cls4 is torchao.optim.AdamW4bit
    assert get_optimizer_cls_and_kwargs(args("ao_adamw_8bit"))[0] is torchao.optim.AdamW8bit
    cls, kw = get_optimizer_cls_and_kwargs(args("ao_adamw_fp8", optim_args="bf16_stochastic_round=yes"))

    assert cls is torchao.optim.AdamWFp8 and kw["bf16_stochastic_round"] is True
    with pytest.raises(ValueError, match=r"'block_size': 'big' is not a valid integer"):
        args("adamw_torch_8bit", optim_args="block_size=big")


# -- misc -------------------------------------------------------------------------------------------


@pytest.mark.harness("grokadamw")
def test_grokadamw_conformance(tmp_path):
    report = check_optimizer("grokadamw", workdir=str(tmp_path))
    assert report.ok, report.failures


def test_grokadamw_state_is_in_optimizer_state(tiny_model):
    opt = create_optimizer(args("grokadamw", optim_args="lamb=3,gradient_clipping=0"), tiny_model)
    assert opt.param_groups[0]["lamb"] == 3.0 and opt.param_groups[0]["gradient_clipping"] == 0.0
    for p in tiny_model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert all("state" not in g for g in opt.param_groups)
    entry = opt.state[tiny_model.lm_head.weight]
    assert entry["step"] == 1 and set(entry) == {"step", "exp_avg", "exp_avg_sq", "grok_ema"}


def test_grokadamw_import_leaves_root_logger_alone():
    code = (
        "import logging\nfrom optim_registry.families.misc.optimizers import GrokAdamW\n"
        "root = logging.getLogger()\nprint(root.level, len(root.handlers), GrokAdamW.__mro__[2].__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(logging.WARNING), "0", "grokadamw.grokadamw"]


@pytest.mark.parametrize(
    "name, line",
    [
        ("adamw_torch_xla", "pip install torch-xla"),
        ("adamw_torch_npu_fused", "pip install torch-npu"),
        ("adamw_anyprecision", "torchdistx is not on PyPI"),
    ],
)
def test_uninstallable_packages_name_what_to_install(name, line):
    with pytest.warns(UserWarning, match=rf"optim='{name}' needs .*{line}"):
        args(name)  # accepted as the stock class accepts it; building is refused
    with pytest.raises(ImportError, match=rf"optim='{name}' needs .*{line}"):
        get_optimizer_cls_and_kwargs(stock_args(name), tiny_model())


def test_anyprecision_options_are_typed():
    from optim_registry import list_optimizers

    info = {i.name: i for i in list_optimizers()}["adamw_anyprecision"]
    assert info.options["variance_dtype"]["type"] == "dtype" and info.options["use_kahan_summation"]["type"] == "bool"
    assert "git clone" in info.install and not info.available


# -- parity with transformers 5.23 ----------------------------------------------------------------------

#: Deliberate differences in kwargs, by name (documented in the family modules). Paged AdEMAMix on a
#: CPU model gets ordinary buffers: bitsandbytes crashes at the first step when it tries to page there.
EXTRA_KWARGS = {
    "grokadamw": {"betas": (0.9, 0.999), "eps": 1e-8},
    "paged_ademamix_32bit": {"is_paged": False},
    "paged_ademamix_8bit": {"is_paged": False},
}


#: Names whose class is still a thin subclass of transformers' (docs/migrating.md).
SUBCLASSED = {"grokadamw"}


@pytest.mark.parametrize("name", BNB + ["adamw_torch_4bit", "adamw_torch_8bit", "grokadamw"])
def test_parity_with_stock_trainer(name, tiny_model):
    stock_cls, stock_kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(stock_args(name), tiny_model)
    cls, kwargs = get_optimizer_cls_and_kwargs(args(name), tiny_model)
    # bitsandbytes / torchao: exactly the class transformers picks (our fixes are hooks installed after
    # construction); GrokAdamW: a thin subclass of it (docs/migrating.md says why)
    if name in SUBCLASSED:
        assert issubclass(cls, stock_cls) and cls.__mro__[2] is stock_cls
    else:
        assert cls is stock_cls
    assert kwargs == {**stock_kwargs, **EXTRA_KWARGS.get(name, {})}


def test_parity_with_optim_args_differs_only_in_types(tiny_model):
    """Where transformers passes raw strings (and then fails), ours passes the typed value."""
    for name, raw, key, stock_value, ours in [
        ("rmsprop_bnb", "centered=False", "centered", "False", False),
        ("rmsprop_bnb_8bit", "alpha=0.9", "alpha", "0.9", 0.9),
        ("adamw_torch_8bit", "block_size=128", "block_size", "128", 128),
    ]:
        stock = transformers.Trainer.get_optimizer_cls_and_kwargs(stock_args(name, optim_args=raw), tiny_model)[1]
        mine = get_optimizer_cls_and_kwargs(args(name, optim_args=raw), tiny_model)[1]
        assert stock[key] == stock_value and mine[key] == ours and type(mine[key]) is type(ours)


def test_bnb_trains_through_stock_arguments(tmp_path, token_data):
    """OptimTrainer takes stock TrainingArguments naming a bitsandbytes optimizer."""
    a = transformers.TrainingArguments(str(tmp_path), optim="lion_8bit", max_steps=1, report_to=[], use_cpu=True,
                                       optim_args="min_8bit_size=64", learning_rate=1e-3)
    trainer = OptimTrainer(model=tiny_model(), args=a, train_dataset=token_data)
    trainer.train()
    assert unwrap_optimizer(trainer.optimizer).state[trainer.model.lm_head.weight]["state1"].dtype == torch.uint8


@pytest.mark.parametrize("name", ["paged_ademamix_32bit", "paged_ademamix_8bit"])
def test_paged_ademamix_on_cpu_uses_ordinary_buffers_with_a_warning(name, tmp_path):
    """bitsandbytes' paged AdEMAMix crashed at its first step on CPU once tensors were large enough to page."""
    from optim_registry.testing import run, tiny_model

    with pytest.warns(UserWarning, match="cannot page optimizer state on CPU"):
        trainer = run(name, str(tmp_path), "min_8bit_size=64" if "8bit" in name else None,
                      model=tiny_model(vocab_size=128, hidden=256, layers=1), max_steps=1)
    assert trainer.optimizer.optimizer.is_paged is False
