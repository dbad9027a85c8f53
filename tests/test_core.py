"""The registry core: names, typed optim_args, target modules, errors, lazy import, Trainer seams."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import optim_registry
from optim_registry import (
    OptimTrainer,
    create_optimizer,
    get_optimizer_cls_and_kwargs,
    list_optimizers,
)
from optim_registry.testing import arguments, check_optimizer, tiny_model

OPTIMIZER_PACKAGES = (
    "bitsandbytes", "galore_torch", "apollo_torch", "q_galore_torch", "lomo_optim", "schedulefree", "optimi",
    "grokadamw", "torchao", "flashoptim", "came_pytorch", "pytorch_optimizer", "muon", "triton",
)


def args(optim="adamw_torch", **kw):
    return arguments(optim, **kw)


def test_import_loads_no_optimizer_package():
    code = (
        "import sys, optim_registry\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in %r or m.split('.')[0] in ('torch', 'transformers'))\n"
        "print(bad)" % (OPTIMIZER_PACKAGES,)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_resolving_a_name_imports_only_that_family():
    # transformers itself imports some of these packages when they are installed (peft pulls in
    # bitsandbytes and torchao): only what resolving the name adds beyond a stock TrainingArguments counts.
    code = (
        "import sys, transformers\n"
        "transformers.TrainingArguments('x', report_to=[], use_cpu=True)\n"
        "before = {m.split('.')[0] for m in sys.modules}\n"
        "from optim_registry import TrainingArguments, get_optimizer_cls_and_kwargs\n"
        "a = TrainingArguments('x', optim='sgd', report_to=[], use_cpu=True)\n"
        "get_optimizer_cls_and_kwargs(a)\n"
        "print(sorted(({m.split('.')[0] for m in sys.modules} - before) & set(%r)))" % (OPTIMIZER_PACKAGES,)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_builtin_tables_are_sorted():
    from optim_registry.families import FAMILIES

    root = Path(optim_registry.__file__).parent / "families"
    for family in FAMILIES:
        path = root / family / "records.py"
        if not path.exists():
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RECORDS" for t in node.targets):
                names = [
                    kw.value.value
                    for call in node.value.elts
                    if isinstance(call, ast.Call)
                    for kw in call.keywords
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant)
                ]
                assert names == sorted(names), f"{family}.RECORDS is not sorted: {names}"


def test_optimizer_names_enum_matches_registry():
    from optim_registry.registry import builtin_names

    assert sorted(m.value for m in optim_registry.OptimizerNames) == builtin_names()
    assert issubclass(optim_registry.OptimizerNames, str)


def test_unknown_optim_names_closest():
    with pytest.raises(ValueError, match=r"Unknown optim 'adamw_troch'.*adamw_torch"):
        args("adamw_troch")


def test_unknown_scheduler_names_closest():
    with pytest.raises(ValueError, match=r"Unknown lr_scheduler_type 'cosin'.*cosine"):
        args(lr_scheduler_type="cosin")


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("momentum=0.9, nesterov=yes,", {"momentum": 0.9, "nesterov": True}),
        ("momentum = 1e-1 ,nesterov=FALSE", {"momentum": 0.1, "nesterov": False}),
        ({"momentum": "0.5", "nesterov": 1}, {"momentum": 0.5, "nesterov": True}),
        ('{"momentum": 0.25}', {"momentum": 0.25}),
        ("foreach=none", {"foreach": None}),
        ("", {}),
    ],
)
def test_optim_args_typed(raw, expected):
    cls, kwargs = get_optimizer_cls_and_kwargs(args("sgd", optim_args=raw))
    assert cls is torch.optim.SGD
    for key, value in expected.items():
        assert kwargs[key] == value and type(kwargs[key]) is type(value)


def test_optim_args_override_hyperparameters():
    cls, kwargs = get_optimizer_cls_and_kwargs(args("adamw_torch", optim_args="betas=(0.8,0.95),eps=1e-6"))
    assert kwargs["betas"] == (0.8, 0.95) and kwargs["eps"] == 1e-6


def test_weight_decay_override_reaches_the_groups(tiny_model):
    opt = create_optimizer(args("adamw_torch", weight_decay=0.0, optim_args="weight_decay=0.3"), tiny_model)
    assert sorted({g["weight_decay"] for g in opt.param_groups}) == [0.0, 0.3]


@pytest.mark.parametrize(
    "raw, match",
    [
        ("momentun=0.9", r"'momentun' is not accepted by optim='sgd'\. Did you mean 'momentum'\?"),
        ("momentum=fast", r"'momentum': 'fast' is not a valid number"),
        ("nesterov=maybe", r"'nesterov': 'maybe' is not a valid boolean"),
        ("momentum", r"token 'momentum' has no '='"),
        ("momentum=0.9,momentum=0.8", r"'momentum' is given twice"),
        ("betas=(0.9,0.99", r"unbalanced"),
    ],
)
def test_bad_optim_args_raise_at_arguments_creation(raw, match):
    with pytest.raises(ValueError, match=match):
        args("sgd", optim_args=raw)


def test_unknown_key_lists_accepted_keys_closest_first():
    with pytest.raises(ValueError) as err:
        args("sgd", optim_args="nesterow=1")
    accepted = str(err.value).split("closest first): ")[1].split(", ")
    assert accepted[0] == "nesterov" and "momentum" in accepted and "lr" in accepted


def test_comma_inside_a_value_needs_brackets():
    cls, kwargs = get_optimizer_cls_and_kwargs(args("adafactor", optim_args="eps=(1e-30,1e-3)"))
    assert kwargs["eps"] == (1e-30, 1e-3)


def test_missing_package_error_names_pip_line():
    from optim_registry import register_optimizer
    from optim_registry.registry import unregister_optimizer
    from optim_registry.spec import OptimizerSpec, Requirement

    spec = OptimizerSpec(
        name="needs_absent_pkg", target="absent_pkg_xyz:Opt", family="test", description="t",
        requires=(Requirement("absent-pkg-xyz", "absent_pkg_xyz", extra="absent"),),
    )
    register_optimizer("needs_absent_pkg", spec)
    try:
        # The stock class accepts arguments naming an optimizer that is not installed here (they may be
        # trained elsewhere): creating them warns, building refuses, naming the pip line both times.
        message = r"optim='needs_absent_pkg' needs absent-pkg-xyz.*pip install absent-pkg-xyz"
        with pytest.warns(UserWarning, match=message):
            a = args("needs_absent_pkg")
        with pytest.raises(ImportError, match=message):
            get_optimizer_cls_and_kwargs(a)
        with pytest.raises(ImportError, match=message):
            OptimTrainer(model=tiny_model(), args=a).create_optimizer()
        info = {i.name: i for i in list_optimizers()}["needs_absent_pkg"]
        assert info.available is False and info.install == "pip install absent-pkg-xyz"
    finally:
        unregister_optimizer("needs_absent_pkg")


def test_list_optimizers_records():
    infos = {i.name: i for i in list_optimizers()}
    sgd = infos["sgd"]
    assert sgd.available and sgd.source == "builtin" and sgd.requires == []
    assert sgd.options["momentum"] == {"type": "float", "default": 0.0, "help": "momentum factor", "valid": "[0, 1)"}
    assert "adamw_torch_layerwise" in infos and infos["adamw_torch_layerwise"].layerwise


# -- target modules ----------------------------------------------------------------------------------


def test_target_module_semantics():
    from optim_registry.labels import module_matches

    name = "model.layers.0.self_attn.q_proj"
    assert module_matches(r".*attn.*", name)
    assert not module_matches(r"attn", name)  # a string is a full-match regex
    assert module_matches(["attn"], name)  # a list matches by substring
    assert module_matches([r".*q_proj"], name)
    assert module_matches([name], name)


def test_target_modules_matching_nothing_names_patterns_and_modules(tiny_model):
    from optim_registry.labels import target_linear_weights

    with pytest.raises(ValueError, match=r"\['nothing_here'\] matches no nn.Linear.*q_proj"):
        target_linear_weights(tiny_model, ["nothing_here"], subject="t")
    with pytest.raises(ValueError, match=r"needs `optim_target_modules`.*q_proj"):
        target_linear_weights(tiny_model, None, subject="t")


def test_all_linear_skips_the_head(tiny_model):
    from optim_registry.labels import target_linear_weights

    names = target_linear_weights(tiny_model, "all-linear", subject="t")
    assert "lm_head.weight" not in names and "model.layers.0.self_attn.q_proj.weight" in names


def test_decay_split_matches_transformers(tiny_model):
    from transformers import Trainer

    from optim_registry.labels import decay_parameter_names

    stock = set(Trainer.get_decay_parameter_names(None, tiny_model))
    assert decay_parameter_names(tiny_model) == stock


# -- parity with the stock Trainer ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adamw_torch", "adamw_torch_fused", "sgd", "adagrad", "rmsprop", "adafactor"])
def test_torch_native_matches_stock_trainer(name, tiny_model):
    import transformers

    stock_args = transformers.TrainingArguments("unused", optim=name, report_to=[], use_cpu=True)
    ours_args = args(name)
    stock = transformers.Trainer.get_optimizer_cls_and_kwargs(stock_args, tiny_model)
    ours = get_optimizer_cls_and_kwargs(ours_args, tiny_model)
    assert ours[0] is stock[0]
    assert ours[1] == stock[1]


def test_stock_trainer_consumes_our_resolution(tiny_model, token_data, tmp_path):
    """get_optimizer_cls_and_kwargs keeps transformers' contract: a stock Trainer can use it."""
    import transformers

    class Stock(transformers.Trainer):
        get_optimizer_cls_and_kwargs = staticmethod(get_optimizer_cls_and_kwargs)

    a = args("sgd", output_dir=str(tmp_path), optim_args="momentum=0.9", max_steps=2, learning_rate=0.1)
    trainer = Stock(model=tiny_model, args=a, train_dataset=token_data)
    trainer.train()
    assert type(trainer.optimizer.optimizer) is torch.optim.SGD
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.9


# -- Trainer seams ---------------------------------------------------------------------------------------


def test_prebuilt_optimizers_are_used(tiny_model, token_data, tmp_path):
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    trainer = OptimTrainer(model=tiny_model, args=args(output_dir=str(tmp_path), max_steps=1),
                           train_dataset=token_data, optimizers=(opt, sched))
    trainer.train()
    assert trainer.optimizer.optimizer is opt and trainer.lr_scheduler is sched


def test_optimizer_cls_and_kwargs_is_used(tiny_model, token_data, tmp_path):
    trainer = OptimTrainer(model=tiny_model, args=args(output_dir=str(tmp_path), max_steps=1,
                                                       lr_scheduler_type="constant"),
                           train_dataset=token_data, optimizer_cls_and_kwargs=(torch.optim.Adagrad, {"lr": 0.02}))
    trainer.train()
    assert type(trainer.optimizer.optimizer) is torch.optim.Adagrad
    assert trainer.get_learning_rates() == [0.02, 0.02]


def test_subclass_adds_a_group_with_super(tiny_model, token_data, tmp_path):
    extra = torch.nn.Parameter(torch.ones(3))

    class WithExtra(OptimTrainer):
        def create_optimizer(self, model=None):
            optimizer = super().create_optimizer(model)
            optimizer.add_param_group({"params": [extra], "lr": 0.5, "weight_decay": 0.0})
            return optimizer

    trainer = WithExtra(model=tiny_model, args=args("sgd", output_dir=str(tmp_path), max_steps=1),
                        train_dataset=token_data)
    trainer.create_optimizer()
    assert trainer.get_optimizer_group(extra)["lr"] == 0.5
    assert len(trainer.get_learning_rates()) == 3


def test_stock_arguments_work_with_optim_trainer(tiny_model, token_data, tmp_path):
    import transformers

    a = transformers.TrainingArguments(str(tmp_path), optim="sgd", max_steps=2, report_to=[], use_cpu=True,
                                       optim_args="momentum=0.9")
    trainer = OptimTrainer(model=tiny_model, args=a, train_dataset=token_data)
    trainer.train()
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.9


def test_arguments_serialise():
    a = args("sgd", optim_args={"momentum": 0.9}, lr_scheduler_type="cosine")
    d = a.to_dict()
    assert d["optim"] == "sgd" and d["lr_scheduler_type"] == "cosine"
    assert '"optim": "sgd"' in a.to_json_string()
    a.set_optimizer("adagrad", learning_rate=0.1)
    assert a.optim == "adagrad" and a.learning_rate == 0.1


def test_bad_target_modules_leave_model_untouched(tmp_path):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    a = args("adamw_torch", output_dir=str(tmp_path))
    a.optim_target_modules = ["nothing"]

    from optim_registry.registry import optimizers

    # a record that needs target modules, registered for this test
    spec = optimizers.get("adamw_torch").variant(name="t_targets", target_modules=True)
    optim_registry.register_optimizer("t_targets", spec)
    try:
        a.optim = "t_targets"
        with pytest.raises(ValueError, match="matches no nn.Linear"):
            create_optimizer(a, model)
    finally:
        optim_registry.unregister_optimizer("t_targets")
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters())


# -- conformance ---------------------------------------------------------------------------------------


TORCH_NATIVE = ["adafactor", "adafactor_torch", "adagrad", "adam", "adamax", "adamw_torch", "adamw_torch_fused",
                "nadam", "radam", "rmsprop", "sgd"]


@pytest.mark.harness
@pytest.mark.parametrize("name", TORCH_NATIVE)
def test_conformance_torch_native(name, tmp_path):
    report = check_optimizer(name, workdir=str(tmp_path))
    assert report.ok, report.failures


def test_adafactor_relative_step_uses_its_own_schedule(tiny_model, token_data, tmp_path):
    a = args("adafactor", output_dir=str(tmp_path), optim_args="relative_step=true,warmup_init=true", max_steps=2)
    trainer = OptimTrainer(model=tiny_model, args=a, train_dataset=token_data)
    trainer.train()
    from transformers.optimization import AdafactorSchedule

    assert isinstance(trainer.lr_scheduler, AdafactorSchedule)
    assert trainer.optimizer.optimizer.defaults["lr"] is None
    assert trainer.optimizer.optimizer.defaults["relative_step"] is True
