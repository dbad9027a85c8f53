"""pytorch_optimizer's whole registry as ``po_*`` names: shipped catalogue, listing, refusals, real training."""

from __future__ import annotations

import copy
import importlib.util
import io
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optim_registry import create_optimizer, get_optimizer_cls_and_kwargs, list_optimizers
from optim_registry.families.pytorch_optimizer.catalog import CATALOG, LAYERWISE, SHARDING, STATUS
from optim_registry.families.pytorch_optimizer.records import PREFIX, generated_records
from optim_registry.testing import TokenDataset, arguments, check_optimizer, tiny_model

pytest.importorskip("pytorch_optimizer")

ROOT = Path(__file__).resolve().parents[1]
OK = sorted(n for n, s in STATUS.items() if s == "ok")
REFUSED = sorted(n for n, s in STATUS.items() if s != "ok")
TWINS = sorted(n for n, s in LAYERWISE.items() if s == "ok" and STATUS[n] == "ok")

#: Through OptimTrainer with a real checkpoint and resume: well-known names and each kind of builder.
CONFORMANCE = [
    "adabelief", "adan", "adopt", "ademamix", "came", "dadaptadam", "kron", "lamb", "lion", "madgrad",
    "muon", "prodigy", "ranger21", "schedulefreeadamw", "soap", "adammini",
]
CONFORMANCE_TWINS = ["lion", "soap"]


def _generator():
    path = ROOT / "tools" / "gen_pytorch_optimizer_catalog.py"
    spec = importlib.util.spec_from_file_location("gen_pytorch_optimizer_catalog", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Each name's base record (a layer-wise twin's ``base`` field), without the ``po_`` prefix.
_BASE = {i.name: (i.base or i.name).removeprefix(PREFIX) for i in list_optimizers() if i.name.startswith(PREFIX)}


def _args(name, **kw):
    base = _BASE[name]
    kw.setdefault("learning_rate", CATALOG[base]["lr_default"] or 1e-2)
    kw.setdefault("weight_decay", 0.01)
    kw.setdefault("max_steps", 10)  # Ranger21 schedules itself over the run's length
    if name.endswith("_layerwise"):
        kw.setdefault("max_grad_norm", 0.0)
    return arguments(name, **kw)


# -- the shipped catalogue ------------------------------------------------------------------------
def test_catalogue_equals_what_the_generator_makes_from_the_installed_library():
    fresh = _generator().introspect()
    assert sorted(fresh) == sorted(CATALOG), "names differ: rerun tools/gen_pytorch_optimizer_catalog.py"
    for name, entry in fresh.items():
        shipped = CATALOG[name]
        assert [o[:3] for o in entry["options"]] == [o[:3] for o in shipped["options"]], name
        assert entry == shipped, f"{name}: catalogue is stale; rerun tools/gen_pytorch_optimizer_catalog.py"


def test_every_name_has_a_measured_status():
    assert sorted(STATUS) == sorted(CATALOG)
    assert "not surveyed" not in STATUS.values()
    assert set(LAYERWISE) <= set(OK)
    assert sorted(SHARDING) == OK
    assert set(CONFORMANCE) <= set(OK) and set(CONFORMANCE_TWINS) <= set(TWINS)


def test_sharding_outcomes_match_the_probe():
    """Each trainable name's update, split into flat shards as ZeRO / FSDP do, against the shipped verdict."""
    generator = _generator()
    fresh = {n: generator.shard_safe(n, CATALOG[n]) for n in OK}
    assert fresh == SHARDING
    assert SHARDING["adamw"] == SHARDING["lion"] == "ok"
    assert SHARDING["lamb"] != "ok" and SHARDING["came"] != "ok" and SHARDING["prodigy"] != "ok"


def test_sharded_backends_refuse_shape_aware_names():
    from types import SimpleNamespace

    from optim_registry.distributed import check_distributed
    from optim_registry.registry import optimizers

    fsdp = SimpleNamespace(fsdp="full_shard", fsdp_config={"fsdp_version": 2}, deepspeed=None, optim_args=None)
    zero2 = SimpleNamespace(fsdp=None, deepspeed={"zero_optimization": {"stage": 2}}, optim_args=None)
    for args in (fsdp, zero2):
        check_distributed(optimizers.get("po_adamw"), args)
        with pytest.raises(ValueError, match="po_lamb.*not elementwise"):
            check_distributed(optimizers.get("po_lamb"), args)


def test_names_are_prefixed_lowercase_and_sorted():
    names = [r.name for r in generated_records()]
    assert names == sorted(names)
    assert len(names) == len(CATALOG) >= 120
    assert all(re.fullmatch(r"po_[a-z0-9]+(?:_[a-z0-9]+)*", n) for n in names), names


def test_listing_includes_every_name_without_importing_pytorch_optimizer():
    code = (
        "import sys\n"
        "from optim_registry import list_optimizers\n"
        "infos = {i.name: i for i in list_optimizers()}\n"
        f"want = {sorted(PREFIX + n for n in CATALOG)!r}\n"
        "assert all(n in infos for n in want), [n for n in want if n not in infos]\n"
        "assert infos['po_soap'].options['precondition_frequency']['default'] == 10\n"
        "assert infos['po_soap'].requires == ['pytorch-optimizer']\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_optimizer', 'torchao')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_records_describe_the_library_classes():
    infos = {i.name: i for i in list_optimizers()}
    soap = infos["po_soap"]
    assert soap.description == "Adam updates in Shampoo preconditioner eigenbases."
    assert soap.options["precondition_frequency"]["type"] == "int"
    assert infos["po_muon"].supports_layerwise is False
    assert infos["po_prodigy"].supports_layerwise is False  # one d shared by all parameters
    for name in TWINS:
        assert f"po_{name}_layerwise" in infos


# -- hyperparameters and options --------------------------------------------------------------------
def test_training_arguments_feed_only_adam_shaped_defaults(tiny_model):
    opt = create_optimizer(_args("po_adabelief", adam_beta2=0.95), tiny_model)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    # Lion's (0.9, 0.99) and Adan's three betas are the library's unless optim_args says otherwise.
    assert create_optimizer(_args("po_lion", adam_beta2=0.95), tiny_model).param_groups[0]["betas"] == (0.9, 0.99)
    lion = create_optimizer(_args("po_lion", optim_args="betas=(0.9,0.95)"), tiny_model)
    assert lion.param_groups[0]["betas"] == (0.9, 0.95)
    assert create_optimizer(_args("po_adan"), tiny_model).param_groups[0]["betas"] == (0.98, 0.92, 0.99)
    # AdaBelief's eps 1e-16 is not TrainingArguments' 1e-8.
    assert create_optimizer(_args("po_adabelief"), tiny_model).param_groups[0]["eps"] == 1e-16


def test_options_are_typed_from_the_signature(tiny_model):
    opt = create_optimizer(_args("po_soap", optim_args="precondition_frequency=5,merge_dims=yes"), tiny_model)
    assert opt.param_groups[0]["precondition_frequency"] == 5
    assert opt.param_groups[0]["merge_dims"] is True
    with pytest.raises(ValueError, match="precondition_frequency"):
        _args("po_soap", optim_args="precondition_frequncy=5")
    with pytest.raises(ValueError, match="'variant'.*one of"):
        _args("po_a2grad", optim_args="variant=nope")


def test_muon_routes_hidden_matrices_and_the_rest_to_adamw(tiny_model):
    opt = create_optimizer(_args("po_muon"), tiny_model)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    routed = {names[id(p)]: g["use_muon"] for g in opt.param_groups for p in g["params"]}
    assert len(routed) == len(names)
    assert routed["model.layers.0.self_attn.q_proj.weight"] is True
    assert routed["model.embed_tokens.weight"] is False and routed["lm_head.weight"] is False
    assert routed["model.norm.weight"] is False


def test_ranger21_takes_the_run_length(tiny_model):
    opt = create_optimizer(_args("po_ranger21", max_steps=100), tiny_model)
    assert opt.start_warm_down == 100 - opt.num_warm_down_iterations
    with pytest.raises(ValueError, match="num_iterations"):
        get_optimizer_cls_and_kwargs(_args("po_ranger21", max_steps=-1), tiny_model)
    given = _args("po_ranger21", max_steps=-1, optim_args="num_iterations=9")
    cls, kwargs = get_optimizer_cls_and_kwargs(given, tiny_model)
    assert kwargs["num_iterations"] == 9


def test_adam_mini_reads_the_model_layout(tiny_model):
    cls, kwargs = get_optimizer_cls_and_kwargs(_args("po_adammini"), tiny_model)
    assert kwargs["model"] is tiny_model
    assert (kwargs["num_embeds"], kwargs["num_heads"], kwargs["num_query_groups"]) == (16, 2, 1)


# -- refusals -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REFUSED)
def test_refused_names_are_listed_and_say_why(name, tiny_model):
    import transformers

    reason = STATUS[name]
    info = {i.name: i for i in list_optimizers()}[PREFIX + name]
    assert info.unsupported == reason and not info.supports_layerwise
    with pytest.raises(ValueError, match=re.escape(f"optim={PREFIX + name!r} cannot train through the Trainer: {reason}")):
        _args(PREFIX + name)
    # Arguments made elsewhere (stock transformers) are refused at build time, before the model is touched.
    stock = transformers.TrainingArguments("unused", report_to=[], use_cpu=True)
    stock.optim = PREFIX + name
    with pytest.raises(ValueError, match=re.escape(reason)):
        create_optimizer(stock, tiny_model)


# -- every "ok" name trains: build through the registry, two steps, state round-trip, exact next step ----
#: Rectified warm-ups leave the weights untouched for the first steps; two steps must move something.
FAST_ARGS = {"radam": "degenerated_to_sgd=true", "schedulefreeradam": "silent_sgd_phase=false"}


def _batch():
    data = TokenDataset(n=4, seq_len=8)
    ids = torch.stack([data[i]["input_ids"] for i in range(len(data))])
    return {"input_ids": ids, "labels": ids}


def _step(model, opt, batch, layerwise):
    loss = model(**batch).loss
    loss.backward()
    if not layerwise:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


@pytest.mark.parametrize("name", [PREFIX + n for n in OK] + [f"{PREFIX}{n}_layerwise" for n in TWINS])
def test_registry_build_steps_and_round_trips(name):
    layerwise = name.endswith("_layerwise")
    args = _args(name, optim_args=FAST_ARGS.get(_BASE[name]))
    batch = _batch()
    model = tiny_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = create_optimizer(args, model)
    losses = [_step(model, opt, batch, layerwise) for _ in range(2)]
    assert all(math.isfinite(v) for v in losses), losses
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters()), "no parameter moved"

    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    resumed = copy.deepcopy(model)
    resumed_opt = create_optimizer(args, resumed)
    resumed_opt.load_state_dict(loaded)
    for m, o in ((model, opt), (resumed, resumed_opt)):
        torch.manual_seed(1)
        _step(m, o, batch, layerwise)
    diff = max((a - b).abs().max().item() for a, b in zip(model.parameters(), resumed.parameters()))
    assert diff < 1e-6, f"next step after load_state_dict differs by {diff:.3g}"


# -- conformance through OptimTrainer with a real checkpoint -------------------------------------------
@pytest.mark.harness
@pytest.mark.parametrize("name", [PREFIX + n for n in CONFORMANCE] + [f"{PREFIX}{n}_layerwise" for n in CONFORMANCE_TWINS])
def test_conformance_through_optim_trainer(name, tmp_path):
    base = _BASE[name]
    report = check_optimizer(name, workdir=str(tmp_path), learning_rate=CATALOG[base]["lr_default"] or 1e-2)
    assert report.ok, report.failures
