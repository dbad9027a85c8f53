"""Scheduler trust: what the stock classes accept is accepted, every scheduler mistake the arguments show is
refused when they are created (naming key, value and range), the rest before the optimizer is built, and
metric-driven schedulers honour warmup_steps."""

from __future__ import annotations

import io
import math

import pytest
import torch
from transformers.optimization import get_scheduler

from optim_registry import OptimTrainer, TrainingArguments, create_scheduler
from optim_registry.plan import check_scheduler_args
from optim_registry.schedulers import schedulers
from optim_registry.testing import TokenDataset, arguments, tiny_model, training_args

N, W, LR = 20, 3, 0.1


def targs(name, kwargs=None, warmup=W, **kw):
    return arguments(lr_scheduler_type=name, lr_scheduler_kwargs=kwargs, warmup_steps=warmup, learning_rate=LR, **kw)


def sgd(lr=LR):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def rates(optimizer, scheduler, steps, metrics=None):
    out = []
    for i in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step(metrics[i]) if metrics is not None else scheduler.step()
    return out


EVAL = {"eval_strategy": "steps", "eval_steps": 1}


# -- what the stock classes accept ------------------------------------------------------------------------------
def test_stock_dict_field_parsing_is_accepted():
    """transformers' test_dict_field_parsing: any key is accepted when the arguments are created, because
    set_lr_scheduler may still pick the scheduler that takes it."""
    args = TrainingArguments(output_dir="tmp", lr_scheduler_kwargs='{"factor": 0.5}', report_to=None)
    assert args.lr_scheduler_kwargs == {"factor": 0.5}
    args = TrainingArguments(output_dir="tmp", lr_scheduler_kwargs='{"factor": 0.5}', report_to=None, **EVAL)
    args.set_lr_scheduler("reduce_lr_on_plateau")
    scheduler = create_scheduler(args, sgd(), N)
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and scheduler.factor == 0.5


def test_malformed_kwargs_are_still_refused_when_created():
    with pytest.raises(ValueError, match="looks like JSON but does not parse"):
        targs("linear", '{"factor": 0.5')
    with pytest.raises(ValueError, match=r"key 'factor': 'half' is not a valid number"):
        targs("reduce_lr_on_plateau", {"factor": "half"}, **EVAL)


SCHEDULE_KWARGS = {
    "cosine_with_min_lr": {"min_lr_rate": 0.1}, "cosine_warmup_with_min_lr": {"min_lr": 1e-3},
    "warmup_stable_decay": {"decay_ratio": 0.3}, "step": {"step_size": 4}, "multistep": {"milestones": (5, 12)},
    "polynomial": {"lr_end": 1e-3, "power": 2.0}, "cosine_with_restarts": {"num_cycles": 2},
    "cosine_with_warmup_restarts": {"num_cycles": 2},
}
TAKES_LAST_EPOCH = sorted(
    n for n, s in schedulers.builtin().items() if "last_epoch" in s.option_map
)


def test_last_epoch_is_declared_wherever_the_schedule_function_takes_it():
    import inspect

    from optim_registry.deps import import_object

    for spec in schedulers.builtin().values():
        target = import_object(spec.target)
        takes = "last_epoch" in inspect.signature(target).parameters
        assert ("last_epoch" in spec.option_map) == takes, spec.name
    assert {"linear", "cosine", "constant", "cosine_with_restarts", "polynomial", "inverse_sqrt",
            "warmup_stable_decay", "cosine_with_min_lr"} <= set(TAKES_LAST_EPOCH)


@pytest.mark.parametrize("name", TAKES_LAST_EPOCH)
def test_last_epoch_starts_the_schedule_after_that_step(name):
    """last_epoch=4 on a fresh optimizer: the first step uses the rate of step 5 (transformers' Trainer would
    raise KeyError 'initial_lr' here; the stock function used directly, with initial_lr set, agrees)."""
    kwargs = dict(SCHEDULE_KWARGS.get(name, {}))
    fresh = rates(*(lambda o: (o, create_scheduler(targs(name, kwargs), o, N)))(sgd()), N)
    opt = sgd()
    later = create_scheduler(targs(name, {**kwargs, "last_epoch": 4}), opt, N)
    assert rates(opt, later, N - 5) == pytest.approx(fresh[5:], rel=1e-12, abs=1e-15)
    assert len(set(fresh)) > 1 or name == "constant"
    if name in {"linear", "cosine", "cosine_with_restarts", "polynomial", "inverse_sqrt"}:
        ref_opt = sgd()
        ref_opt.param_groups[0]["initial_lr"] = LR
        ref = get_scheduler(name, ref_opt, num_warmup_steps=W, num_training_steps=N,
                            scheduler_specific_kwargs={**kwargs, "last_epoch": 4})
        assert rates(ref_opt, ref, N - 5) == pytest.approx(fresh[5:], rel=1e-12, abs=1e-15)


def test_last_epoch_refused_where_the_scheduler_does_not_take_it():
    with pytest.raises(ValueError, match="'last_epoch' is not accepted by lr_scheduler_type='reduce_lr_on_plateau'"):
        check_scheduler_args(targs("reduce_lr_on_plateau", "last_epoch=3", **EVAL), N, strict=True)
    with pytest.raises(ValueError, match=r"last_epoch=-2 is out of range \(key 'last_epoch', valid range >= -1"):
        targs("linear", "last_epoch=-2")


@pytest.mark.parametrize("cycles", ["1.5", 2.5])
def test_float_num_cycles_for_cosine_with_restarts_matches_transformers(cycles):
    opt = sgd()
    got = rates(opt, create_scheduler(targs("cosine_with_restarts", {"num_cycles": cycles}), opt, N), N)
    ref_opt = sgd()
    ref = get_scheduler("cosine_with_restarts", ref_opt, num_warmup_steps=W, num_training_steps=N,
                        scheduler_specific_kwargs={"num_cycles": float(cycles)})
    assert got == pytest.approx(rates(ref_opt, ref, N), rel=1e-12, abs=1e-15)
    assert len(set(got)) > 5


# -- values refused when the arguments are created ----------------------------------------------------------------
REFUSED = [
    # (name, kwargs, extra TrainingArguments, message naming key, value, range)
    ("warmup_stable_decay", "num_decay_steps=18", {"max_steps": N},
     r"warm-up \(3\) \+ decay \(18\) = 21 steps exceed the 20 training steps"),
    ("warmup_stable_decay", "decay_ratio=0.5,stable_ratio=0.5", {"max_steps": N},
     r"warm-up \(3\) \+ stable \(10\) \+ decay \(10\) = 23 steps exceed the 20 training steps"),
    ("polynomial", "lr_end=0.2", {}, r"'lr_end' \(0.2\) is above the learning rate \(0.1\).*valid range \[0, 0.1\)"),
    ("polynomial", "lr_end=0.1", {}, r"'lr_end' \(0.1\) is above the learning rate \(0.1\).*valid range \[0, 0.1\)"),
    ("polynomial", "lr_end=-1e-3", {}, r"lr_end=-0.001 is out of range \(key 'lr_end', valid range >= 0"),
    ("polynomial", "power=-1", {}, r"power=-1.0 is out of range \(key 'power', valid range > 0"),
    ("polynomial", "power=0", {}, r"power=0.0 is out of range \(key 'power', valid range > 0"),
    ("inverse_sqrt", "timescale=0", {}, r"timescale=0.0 is out of range \(key 'timescale', valid range > 0"),
    ("inverse_sqrt", "timescale=-5", {}, r"timescale=-5.0 is out of range \(key 'timescale', valid range > 0"),
    ("cosine", "num_cycles=-0.5", {}, r"num_cycles=-0.5 is out of range \(key 'num_cycles', valid range >= 0"),
    ("cosine", "num_cycles=nan", {}, r"num_cycles=nan is not a finite number \(key 'num_cycles', valid range >= 0"),
    ("cosine_with_restarts", "num_cycles=-1", {}, r"num_cycles=-1.0 is out of range \(key 'num_cycles', valid range >= 0"),
    ("warmup_stable_decay", "decay_ratio=0.1,num_cycles=nan", {}, r"num_cycles=nan is not a finite number"),
    ("cosine_with_min_lr", "min_lr=0.5", {}, r"'min_lr' \(0.5\) is above the learning rate \(0.1\).*\[0, 0.1\]"),
    ("cosine_warmup_with_min_lr", "min_lr=-1e-4", {}, r"min_lr=-0.0001 is out of range \(key 'min_lr', valid range >= 0"),
    ("cosine_with_min_lr", "min_lr_rate=1.5", {}, r"min_lr_rate=1.5 is out of range \(key 'min_lr_rate', valid range \[0, 1\]"),
    ("reduce_lr_on_plateau", "min_lr=1", EVAL, r"'min_lr' \(1\) is above the learning rate \(0.1\)"),
    ("reduce_lr_on_plateau", "factor=1.5", EVAL, r"factor=1.5 is out of range \(key 'factor', valid range \[0, 1\)"),
    ("step", "step_size=2,gamma=0", {}, r"gamma=0.0 is out of range \(key 'gamma', valid range > 0"),
    ("step", "step_size=2,gamma=-0.5", {}, r"gamma=-0.5 is out of range \(key 'gamma', valid range > 0"),
    ("multistep", "milestones=(5,10),gamma=0", {}, r"gamma=0.0 is out of range \(key 'gamma', valid range > 0"),
    ("one_cycle", "pct_start=0.3", {}, r"two warm-ups: lr_scheduler_kwargs pct_start=0.3 and .*warmup_steps"),
    ("cosine_with_warmup_restarts", "cycle_warmup_steps=2", {},
     r"warm-up of 3 steps from TrainingArguments \(warmup_steps\) and 2 per cycle"),
    ("cosine_with_warmup_restarts", "cycle_warmup_steps=2", {"warmup_steps": 0.1},
     r"two warm-ups: TrainingArguments.warmup_steps \(a fraction of the run\) and lr_scheduler_kwargs "
     r"cycle_warmup_steps"),
    ("cosine_with_warmup_restarts", "num_cycles=4,cycle_warmup_steps=5", {"warmup_steps": 0, "max_steps": N},
     r"warm-up of 5 steps per cycle fills the whole cycle of 5 steps.*valid range \[0, 4\]"),
    ("cosine_with_warmup_restarts", "num_cycles=30", {"max_steps": N, "warmup_steps": 0},
     r"'num_cycles' \(30\) is more than the 20 training steps; valid range \[1, 20\]"),
    ("rex", "min_lr_ratio=inf", {}, r"min_lr_ratio=inf is not a finite number \(key 'min_lr_ratio', valid range \[0, 1\]"),
    ("greedy", "max_lr=inf", EVAL, r"max_lr=inf is not a finite number \(key 'max_lr', valid range > 0"),
    ("greedy", "factor=0", EVAL, r"factor=0.0 is out of range \(key 'factor', valid range \(0, 1\)"),
    ("greedy", "min_lr=0.5,max_lr=0.1", EVAL, r"'min_lr' \(0.5\) is above 'max_lr' \(0.1\)"),
    ("one_cycle", "div_factor=0", {"warmup_steps": 0}, r"div_factor=0.0 is out of range \(key 'div_factor', valid range > 0"),
]


@pytest.mark.parametrize("name, kwargs, extra, message", REFUSED, ids=[f"{r[0]}-{r[1]}" for r in REFUSED])
def test_scheduler_values_refused_when_arguments_are_created(name, kwargs, extra, message):
    extra = dict(extra)
    warmup = extra.pop("warmup_steps", W)
    with pytest.raises(ValueError, match=message):
        targs(name, kwargs, warmup, **extra)


def test_optim_args_lr_is_the_rate_lr_end_is_compared_with():
    # lr_end=0.05 is below optim_args' lr=0.2, which the optimizer uses: accepted, and it builds.
    args = targs("polynomial", "lr_end=0.05", optim="adamw_torch", optim_args="lr=0.2")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.2)
    create_scheduler(args, opt, N)
    with pytest.raises(ValueError, match=r"'lr_end' \(0.3\) is above the learning rate \(0.2\)"):
        targs("polynomial", "lr_end=0.3", optim="adamw_torch", optim_args="lr=0.2")


@pytest.mark.parametrize("name, kwargs, extra", [
    ("polynomial", "lr_end=0,power=0.5", {}),
    ("cosine", "num_cycles=0.75", {}),
    ("cosine_with_restarts", "num_cycles=0", {}),
    ("inverse_sqrt", "timescale=2.5", {}),               # typed int by transformers, computed as a float
    ("cosine_with_min_lr", "min_lr=0.1", {}),          # a floor equal to the rate: constant, as the formula says
    ("step", "step_size=5,gamma=2", {}),               # a rising step schedule: torch StepLR allows it
    ("reduce_lr_on_plateau", "factor=0", EVAL),         # torch: drop straight to min_lr
    ("warmup_stable_decay", "num_decay_steps=17", {"max_steps": N}),  # warm-up + decay exactly the run
    ("greedy", "factor=0.5,min_lr=1e-3", EVAL),          # GreedyLR's bounds, even above a small rate
])
def test_values_the_stock_functions_use_correctly_are_accepted(name, kwargs, extra):
    args = targs(name, kwargs, **extra)
    opt = sgd()
    scheduler = create_scheduler(args, opt, N)
    got = rates(opt, scheduler, N, metrics=[1.0] * N if schedulers.get(name).needs_eval else None)
    assert all(math.isfinite(r) and r >= 0 for r in got)


# -- refused before the optimizer is built --------------------------------------------------------------------
@pytest.mark.parametrize("sched, kwargs, overrides", [
    ("constant", "bogus=1", {}),                                    # a key the scheduler does not take
    ("warmup_stable_decay", "num_decay_steps=100", {"max_steps": -1, "num_train_epochs": 1}),  # longer than the run
])
def test_scheduler_refused_before_lomo_hooks_are_installed(tmp_path, sched, kwargs, overrides):
    """LOMO installs its update hooks when it is built; a scheduler refused afterwards used to leave them, so a
    later backward moved the weights. The Trainer now checks the scheduler first."""
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    args = training_args("lomo", str(tmp_path), lr_scheduler_type=sched, lr_scheduler_kwargs=kwargs,
                         max_grad_norm=0.0, **overrides)
    trainer = OptimTrainer(model=model, args=args, train_dataset=TokenDataset(n=16))
    with pytest.raises(ValueError, match="bogus|exceed the 2 training steps"):
        trainer.train()
    batch = TokenDataset(n=8)[0]
    ids = torch.as_tensor(batch["input_ids"])[None]
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters())), "a later backward moved weights"
    assert not any(p._backward_hooks for p in model.parameters())
    assert trainer.optimizer is None


def test_scheduler_refused_before_an_optimizer_cls_and_kwargs_optimizer_is_built(tmp_path):
    args = training_args("adamw_torch", str(tmp_path), lr_scheduler_type="linear", lr_scheduler_kwargs="bogus=1")
    trainer = OptimTrainer(model=tiny_model(), args=args, train_dataset=TokenDataset(),
                           optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}))
    with pytest.raises(ValueError, match="'bogus' is not accepted by lr_scheduler_type='linear'"):
        trainer.train()
    assert trainer.optimizer is None


# -- warm-up for the metric-driven schedulers ---------------------------------------------------------------------
@pytest.mark.parametrize("name, after", [
    # the evaluation after the warm-up's last step is the first judged: 9.0 a best, 4.0 better, 9.0 worse
    ("reduce_lr_on_plateau", (1, 1, 0.5)),  # lowers only when worse
    ("greedy", (2, 4, 2)),                  # raises on each improvement, lowers when worse
])
def test_metric_driven_schedulers_warm_up_then_judge_metrics(name, after):
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))]},
                           {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": LR / 10}], lr=LR)
    scheduler = create_scheduler(targs(name, "patience=0,factor=0.5,min_lr=1e-4", **EVAL), opt, N)
    assert isinstance(scheduler, (torch.optim.lr_scheduler.ReduceLROnPlateau,
                                  __import__("transformers").optimization.GreedyLR))
    seen = []
    metrics = [5.0, 9.0, 9.0, 4.0, 9.0, 9.0]  # the bad ones during warm-up are not judged
    for metric in metrics:
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step(metric)
    # warm-up: k/3 of each group's rate at step k; the evaluations during it (5.0 then 9.0) are not judged
    want = [[LR * f, LR / 10 * f] for f in (0, 1 / 3, 2 / 3, *after)]
    assert seen == [pytest.approx(w) for w in want]


@pytest.mark.parametrize("name", ["reduce_lr_on_plateau", "greedy"])
def test_metric_driven_warmup_state_round_trips(name):
    def fresh():
        opt = sgd()
        return opt, create_scheduler(targs(name, "patience=0,factor=0.5,min_lr=1e-4", warmup=4, **EVAL), opt, N)

    metrics = [3.0, 2.0, 9.0, 9.0, 1.0, 2.0, 2.0, 0.5]
    whole = rates(*fresh(), len(metrics), metrics)
    opt, sched = fresh()
    head = rates(opt, sched, 2, metrics)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    opt, sched = fresh()
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    assert head + rates(opt, sched, len(metrics) - 2, metrics[2:]) == pytest.approx(whole)
    assert whole[:4] == pytest.approx([0, LR / 4, LR / 2, 3 * LR / 4]) and len(set(whole[4:])) == 3
    assert "_warmup_hook" not in saved["sched"] and saved["sched"]["warmup_steps_done"] == 2


@pytest.mark.parametrize("optim, sched", [
    ("adamw_torch", "reduce_lr_on_plateau"),
    ("lomo", "reduce_lr_on_plateau"),            # no optimizer.step(): the warm-up follows fused_backward
    ("adamw_torch_layerwise", "greedy"),          # steps inside backward, step() still marks the step
])
def test_metric_driven_warmup_in_a_trainer_run(tmp_path, optim, sched):
    from transformers import TrainerCallback
    from transformers.optimization import GreedyLR

    seen = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kw):
            seen.append(optimizer.param_groups[0]["lr"])

    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    args = training_args(optim, str(tmp_path), lr_scheduler_type=sched, warmup_steps=3, max_steps=5,
                         lr_scheduler_kwargs="patience=5", eval_strategy="steps", eval_steps=1,
                         per_device_eval_batch_size=8, max_grad_norm=0.0)
    trainer = OptimTrainer(model=model, args=args, train_dataset=TokenDataset(),
                           eval_dataset=TokenDataset(n=8, seed=1), callbacks=[Record()])
    trainer.train()
    assert seen == pytest.approx([0.0, 1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2])  # patience 5: no decision yet
    assert isinstance(trainer.lr_scheduler, (torch.optim.lr_scheduler.ReduceLROnPlateau, GreedyLR))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_schedule_functions_called_directly_refuse_what_would_divide_by_zero_mid_run():
    from optim_registry.schedules.functions import get_multistep_schedule, get_polynomial_schedule, get_step_schedule

    with pytest.raises(ValueError, match=r"power=-1 is out of range \(key 'power', valid range > 0"):
        get_polynomial_schedule(sgd(), 0, N, power=-1)
    with pytest.raises(ValueError, match=r"gamma=0 is out of range \(key 'gamma', valid range > 0"):
        get_step_schedule(sgd(), 0, N, step_size=2, gamma=0)
    with pytest.raises(ValueError, match=r"gamma=-0.5 is out of range"):
        get_multistep_schedule(sgd(), 0, N, milestones=(3,), gamma=-0.5)


def test_a_replaced_warmup_scheduler_stops_driving_the_optimizer():
    """A second scheduler on the same optimizer (a second train(), restarting the schedule on resume) takes over;
    the first one's hook must not keep writing its own warm-up rates."""
    opt = sgd()
    args = targs("reduce_lr_on_plateau", "patience=5", warmup=8, **EVAL)
    create_scheduler(args, opt, N)
    opt.step()  # the first scheduler is mid-warm-up
    opt.param_groups[0]["lr"] = LR  # what a resumed optimizer state holds
    second = create_scheduler(targs("reduce_lr_on_plateau", "patience=5", warmup=2, **EVAL), opt, N)
    got = rates(opt, second, 4, metrics=[1.0] * 4)
    assert got == pytest.approx([0.0, LR / 2, LR, LR])


@pytest.mark.parametrize("name, kwargs", [
    ("reduce_lr_on_plateau", {"min_lr": [1e-3, 1e-4]}),
    ("reduce_lr_on_plateau", "min_lr=(1e-3,1e-4)"),
    ("greedy", {"min_lr": [1e-3, 1e-4], "max_lr": (0.5, 0.05), "patience": 1, "factor": 0.5}),
])
def test_per_group_bounds_of_metric_driven_schedulers_are_accepted(name, kwargs):
    """torch's ReduceLROnPlateau and GreedyLR take one bound per param group; so does the stock Trainer."""
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))]},
                           {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": LR / 10}], lr=LR)
    scheduler = create_scheduler(targs(name, kwargs, warmup=0, **EVAL), opt, N)
    assert scheduler.min_lrs == [1e-3, 1e-4]
    for metric in [1.0] + [2.0] * 60:
        scheduler.step(metric)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-4])


@pytest.mark.parametrize("name, kwargs, message", [
    ("reduce_lr_on_plateau", {"min_lr": [1e-3, -1.0]}, r"min_lr=\(0.001,-1.0\) is out of range \(key 'min_lr', valid range >= 0"),
    ("reduce_lr_on_plateau", {"min_lr": [1e-3, 0.5]}, r"'min_lr' \(0.5\) is above the learning rate \(0.1\)"),
    ("reduce_lr_on_plateau", "min_lr=abc", r"'min_lr': 'abc' is not a valid number, or tuple of numbers"),
    ("greedy", {"min_lr": [1e-3, 1e-4], "max_lr": [1.0, 1.0, 1.0]}, r"'min_lr' has 2 rates and 'max_lr' 3"),
    ("greedy", {"max_lr": [1.0, 0.0]}, r"max_lr=\(1.0,0.0\) is out of range \(key 'max_lr', valid range > 0"),
])
def test_bad_per_group_bounds_refused_when_created(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        targs(name, kwargs, **EVAL)
