"""The last raw errors (issue 22): each mistake is one exception of the documented type, naming the value, raised
when the arguments are created or the name is registered (not a TypeError when training starts)."""

from __future__ import annotations

import pytest
import torch

from optim_registry import create_optimizer, register_optimizer, register_scheduler, unregister_optimizer
from optim_registry.plugins import PluginError
from optim_registry.registry import optimizers
from optim_registry.schedulers import schedulers
from optim_registry.spec import OptimizerSpec, Option
from optim_registry.testing import arguments


def step(model, optimizer, steps=2):
    for _ in range(steps):
        ids = torch.arange(12).reshape(2, 6) % 32
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


# -- options typed "any" ------------------------------------------------------------------------------------


def test_adafactor_torch_eps_is_a_pair_of_numbers(tiny_model):
    with pytest.raises(ValueError, match=r"key 'eps': 'abc' is not a valid tuple of numbers"):
        arguments("adafactor_torch", optim_args="eps=abc")
    with pytest.raises(ValueError, match=r"key 'eps': \(0.001,\) has 1 number\(s\); it takes 2 numbers"):
        arguments("adafactor_torch", optim_args="eps=(0.001)")
    with pytest.raises(ValueError, match=r"eps=\(None,-1.0\) is out of range"):
        arguments("adafactor_torch", optim_args="eps=(none,-1)")
    opt = create_optimizer(arguments("adafactor_torch", optim_args="eps=(none,1e-3)"), tiny_model)
    assert opt.param_groups[0]["eps"] == (None, 1e-3)
    step(tiny_model, opt)


@pytest.mark.parametrize("name", ["po_adopt", "po_adopt_layerwise"])
def test_a_callable_option_is_refused_as_a_string_and_taken_as_a_function(name, tiny_model):
    pytest.importorskip("pytorch_optimizer")
    extra = {"max_grad_norm": 0.0} if name.endswith("_layerwise") else {}
    with pytest.raises(ValueError, match=r"key 'clip_lambda': 'abc' is a string, but 'clip_lambda' takes a function"):
        arguments(name, optim_args="clip_lambda=abc", **extra)
    with pytest.raises(ValueError, match=r"key 'clip_lambda': 3 \(int\) is not callable"):
        arguments(name, optim_args={"clip_lambda": 3}, **extra)
    calls = []

    def clip(step):
        calls.append(step)
        return step**0.25

    opt = create_optimizer(arguments(name, optim_args={"clip_lambda": clip}, **extra), tiny_model)
    step(tiny_model, opt, steps=2)  # ADOPT clips from its second step on
    assert calls


def test_object_options_are_refused_as_strings():
    pytest.importorskip("pytorch_optimizer")
    with pytest.raises(ValueError, match=r"key 'norm_kwargs': 'abc' is a string, but 'norm_kwargs' takes a Python object"):
        arguments("po_scion", optim_args="norm_kwargs=abc")


def test_no_builtin_option_is_untyped():
    """'any' types a string as it reads (a plugin option its constructor says nothing about); no built-in has one."""
    untyped = [(spec.name, o.name) for spec in optimizers.builtin().values() for o in spec.options if o.type == "any"]
    untyped += [(spec.name, o.name) for spec in schedulers.builtin().values() for o in spec.options if o.type == "any"]
    assert not untyped


def test_a_rate_or_one_per_group_is_a_number_or_a_tuple():
    from optim_registry.plan import plan_of

    evaluating = {"eval_strategy": "steps", "eval_steps": 1}
    with pytest.raises(ValueError, match=r"key 'min_lr': 'abc' is not a valid number, or tuple of numbers"):
        arguments("sgd", lr_scheduler_type="greedy", lr_scheduler_kwargs="min_lr=abc", **evaluating)
    args = arguments("sgd", lr_scheduler_type="greedy", lr_scheduler_kwargs="min_lr=(1e-5,1e-6)", **evaluating)
    assert plan_of(args).schedule_kwargs["min_lr"] == (1e-5, 1e-6)


# -- what a plugin points at -----------------------------------------------------------------------------


def test_a_class_that_is_no_optimizer_is_refused_when_registered():
    before = optimizers.names()
    with pytest.raises(PluginError, match=r"'t_raw_int'.*the class int, which is not a torch.optim.Optimizer subclass"):
        register_optimizer("t_raw_int", int)
    assert optimizers.names() == before


class _KeywordOnly(torch.optim.SGD):
    def __init__(self, params, lr=0.1, *, scale):
        super().__init__(params, lr=lr * scale)


def test_a_constructor_argument_the_registry_never_passes_is_refused_when_registered():
    with pytest.raises(PluginError, match=r"_KeywordOnly.__init__ needs keyword-only argument 'scale' without a default"):
        register_optimizer("t_raw_kw", _KeywordOnly, options=())
    with pytest.raises(PluginError, match=r"needs keyword-only argument 'scale'"):
        register_optimizer("t_raw_kw", OptimizerSpec(name="t_raw_kw", target=_KeywordOnly, family="test",
                                                     description="no scale"))
    assert "t_raw_kw" not in optimizers
    # typed from its signature, the argument is an option the arguments must give
    register_optimizer("t_raw_kw", _KeywordOnly)
    try:
        with pytest.raises(ValueError, match=r"needs optim_args key\(s\) 'scale'"):
            arguments("t_raw_kw")
        register_optimizer("t_raw_kw2", OptimizerSpec(name="t_raw_kw2", target=_KeywordOnly, family="test",
                                                      description="scale declared",
                                                      options=(Option("scale", "float", required=True),)))
        assert arguments("t_raw_kw2", optim_args="scale=2").optim == "t_raw_kw2"
    finally:
        unregister_optimizer("t_raw_kw")
        unregister_optimizer("t_raw_kw2")


def test_a_builder_that_cannot_take_the_context_is_refused_when_registered():
    with pytest.raises(PluginError, match=r"'t_raw_builder'.*cannot be called with one argument"):
        register_optimizer("t_raw_builder", lambda: None)
    assert "t_raw_builder" not in optimizers


def test_a_scheduler_that_cannot_take_the_optimizer_is_refused_when_registered():
    before = schedulers.names()
    with pytest.raises(PluginError, match=r"'t_raw_sched'.*<lambda>\(\), which takes no positional argument for the "
                                          r"optimizer"):
        register_scheduler("t_raw_sched", lambda: None)
    with pytest.raises(PluginError, match=r"the class int, which is not a torch.optim.lr_scheduler.LRScheduler"):
        register_scheduler("t_raw_sched", int)
    assert schedulers.names() == before


# -- the setters -----------------------------------------------------------------------------------------------


def test_set_optimizer_with_a_rate_that_is_no_number_names_the_key_and_the_fix():
    args = arguments("adamw_torch", learning_rate=2e-4)
    before = dict(vars(args))
    with pytest.raises(ValueError, match=r"TrainingArguments.learning_rate='abc' is not a number; give a number, e.g. "
                                         r"learning_rate=1e-3 \(set_optimizer\(name, learning_rate=1e-3\) sets it\)"):
        args.set_optimizer("sgd", learning_rate="abc")
    assert vars(args) == before
    with pytest.raises(ValueError, match=r"adam_beta1='x' is not a number.*set_optimizer\(name, beta1=0.9\)"):
        args.set_optimizer("adamw_torch", beta1="x")
    assert vars(args) == before


def test_a_refused_set_lr_scheduler_leaves_every_field_as_it_was():
    args = arguments("adamw_torch", lr_scheduler_type="cosine", max_steps=10, warmup_steps=2)
    before = dict(vars(args))
    with pytest.raises(ValueError, match=r"'reduce_lr_on_plateau' changes the rate from evaluation results"):
        args.set_lr_scheduler("reduce_lr_on_plateau", max_steps=7, warmup_steps=1)
    assert vars(args) == before
    with pytest.raises(ValueError, match=r"Unknown lr_scheduler_type 'cosin'"):
        args.set_lr_scheduler("cosin", max_steps=7)
    assert vars(args) == before
    args.set_lr_scheduler("linear", max_steps=7)
    assert args.max_steps == 7 and args.lr_scheduler_type == "linear"
