"""The arguments are resolved once (issue 22): one plan per arguments object, made again only when a field it
read changes, never written back into the arguments."""

from __future__ import annotations

import sys

import pytest

from optim_registry import OptimTrainer, optim_args
from optim_registry.plan import check_scheduler_args, make_plan, plan_of
from optim_registry.testing import TokenDataset, arguments, tiny_model, training_args


def parses(fn) -> int:
    """How many times ``optim_args`` is parsed (``optim_args.to_mapping`` entered for it) while ``fn`` runs."""
    code = optim_args.to_mapping.__code__
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event == "call" and frame.f_code is code and frame.f_locals.get("where") == "optim_args":
            count += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def test_optim_args_is_parsed_once_per_arguments_object_through_a_whole_train(tmp_path):
    made = []

    def make():
        made.append(training_args("adamw_torch", str(tmp_path), "foreach=false", max_steps=2,
                                  save_strategy="steps", save_steps=2))

    assert parses(make) == 1
    args = made[0]
    trainer = OptimTrainer(model=tiny_model(), args=args, train_dataset=TokenDataset())
    # build, schedule, checkpoint manifest, layer-wise factory, runnable checks: all read the one plan
    assert parses(trainer.train) == 0
    resumed = OptimTrainer(model=tiny_model(), args=args, train_dataset=TokenDataset())
    assert parses(lambda: resumed.train(resume_from_checkpoint=True)) == 0  # the resume check reads it too
    # a setter changes what the arguments mean: one more parse, then none again
    assert parses(lambda: args.set_optimizer("sgd", learning_rate=0.05)) == 1
    again = OptimTrainer(model=tiny_model(), args=args, train_dataset=TokenDataset())
    assert parses(lambda: again.train()) == 0
    assert type(again.optimizer.optimizer).__name__ == "SGD"


def test_the_plan_is_never_stale():
    args = arguments("sgd", optim_args={"momentum": 0.9})
    first = plan_of(args)
    assert plan_of(args) is first
    args.optim_args["momentum"] = 0.5  # changed in place: the snapshot of what the plan read sees it
    assert plan_of(args).given["momentum"] == 0.5
    args.optim_args = "momentum=0.1,nesterov=true"  # assigned directly, past the setters
    assert dict(plan_of(args).given) == {"momentum": 0.1, "nesterov": True}
    args.learning_rate = 0.25
    assert plan_of(args).hparams["lr"] == 0.25 and plan_of(args).kwargs["lr"] == 0.25
    args.optim_args = "momentum=abc"
    with pytest.raises(ValueError, match="momentum.*'abc'"):
        plan_of(args)


def test_the_plan_follows_the_registry():
    import torch

    from optim_registry import register_optimizer, unregister_optimizer

    register_optimizer("t_plan_name", torch.optim.SGD)
    try:
        args = arguments("t_plan_name")
        assert plan_of(args).spec.target is torch.optim.SGD
        unregister_optimizer("t_plan_name")
        register_optimizer("t_plan_name", torch.optim.Adam)
        assert plan_of(args).spec.target is torch.optim.Adam
    finally:
        unregister_optimizer("t_plan_name")


def test_resolving_never_writes_to_the_arguments():
    args = arguments("adamw_torch", lr_scheduler_type="reduce_lr_on_plateau", eval_strategy="steps", eval_steps=1)
    assert args.metric_for_best_model == "loss"  # the arguments' own default, set when they were made
    args.metric_for_best_model = None
    before = dict(vars(args))
    check_scheduler_args(args, 10, strict=True)
    make_plan(args)
    assert vars(args) == before

    class Writes:
        def __getattr__(self, name):
            return getattr(args, name)

    import optim_registry.plan as plan_module

    view = plan_module._Reads(Writes())
    with pytest.raises(AttributeError, match="never changes them"):
        view.optim_args = "momentum=1"
