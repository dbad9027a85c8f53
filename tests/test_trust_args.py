"""Bad optimizer arguments, by class: each is one clear exception naming the value and the way out, raised
when ``TrainingArguments`` is created whenever the arguments alone show it, and at build time (before any
parameter, hook or global state changes) when only the model shows it."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from optim_registry import TrainingArguments, create_optimizer, register_optimizer, unregister_optimizer
from optim_registry.plan import parse_optim_args
from optim_registry.registry import optimizers


def make(optim: str = "adamw_torch", **kw):
    kw.setdefault("report_to", [])
    kw.setdefault("use_cpu", True)
    return TrainingArguments("out_trust_args", optim=optim, **kw)


def refused(match_values, optim: str = "adamw_torch", exc: type[Exception] = ValueError, **kw) -> str:
    """The message of the refusal; every string of ``match_values`` must be in it."""
    with pytest.raises(exc) as info:
        make(optim, **kw)
    message = str(info.value)
    for value in match_values:
        assert value in message, (value, message)
    return message


def snapshot(model: torch.nn.Module) -> dict:
    """Everything a refused build must leave alone: values, trainability and hooks of every parameter
    and module."""
    return {
        "values": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "param_hooks": {
            n: (len(p._backward_hooks or {}), len(getattr(p, "_post_accumulate_grad_hooks", None) or {}))
            for n, p in model.named_parameters()
        },
        "module_hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
        ),
        "global_hooks": len(torch.nn.modules.module._global_forward_hooks)
        + len(torch.nn.modules.module._global_backward_hooks),
    }


def assert_untouched(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["grad"] == before["grad"]
    assert after["param_hooks"] == before["param_hooks"]
    assert after["module_hooks"] == before["module_hooks"]
    assert after["global_hooks"] == before["global_hooks"]
    for name, value in before["values"].items():
        assert torch.equal(after["values"][name], value), name


# -- refused too late: every float range, now when the arguments are created -------------------------

@pytest.mark.parametrize(
    "optim, optim_args, key, value",
    [
        ("adamw_torch", "lr=inf", "'lr'", "inf"),
        ("adamw_torch", "lr=nan", "'lr'", "nan"),
        ("adamw_torch", "lr=-0.1", "'lr'", "-0.1"),
        ("adamw_torch", "eps=-1e-8", "'eps'", "-1e-08"),
        ("adamw_torch", "eps=inf", "'eps'", "inf"),
        ("adamw_torch", "weight_decay=nan", "'weight_decay'", "nan"),
        ("adamw_torch", "weight_decay=-0.1", "'weight_decay'", "-0.1"),
        ("adamw_torch", "betas=(0.9,1.0)", "'betas'", "1.0"),
        ("adamw_torch", "betas=(-0.1,0.9)", "'betas'", "-0.1"),
        ("adamw_torch", "betas=(nan,0.9)", "'betas'", "nan"),
        ("sgd", "momentum=1.5", "'momentum'", "1.5"),
        ("sgd", "momentum=-0.1", "'momentum'", "-0.1"),
        ("rmsprop", "alpha=-1", "'alpha'", "-1.0"),
        ("galore_adamw", "rank=0", "'rank'", "0"),
        ("galore_adamw", "update_proj_gap=0", "'update_proj_gap'", "0"),
        ("galore_adamw", "scale=nan", "'scale'", "nan"),
        ("galore_adamw", "scale=-0.25", "'scale'", "-0.25"),
        ("galore_adafactor", "rank=-4", "'rank'", "-4"),
        ("apollo_adamw", "rank=0", "'rank'", "0"),
        ("apollo_adamw", "update_proj_gap=-1", "'update_proj_gap'", "-1"),
        ("apollo_mini", "scale=inf", "'scale'", "inf"),
        ("muon", "momentum=1.5", "'momentum'", "1.5"),
        ("muon", "ns_steps=0", "'ns_steps'", "0"),
        ("muon", "muon_lr=-0.02", "'muon_lr'", "-0.02"),
        ("muon", "muon_lr=inf", "'muon_lr'", "inf"),
        ("dion", "dion_lr=nan", "'dion_lr'", "nan"),
        ("dion", "momentum=1", "'momentum'", "1.0"),
        ("lomo", "clip_grad_value=0", "'clip_grad_value'", "0.0"),
        ("lomo", "clip_grad_value=-1", "'clip_grad_value'", "-1.0"),
        ("adamw_torch_layerwise", "clip_per_param=0", "'clip_per_param'", "0.0"),
        ("came_pytorch", "beta3=1.0", "'beta3'", "1.0"),
        ("ademamix", "alpha=-5", "'alpha'", "-5.0"),
        ("schedule_free_sgd", "momentum=1", "'momentum'", "1.0"),
        ("adamw_torch_8bit", "block_size=0", "'block_size'", "0"),
        # options typed from pytorch_optimizer's signatures: nan / inf, and obvious names negative
        ("po_adabelief", "eps=-1e-16", "'eps'", "-1e-16"),
        ("po_adabelief", "n_sma_threshold=inf", "'n_sma_threshold'", "inf"),
        ("po_lamb", "weight_decay=-1", "'weight_decay'", "-1.0"),
    ],
)
def test_out_of_range_option_refused_when_arguments_are_created(optim, optim_args, key, value):
    kw = {"max_grad_norm": 0.0} if optim.endswith("_layerwise") else {}
    if optim in ("galore_adamw", "galore_adafactor", "apollo_adamw", "apollo_mini"):
        kw["optim_target_modules"] = ["attn"]
    message = refused([key, value], optim, optim_args=optim_args, **kw)
    assert "range" in message or "finite" in message or "integer" in message


@pytest.mark.parametrize(
    "field, value, optim",
    [
        ("learning_rate", float("inf"), "adamw_torch"),
        ("learning_rate", float("nan"), "sgd"),
        ("learning_rate", -1e-3, "galore_adamw"),
        ("adam_beta1", 1.5, "adamw_torch"),
        ("adam_beta2", 1.0, "lion_32bit"),
        ("adam_beta2", float("nan"), "adamw_torch"),
        ("adam_epsilon", -1e-8, "adamw_torch"),
        ("adam_epsilon", float("inf"), "apollo_adamw"),
        ("weight_decay", -0.01, "sgd"),
        ("weight_decay", float("nan"), "adamw_torch"),
    ],
)
def test_training_arguments_fields_out_of_range_refused(field, value, optim):
    kw = {"optim_target_modules": ["attn"]} if optim in ("galore_adamw", "apollo_adamw") else {}
    message = refused([f"'{field}'", repr(value)], optim, **{field: value}, **kw)
    assert "TrainingArguments" in message


def test_fields_an_optimizer_does_not_use_are_left_alone():
    # SGD takes no betas / eps: the stock class accepts any value there, and so do we
    make("sgd", adam_beta1=1.5, adam_epsilon=-1.0)
    # a value overridden in optim_args is the one checked
    make("adamw_torch", adam_beta2=1.5, optim_args="betas=(0.9,0.99)")


# -- betas arity, for every record, from its declared num_betas ------------------------------------

def _records_taking_betas():
    return [optimizers.get(n) for n in optimizers.names() if "betas" in optimizers.get(n).hparams]


def test_every_record_with_betas_checks_their_count_from_data():
    checked = 0
    for spec in _records_taking_betas():
        counts = (spec.num_betas,) if isinstance(spec.num_betas, int) else spec.num_betas
        for n in (1, 2, 3, 4):
            betas = "(" + ",".join(["0.9"] * n) + ")"
            if n in counts:
                assert len(parse_optim_args(spec, f"betas={betas}")["betas"]) == n
            else:
                with pytest.raises(ValueError, match=rf"'betas'.*has {n} number\(s\); it takes"):
                    parse_optim_args(spec, f"betas={betas}")
        checked += 1
    assert checked > 100  # built-ins, their layer-wise twins and the po_ names


@pytest.mark.parametrize(
    "optim, betas, takes",
    [
        ("galore_adamw", "(0.9)", "takes 2"),  # was an IndexError inside the builder
        ("galore_adamw", "0.9", "takes 2"),
        ("apollo_adamw", "(0.9,0.99,0.999)", "takes 2"),  # was a failure in step 1
        ("ademamix", "(0.9,0.99,0.999,0.5)", "takes 2 or 3"),
        ("came_pytorch", "(0.9,)", "takes 2"),
        ("optimi_adan", "(0.98,0.92)", "takes 3"),
    ],
)
def test_wrong_number_of_betas_refused_when_arguments_are_created(optim, betas, takes):
    kw = {"optim_target_modules": ["attn"]} if optim in ("galore_adamw", "apollo_adamw") else {}
    refused(["'betas'", takes], optim, optim_args=f"betas={betas}", **kw)


@pytest.mark.parametrize(
    "optim, optim_args",
    [("adafactor", "eps=(1e-30)"), ("galore_adafactor", "eps=1e-30"), ("adalomo", "eps=(1e-30,1e-3,1)")],
)
def test_wrong_length_tuple_option_refused(optim, optim_args):
    kw = {"optim_target_modules": ["attn"]} if optim == "galore_adafactor" else {}
    refused(["'eps'", "takes 2"], optim, optim_args=optim_args, **kw)


def test_ademamix_takes_two_or_three_betas():
    make("ademamix", optim_args="betas=(0.9,0.99)")
    make("ademamix", optim_args="betas=(0.9,0.99,0.999)")


# -- combinations, checked by the record's own cross-field checks -----------------------------------

@pytest.mark.parametrize(
    "optim, optim_args, names",
    [
        ("adafactor", "warmup_init=true", ["warmup_init", "relative_step=true"]),
        ("sgd", "nesterov=true", ["nesterov", "momentum"]),
        ("sgd", "nesterov=true,momentum=0.9,dampening=0.1", ["nesterov", "dampening"]),
        ("flash_sgd", "nesterov=true,quantize=false", ["nesterov", "momentum"]),
        ("adamw_torch", "foreach=true,fused=true", ["foreach=true", "fused=true"]),
        ("adam", "foreach=true,fused=true", ["foreach=true", "fused=true"]),
        ("sgd", "foreach=true,fused=true", ["foreach=true", "fused=true"]),
        ("adagrad", "foreach=true,fused=true", ["foreach=true", "fused=true"]),
        ("apollo_adamw", "scale_type=channel,proj_type=left", ["scale_type=channel", "proj_type=std"]),
        ("rmsprop_bnb", "centered=true", ["centered", "optim='rmsprop'"]),
        ("rmsprop_bnb_8bit", "momentum=0.5", ["momentum=0.5"]),
        ("ademamix", "betas=(0.9,0.99,0.999),beta3=0.9", ["beta3", "either"]),
        ("came_pytorch", "lr=0", ["lr=0", "> 0"]),
        ("q_galore_adamw8bit", "proj_group_size=0", ["proj_group_size=0", "-1"]),
    ],
)
def test_impossible_combination_refused_when_arguments_are_created(optim, optim_args, names):
    kw = {"optim_target_modules": ["attn"]} if optim in ("apollo_adamw", "q_galore_adamw8bit") else {}
    message = refused(names, optim, optim_args=optim_args, **kw)
    assert message.startswith(f"optim={optim!r}")


def test_valid_combinations_still_pass():
    make("sgd", optim_args="nesterov=true,momentum=0.9")
    make("adafactor", optim_args="warmup_init=true,relative_step=true")
    make("adamw_torch", optim_args="fused=true")


# -- raw errors of another type, now ValueErrors naming the value ----------------------------------

def test_dict_optim_args_with_non_string_keys():
    refused(["1 (int)", "keys must be strings", "Accepted keys"], optim_args={1: 0.1})


def test_unknown_dtype_name():
    message = refused(["'momentum_dtype'", "float33", "bfloat16"], "po_fadam", optim_args="momentum_dtype=float33")
    assert "KeyError" not in message


def test_invalid_regex_inside_target_list():
    refused(["'attn('", "not a valid regular expression", "re.escape"], "galore_adamw",
            optim_target_modules=["mlp", "attn("])


def test_foreach_and_fused_never_reach_torch():
    with pytest.raises(ValueError, match="foreach=true and fused=true"):
        make("adamw_torch", optim_args={"foreach": True, "fused": True})


class _NoDefault(torch.optim.SGD):
    """SGD that insists on being told its momentum."""

    def __init__(self, params, lr=1e-3, *, momentum, tag: str = "x"):
        super().__init__(params, lr=lr, momentum=momentum)


def test_plugin_class_with_required_argument_is_refused_naming_it(tiny_model):
    register_optimizer("t_trust_required", _NoDefault)
    try:
        message = refused(["'momentum'", "optim_args=", "no default"], "t_trust_required")
        assert "momentum=..." in message
        # the way out works: giving it in optim_args builds and trains
        optimizer = create_optimizer(make("t_trust_required", optim_args="momentum=0.9"), tiny_model)
        assert optimizer.param_groups[0]["momentum"] == 0.9
        # the signature's obvious ranges apply to it too
        refused(["'momentum'", "-0.5"], "t_trust_required", optim_args="momentum=-0.5")
    finally:
        unregister_optimizer("t_trust_required")


def _returns_none(ctx):
    return None


def _returns_42(ctx):
    return (42, {})


def _returns_no_dict(ctx):
    return (torch.optim.SGD, [("lr", 0.1)])


@pytest.mark.parametrize("builder, shown", [(_returns_none, "None"), (_returns_42, "(42, {})"),
                                            (_returns_no_dict, "[('lr', 0.1)]")])
def test_plugin_builder_returning_nonsense_is_refused_before_the_model_changes(tiny_model, builder, shown):
    register_optimizer("t_trust_builder", builder)
    try:
        args = make("t_trust_builder")
        before = snapshot(tiny_model)
        with pytest.raises(ValueError) as info:
            create_optimizer(args, tiny_model)
        message = str(info.value)
        assert "'t_trust_builder'" in message and shown in message and "must return" in message
        assert builder.__name__ in message
        assert_untouched(tiny_model, before)
    finally:
        unregister_optimizer("t_trust_builder")


class _NotAnOptimizer:
    """A plain class: not an Optimizer, not a builder."""


def _two_arguments(ctx, other):
    return torch.optim.SGD, {}


@pytest.mark.parametrize("obj, why", [(_NotAnOptimizer, "which is not a torch.optim.Optimizer subclass"),
                                      (_two_arguments, "cannot be called with one argument")])
def test_plugin_that_is_not_a_builder_is_refused_when_registered(obj, why):
    from optim_registry.registry import optimizers

    with pytest.raises(ValueError) as info:
        register_optimizer("t_trust_not_builder", obj)
    for part in ("'t_trust_not_builder'", obj.__qualname__, why, "Optimizer subclass"):
        assert part in str(info.value)
    assert "t_trust_not_builder" not in optimizers


# -- silently accepted before ----------------------------------------------------------------------

def test_json_object_with_a_duplicated_key():
    refused(["'lr'", "given twice"], optim_args='{"lr": 0.1, "amsgrad": true, "lr": 0.2}')


def test_empty_target_pattern():
    refused(["''", "empty pattern", "all-linear"], "galore_adamw", optim_target_modules=["mlp", ""])
    refused(["empty pattern"], "galore_adamw", optim_target_modules="")


def test_target_patterns_matching_only_frozen_weights_refused_at_build(tiny_model):
    for name, p in tiny_model.named_parameters():
        if "mlp" in name:
            p.requires_grad_(False)
    before = snapshot(tiny_model)
    with pytest.raises(ValueError) as info:
        create_optimizer(make("galore_adamw", optim_target_modules=[r".*mlp.*"]), tiny_model)
    message = str(info.value)
    assert "frozen" in message and ".*mlp.*" in message and "mlp.gate_proj" in message
    assert "self_attn" in message  # trainable modules it could target instead
    assert_untouched(tiny_model, before)
    # a pattern that reaches some trainable weights still builds
    create_optimizer(make("galore_adamw", optim_target_modules=["mlp", "self_attn"]), tiny_model)


def test_target_modules_given_to_an_optimizer_that_ignores_them_warn_once():
    from optim_registry.plan import IgnoredTargetModulesWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default: once per message and location
        make("sgd", optim_target_modules=["t_trust_warn_attn"])
        make("sgd", optim_target_modules=["t_trust_warn_attn"])
    said = [w for w in caught if "t_trust_warn_attn" in str(w.message)]
    assert len(said) == 1 and "optim='sgd'" in str(said[0].message) and "ignored" in str(said[0].message)
    assert said[0].category is IgnoredTargetModulesWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IgnoredTargetModulesWarning)  # the warnings machinery decides, not us
        make("sgd", optim_target_modules=["t_trust_warn_attn"])
        make("sgd", optim_target_modules=["t_trust_warn_attn"])
    assert len([w for w in caught if "t_trust_warn_attn" in str(w.message)]) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make("galore_adamw", optim_target_modules=["t_trust_warn_attn"])
    assert not [w for w in caught if "t_trust_warn_attn" in str(w.message)]


# -- unclear messages ------------------------------------------------------------------------------

def test_empty_key_lists_the_accepted_keys():
    refused(["'=1'", "empty key", "Accepted keys: amsgrad"], optim_args="=1")
    refused(["empty key", "Accepted keys"], optim_args={"": 1})


@pytest.mark.parametrize("raw, where", [("betas=(0.9,0.95", "never closed"), ("betas=0.9,0.95)", "closes no")])
def test_unbalanced_brackets_show_the_fix(raw, where):
    refused([where, "betas=(0.9,0.95)", "Accepted keys"], optim_args=raw)


@pytest.mark.parametrize(
    "raw",
    [
        "x" * 100_000 + "=1",
        "amsgrad=" + "y" * 100_000,
        "betas=(" + "0.9," * 30_000 + "0.9)",
        "{" + '"lr": 1,' * 20_000 + '"lr": 1}',
        "{" + '"k": ' * 20_000,
        "0.9" * 30_000,
    ],
)
def test_very_long_inputs_are_cut_in_messages(raw):
    with pytest.raises(ValueError) as info:
        make(optim_args=raw)
    assert len(str(info.value)) < 600, str(info.value)[:800]
    assert "characters)" in str(info.value)


def test_very_long_target_patterns_and_deepspeed_values_are_cut():
    with pytest.raises(ValueError) as info:
        make("galore_adamw", optim_target_modules=["(" * 50_000])
    assert len(str(info.value)) < 600
    with pytest.raises(ValueError) as info:
        make(deepspeed="{" * 50_000)
    assert len(str(info.value)) < 600


def test_key_suggestions_ignore_letter_case():
    message = refused(["'LR'", "Did you mean 'lr'?"], optim_args="LR=1")
    assert "amsgrad'?" not in message


def test_optimizer_name_suggestions_ignore_letter_case():
    args = make()
    with pytest.raises(ValueError) as info:
        args.set_optimizer("AdamW")
    assert "'AdamW'" in str(info.value) and "adamw_torch" in str(info.value)
    refused(["'SGD'", "sgd"], "SGD")


def test_invalid_deepspeed_json_string(tmp_path):
    with pytest.raises(ValueError) as info:
        make(deepspeed='{"zero_optimization": {"stage": 2,}}')
    assert type(info.value) is ValueError  # not a bare json.JSONDecodeError
    assert not isinstance(info.value, json.JSONDecodeError)
    message = str(info.value)
    assert "deepspeed=" in message and "zero_optimization" in message and "line 1, column" in message
    bad = tmp_path / "ds.json"
    bad.write_text("{'stage': 2}")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        make(deepspeed=str(bad))


# -- a refused set_optimizer leaves the arguments as they were ------------------------------------

@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("galore_adamw", {}),  # needs optim_target_modules
        ("sgd", {"learning_rate": float("inf")}),
        ("adamw_torch", {"beta2": 1.0}),
        ("AdamW", {}),
    ],
)
def test_refused_set_optimizer_changes_nothing(name, kwargs):
    args = make("lion_32bit", learning_rate=3e-4, weight_decay=0.1, optim_args="betas=(0.95,0.98)")
    before = args.to_dict()
    with pytest.raises(ValueError):
        args.set_optimizer(name, **kwargs)
    assert args.to_dict() == before
    assert args.optim == before["optim"] and args.learning_rate == 3e-4
    args.set_optimizer("sgd", learning_rate=0.1)  # a valid choice still applies
    assert args.optim == "sgd" and args.learning_rate == 0.1


class _ThreeBetas(torch.optim.Adam):
    """Adam-like, with a third beta in its betas (as AdEMAMix)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), eps=1e-8, gain: float = 1.0):
        super().__init__(params, lr=lr, betas=betas[:2], eps=eps)


def test_plugin_options_typed_from_the_signature_get_ranges_and_lengths():
    from optim_registry import get_optimizer_cls_and_kwargs

    register_optimizer("t_trust_three_betas", _ThreeBetas)
    try:
        refused(["'betas'", "takes 3 numbers"], "t_trust_three_betas", optim_args="betas=(0.9,0.99)")
        refused(["eps=-1.0", "'eps'"], "t_trust_three_betas", optim_args="eps=-1")
        refused(["gain=nan", "finite"], "t_trust_three_betas", optim_args="gain=nan")
        refused(["'betas'", "-0.9"], "t_trust_three_betas", optim_args="betas=(-0.9,0.99,0.999)")
        # TrainingArguments' two Adam betas never reach a three-beta constructor
        _, kwargs = get_optimizer_cls_and_kwargs(make("t_trust_three_betas", adam_beta1=0.5))
        assert "betas" not in kwargs
        _, kwargs = get_optimizer_cls_and_kwargs(make("t_trust_three_betas", optim_args="betas=(0.8,0.9,0.99)"))
        assert kwargs["betas"] == (0.8, 0.9, 0.99)
    finally:
        unregister_optimizer("t_trust_three_betas")
