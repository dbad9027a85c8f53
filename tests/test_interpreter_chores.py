"""The interpreter does the chores from record fields; builders keep only what is special; names are data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from optim_registry import TrainingArguments, get_optimizer_cls_and_kwargs
from optim_registry.build import make_context
from optim_registry.compare import DEFAULT_LR, learning_rate
from optim_registry.listing import layerwise_twin
from optim_registry.registry import optimizers
from optim_registry.runnable import on_cpu

ROOT = Path(__file__).resolve().parents[1]


def _args(optim: str, **kw) -> TrainingArguments:
    kw.setdefault("weight_decay", 0.05)
    return TrainingArguments(output_dir="unused", optim=optim, report_to=[], use_cpu=True, **kw)


def test_options_hold_every_default_and_kwargs_only_what_is_sent():
    ctx = make_context(_args("sgd", optim_args="dampening=0.1"))
    declared = {o.name for o in ctx.spec.options}
    assert set(ctx.options) == declared and ctx.options["dampening"] == 0.1
    sent = {o.name for o in ctx.spec.options if o.send} | {"dampening"}
    assert {k for k in ctx.kwargs if k in declared} == sent
    unsent = declared - sent
    assert unsent and all(ctx.options[k] == ctx.spec.option_map[k].default for k in unsent)


@pytest.mark.filterwarnings("ignore::optim_registry.deps.MissingDependencyWarning")  # torchdistx: not on PyPI
def test_dtype_defaults_arrive_as_torch_dtypes():
    ctx = make_context(_args("adamw_anyprecision"))
    assert ctx.options["momentum_dtype"] is torch.float32
    assert ctx.kwargs["compensation_buffer_dtype"] is torch.bfloat16


def test_weight_decay_is_passed_from_the_record_field(tiny_model):
    # optimi's own default (0.01) must not apply to a plain parameter list: the record says so.
    _, kwargs = get_optimizer_cls_and_kwargs(_args("optimi_adamw"), tiny_model)
    assert optimizers.get("optimi_adamw").weight_decay_kwarg and kwargs["weight_decay"] == 0.05
    # transformers' own names keep transformers' kwargs exactly (the groups carry the decay).
    _, kwargs = get_optimizer_cls_and_kwargs(_args("adamw_torch"), tiny_model)
    assert "weight_decay" not in kwargs


def test_groups_are_computed_for_records_built_with_the_model(tiny_model):
    ctx = make_context(_args("lomo"), tiny_model)
    assert ctx.spec.needs_model and ctx.groups
    assert {id(p) for g in ctx.groups for p in g["params"]} == {id(p) for p in tiny_model.parameters()}


def test_one_device_rule(tiny_model):
    assert on_cpu(tiny_model) is True  # where the parameters are
    assert on_cpu(None, _args("sgd")) is True  # use_cpu
    assert make_context(_args("paged_ademamix_8bit"), tiny_model).on_cpu is True


def test_betas_count_comes_from_num_betas():
    with pytest.raises(ValueError, match="betas"):
        _args("came_pytorch", optim_args="betas=(0.9,0.99,0.999)")
    assert make_context(_args("ademamix", optim_args="betas=(0.9,0.99,0.999)")).hparams["betas"] == (0.9, 0.99, 0.999)


def test_demo_rates_are_record_fields_shared_by_twins():
    assert learning_rate("paged_lion_8bit") == optimizers.get("paged_lion_8bit").demo_lr == 4e-3
    assert learning_rate("sgd_layerwise") == learning_rate("sgd") == 0.5
    assert learning_rate("adamw_torch") == DEFAULT_LR
    assert learning_rate("sgd", overrides={"*": 0.3}) == 0.3


def test_layerwise_twin_is_found_by_its_base_field():
    assert layerwise_twin("adamw_torch") == "adamw_torch_layerwise"
    assert optimizers.get(layerwise_twin("adamw_torch")).base == "adamw_torch"
    assert layerwise_twin("lomo") is None  # no twin: it steps inside backward already


def test_no_family_module_compares_a_record_name():
    pattern = re.compile(r"\.name\s*(==|!=|in\b)|builder\s*(==|in\b)")
    # The code a family's records name (builders, subclasses); records.py / catalog.py are the data itself.
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "optim_registry" / "families").rglob("*.py"))
        if path.name not in ("records.py", "catalog.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_every_builtin_builder_is_listed_with_its_reason_in_the_docs():
    builders: dict[str, int] = {}
    for spec in optimizers.builtin().values():
        if spec.builder is not None and not spec.layerwise and spec.base is None:
            builders[str(spec.builder)] = builders.get(str(spec.builder), 0) + 1
    table = dict(re.findall(r"^\| `([\w.:]+)` \| (\d+) \|", (ROOT / "docs" / "plugins.md").read_text(), re.M))
    assert {k: int(v) for k, v in table.items()} == builders
