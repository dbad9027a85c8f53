"""Schedulers by name: transformers' types and the extras step as their formulas say, kwargs are typed and
checked, plugins register, and GreedyLR follows evaluations in a real run."""

from __future__ import annotations

import inspect
import math
import sys
import textwrap

import pytest
import torch
from transformers.optimization import get_scheduler
from transformers.trainer_utils import SchedulerType

from optim_registry import create_scheduler, register_scheduler
from optim_registry.plan import check_scheduler_args
from optim_registry.schedulers import parse_scheduler_kwargs, schedulers
from optim_registry.testing import arguments

N, W, LR, LR2 = 20, 3, 0.1, 0.01


def targs(name, kwargs=None, warmup=W, **kw):
    return arguments(lr_scheduler_type=name, lr_scheduler_kwargs=kwargs, warmup_steps=warmup, learning_rate=LR, **kw)


def two_groups(opt_cls=torch.optim.SGD):
    """A composite-style optimizer: two groups with different learning rates."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return opt_cls([{"params": [a]}, {"params": [b], "lr": LR2}], lr=LR)


def curve(optimizer, scheduler, steps=N, metrics=None):
    """Each group's lr used at each step (read before stepping, as the Trainer trains with it)."""
    out = []
    for i in range(steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step(metrics[i]) if metrics is not None else scheduler.step()
    return out


def ours(name, kwargs=None, warmup=W, total=N, optimizer=None, **kw):
    optimizer = optimizer if optimizer is not None else two_groups()
    return optimizer, create_scheduler(targs(name, kwargs, warmup, **kw), optimizer, total)


def as_string(kwargs):
    return ",".join(f"{k}={v}" for k, v in kwargs.items())


def assert_curves(got, want, rel=1e-9):
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, rel=rel, abs=1e-12), f"step {step}: {g} != {w}"


def assert_follows(got, factors):
    """Every group's lr is its initial lr times the schedule factor."""
    assert_curves(got, [[LR * f, LR2 * f] for f in factors])


# -- every transformers name, against transformers' get_scheduler -----------------------------------------------------
HF_CASES = {
    "linear": {},
    "cosine": {"num_cycles": 0.75},
    "cosine_with_restarts": {"num_cycles": 3},
    "polynomial": {"lr_end": 1e-3, "power": 2.0},
    "constant": {},
    "constant_with_warmup": {},
    "inverse_sqrt": {"timescale": 5},
    "cosine_with_min_lr": {"min_lr_rate": 0.1},
    "cosine_warmup_with_min_lr": {"min_lr": 1e-3, "warmup_lr_rate": 0.2},
    "warmup_stable_decay": {"num_decay_steps": 6, "decay_type": "linear", "min_lr_ratio": 0.1},
}
METRIC_CASES = {"reduce_lr_on_plateau": {"patience": 1, "factor": 0.5}, "greedy": {"patience": 0, "factor": 0.5}}


def test_every_transformers_scheduler_type_is_covered_and_registered():
    hf = {m.value for m in SchedulerType}
    assert hf == set(HF_CASES) | set(METRIC_CASES)
    assert hf <= set(schedulers.names())


@pytest.mark.parametrize("name", sorted(HF_CASES))
def test_transformers_names_match_get_scheduler(name):
    kwargs = HF_CASES[name]
    # Ours gets the "k=v" string, transformers the dict: the typed parse must give the same values.
    opt, sched = ours(name, as_string(kwargs))
    ref_opt = two_groups()
    ref = get_scheduler(name, ref_opt, num_warmup_steps=W, num_training_steps=N, scheduler_specific_kwargs=kwargs)
    got, want = curve(opt, sched), curve(ref_opt, ref)
    assert_curves(got, want)
    if name != "constant":
        assert len({round(g[0], 12) for g in got}) > 3  # the curve moves: the comparison is not trivial
    for lr1, lr2 in got:  # both groups follow the schedule, their ratio kept
        assert lr2 == pytest.approx(lr1 * LR2 / LR)


@pytest.mark.parametrize("name", sorted(METRIC_CASES))
def test_metric_driven_names_match_transformers(name):
    kwargs = METRIC_CASES[name]
    metrics = [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.4, 0.6, 0.7, 0.8]
    # Without a warm-up: transformers ignores warmup_steps for these names, ours warms up (test_trust_schedulers).
    opt, sched = ours(name, kwargs, warmup=0, eval_strategy="steps", eval_steps=1)
    ref_opt = two_groups()
    ref = get_scheduler(name, ref_opt, num_warmup_steps=0, num_training_steps=N, scheduler_specific_kwargs=kwargs)
    got = curve(opt, sched, len(metrics), metrics)
    assert_curves(got, curve(ref_opt, ref, len(metrics), metrics))
    assert len({g[0] for g in got}) > 2, got  # the rate moved with the metrics


# -- the extra names, against closed forms and torch's own schedulers ------------------------------------------
def test_rex_formula():
    m = 0.05
    opt, sched = ours("rex", {"min_lr_ratio": m})

    def rex(s):
        if s < W:
            return s / W
        t = (s - W) / (N - W)
        return m + (1 - m) * (1 - t) / (1 - t / 2)

    assert_follows(curve(opt, sched), [rex(s) for s in range(N)])


@pytest.mark.parametrize("warmup_kwargs", [{"cycle_warmup_steps": 2}, {"cycle_warmup_ratio": 0.2}])
def test_cosine_with_warmup_restarts_formula(warmup_kwargs):
    m = 0.1
    opt, sched = ours("cosine_with_warmup_restarts", {"num_cycles": 2, "min_lr_ratio": m, **warmup_kwargs}, warmup=0)

    def factor(s):  # two cycles of 10 steps, each 2 steps of warm-up then 8 of cosine
        pos = s % 10
        f = pos / 2 if pos < 2 else 0.5 * (1 + math.cos(math.pi * (pos - 2) / 8))
        return m + (1 - m) * f

    got = curve(opt, sched)
    assert_follows(got, [factor(s) for s in range(N)])
    assert got[10][0] == pytest.approx(LR * m)  # the restart begins a new warm-up


def test_cosine_with_warmup_restarts_one_cycle_is_transformers_cosine():
    opt, sched = ours("cosine_with_warmup_restarts")  # per-cycle warm-up defaults to warmup_steps
    ref_opt = two_groups()
    ref = get_scheduler("cosine", ref_opt, num_warmup_steps=W, num_training_steps=N)
    assert_curves(curve(opt, sched), curve(ref_opt, ref))


def test_cosine_with_warmup_restarts_refuses_two_warmups():
    with pytest.raises(ValueError, match="warmup_steps.*cycle_warmup_steps"):
        ours("cosine_with_warmup_restarts", {"cycle_warmup_steps": 2}, warmup=3)
    with pytest.raises(ValueError, match="both 'cycle_warmup_steps' and 'cycle_warmup_ratio'"):
        targs("cosine_with_warmup_restarts", "cycle_warmup_steps=2,cycle_warmup_ratio=0.1")


def test_step_and_multistep_match_torch():
    opt, sched = ours("step", "step_size=4,gamma=0.5", warmup=0)
    ref_opt = two_groups()
    assert_curves(curve(opt, sched), curve(ref_opt, torch.optim.lr_scheduler.StepLR(ref_opt, 4, gamma=0.5)))

    opt, sched = ours("multistep", "milestones=(12,5),gamma=0.3", warmup=0)
    ref_opt = two_groups()
    ref = torch.optim.lr_scheduler.MultiStepLR(ref_opt, [5, 12], gamma=0.3)
    assert_curves(curve(opt, sched), curve(ref_opt, ref))


def test_step_and_multistep_with_warmup_formula():
    opt, sched = ours("step", {"step_size": 4, "gamma": 0.5})
    assert_follows(curve(opt, sched), [min(1, s / W) * 0.5 ** (s // 4) for s in range(N)])
    opt, sched = ours("multistep", {"milestones": [5, 12], "gamma": 0.3})
    assert_follows(curve(opt, sched), [min(1, s / W) * 0.3 ** ((s >= 5) + (s >= 12)) for s in range(N)])


def test_one_cycle_matches_torch_with_each_group_peaking_at_its_lr():
    # The Trainer's warm-up is the rising phase: 5 of 20 steps -> pct_start 0.25.
    opt, sched = ours("one_cycle", "div_factor=10,final_div_factor=100", warmup=5)
    ref_opt = two_groups()
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=[LR, LR2], total_steps=N, pct_start=0.25,
                                              div_factor=10, final_div_factor=100, cycle_momentum=False)
    got = curve(opt, sched)
    assert_curves(got, curve(ref_opt, ref))
    assert max(g[0] for g in got) == pytest.approx(LR) and max(g[1] for g in got) == pytest.approx(LR2)
    assert got[0] == pytest.approx([LR / 10, LR2 / 10])

    opt, sched = ours("one_cycle", "pct_start=0.4,anneal_strategy=linear,three_phase=true", warmup=0)
    ref_opt = two_groups()
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=[LR, LR2], total_steps=N, pct_start=0.4,
                                              anneal_strategy="linear", three_phase=True, cycle_momentum=False)
    assert_curves(curve(opt, sched), curve(ref_opt, ref))
    with pytest.raises(ValueError, match="warmup_steps=0 or drop pct_start"):
        ours("one_cycle", "pct_start=0.4", warmup=5)
    with pytest.raises(ValueError, match="'pct_start'.*\\(0, 1\\)"):
        targs("one_cycle", "pct_start=1.5")


@pytest.mark.parametrize("name, kwargs", [
    ("rex", "min_lr_ratio=0.1"), ("cosine_with_warmup_restarts", "num_cycles=3"), ("step", "step_size=4"),
    ("multistep", "milestones=(5,12)"), ("one_cycle", None), ("warmup_stable_decay", "decay_ratio=0.3"),
    ("polynomial", "lr_end=1e-3"),
])
def test_scheduler_state_round_trips_for_resume(name, kwargs):
    """Stop at step 7, save as the Trainer does (torch.save, weights_only load), resume: the same curve."""
    import io

    opt, sched = ours(name, kwargs)
    whole = curve(opt, sched)
    opt, sched = ours(name, kwargs)
    head = curve(opt, sched, 7)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    opt, sched = ours(name, kwargs)
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    assert_curves(head + curve(opt, sched, N - 7), whole)


# -- warmup_stable_decay phases as ratios ----------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Both num_training_steps and num_stable_steps")  # transformers' reference
def test_wsd_ratios_equal_counts():
    def ref(**kw):
        o = two_groups()
        return curve(o, get_scheduler("warmup_stable_decay", o, num_warmup_steps=W, num_training_steps=N,
                                      scheduler_specific_kwargs=kw))

    assert_curves(curve(*ours("warmup_stable_decay", "decay_ratio=0.25")), ref(num_decay_steps=5))
    assert_curves(curve(*ours("warmup_stable_decay", {"decay_ratio": 0.25, "stable_ratio": 0.5})),
                  ref(num_decay_steps=5, num_stable_steps=10))
    assert_curves(curve(*ours("warmup_stable_decay", "num_decay_steps=4,stable_ratio=0.5,decay_type=1-sqrt")),
                  ref(num_decay_steps=4, num_stable_steps=10, decay_type="1-sqrt"))


@pytest.mark.parametrize("kwargs, message", [
    ("decay_ratio=0.1,num_decay_steps=3", "both 'num_decay_steps' and 'decay_ratio'"),
    ("decay_ratio=0.1,num_stable_steps=3,stable_ratio=0.5", "both 'num_stable_steps' and 'stable_ratio'"),
    (None, "needs the length of its decay phase.*decay_ratio"),
    ("decay_ratio=1.5", r"decay_ratio=1.5 is out of range \(key 'decay_ratio', valid range \[0, 1\]"),
])
def test_wsd_refusals_when_arguments_are_created(kwargs, message):
    with pytest.raises(ValueError, match=message):
        targs("warmup_stable_decay", kwargs)


def test_wsd_refuses_phases_longer_than_the_run():
    with pytest.raises(ValueError, match="exceed the 20 training steps"):
        ours("warmup_stable_decay", "num_decay_steps=18")


# -- lr_scheduler_kwargs: forms, types, refusals ------------------------------------------------------------------
@pytest.mark.parametrize("raw", [
    {"min_lr_ratio": 0.01}, {"min_lr_ratio": "1e-2"}, '{"min_lr_ratio": 0.01}', '{"min_lr_ratio": "1e-2"}',
    "min_lr_ratio=1e-2", " min_lr_ratio = 0.01 ,",
])
def test_kwargs_forms_are_typed(raw):
    a = targs("rex", raw)
    typed = parse_scheduler_kwargs(schedulers.get("rex"), a.lr_scheduler_kwargs)
    assert typed == {"min_lr_ratio": 0.01} and type(typed["min_lr_ratio"]) is float


def test_kwargs_types_per_option():
    typed = parse_scheduler_kwargs(schedulers.get("one_cycle"), "three_phase=yes,div_factor=10,anneal_strategy=linear")
    assert typed == {"three_phase": True, "div_factor": 10.0, "anneal_strategy": "linear"}
    assert parse_scheduler_kwargs(schedulers.get("multistep"), {"milestones": "[5, 12]"}) == {"milestones": (5, 12)}
    assert parse_scheduler_kwargs(schedulers.get("inverse_sqrt"), "timescale=none") == {"timescale": None}


@pytest.mark.parametrize("name, kwargs, message", [
    # refused at creation although the key is unknown: the required min_lr / min_lr_rate is missing too
    ("cosine_with_min_lr", {"min_lr_rat": 0.1}, r"'min_lr_rat'.*\(closest first\): min_lr_rate, .*Without it.*needs"),
    ("step", "step_size=abc", r"key 'step_size': 'abc' is not a valid integer"),
    ("step", {"step_size": 2.5}, r"key 'step_size': 2.5 is not a valid integer"),
    ("multistep", "milestones=(a,b)", r"key 'milestones'.*tuple of integers"),
    ("one_cycle", "three_phase=maybe", r"key 'three_phase'.*boolean"),
    ("one_cycle", "anneal_strategy=exp", r"key 'anneal_strategy'.*\['cos', 'linear'\]"),
    ("rex", "min_lr_ratio=0.1,min_lr_ratio=0.2", r"lr_scheduler_kwargs key 'min_lr_ratio' is given twice"),
    ("rex", "min_lr_ratio", r"lr_scheduler_kwargs token 'min_lr_ratio' has no '='"),
    ("cosine", {"num_warmup_steps": 3}, r"'num_warmup_steps' is set by the Trainer.*warmup_steps"),
    ("linear", "num_training_steps=30", r"'num_training_steps' is set by the Trainer.*max_steps"),
    ("cosine_with_min_lr", None, r"needs lr_scheduler_kwargs 'min_lr' or 'min_lr_rate'"),
    ("cosine_warmup_with_min_lr", "min_lr=1e-5,min_lr_rate=0.1",
     r"'cosine_warmup_with_min_lr': lr_scheduler_kwargs sets both 'min_lr' and 'min_lr_rate'"),
    ("step", None, r"needs lr_scheduler_kwargs step_size"),
    ("multistep", "gamma=0.5", r"needs lr_scheduler_kwargs milestones"),
    ("rex", "min_lr_ratio=2", r"min_lr_ratio=2.0 is out of range \(key 'min_lr_ratio', valid range \[0, 1\]"),
])
def test_bad_kwargs_refused_naming_the_key(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        targs(name, kwargs, eval_strategy="steps", eval_steps=1)


@pytest.mark.parametrize("name, kwargs, message", [
    ("rex", "min_lr_rati=0.1", r"key 'min_lr_rati' is not accepted by lr_scheduler_type='rex'.*Did you mean 'min_lr_ratio'"),
    ("linear", "num_cycles=2", r"'num_cycles' is not accepted by lr_scheduler_type='linear'.*\(closest first\): last_epoch$"),
])
def test_unknown_keys_refused_when_training_starts(name, kwargs, message):
    """The stock class accepts any key when the arguments are created (set_lr_scheduler may still change the
    scheduler); the Trainer refuses it before building the optimizer, and so does create_scheduler."""
    a = targs(name, kwargs)
    with pytest.raises(ValueError, match=message):
        check_scheduler_args(a, N, strict=True)
    with pytest.raises(ValueError, match=message):
        create_scheduler(a, two_groups(), N)


def test_option_defaults_equal_signature_defaults():
    from optim_registry.deps import import_object
    from optim_registry.schedules.functions import get_polynomial_schedule

    # The function the options are passed to, where the record's target takes **kwargs.
    receives = {"greedy": "transformers.optimization:GreedyLR",
                "reduce_lr_on_plateau": "torch.optim.lr_scheduler:ReduceLROnPlateau"}
    converted = {"warmup_stable_decay": {"decay_ratio", "stable_ratio"}}  # turned into counts before the call
    not_options = {"self", "optimizer", "num_warmup_steps", "num_training_steps", "last_epoch", "verbose"}
    for spec in schedulers.builtin().values():
        targets = [import_object(receives.get(spec.name, spec.target))]
        if spec.name == "polynomial":
            targets.append(get_polynomial_schedule)
        for target in targets:
            params = inspect.signature(target).parameters
            for option in spec.options:
                if option.name in converted.get(spec.name, ()):
                    assert option.default is None
                    continue
                assert option.name in params, (spec.name, option.name)
                default = params[option.name].default
                expected = None if default is inspect.Parameter.empty else default
                assert option.default == expected, (spec.name, option.name, option.default, expected)
            undeclared = set(params) - not_options - {o.name for o in spec.options} - {"lr_init", "kwargs"}
            assert not undeclared, (spec.name, undeclared)


# -- composite and layer-wise optimizers -------------------------------------------------------------------
@pytest.mark.parametrize("name, kwargs", [("polynomial", "lr_end=1e-4"), ("cosine_with_min_lr", "min_lr=1e-3"),
                                          ("rex", None), ("one_cycle", None)])
def test_layerwise_optimizer_groups_follow_the_schedule(name, kwargs):
    from optim_registry.engines.layerwise.engine import LayerwiseOptimizer

    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    layerwise = LayerwiseOptimizer([{"params": [a], "lr": LR}, {"params": [b], "lr": LR2}], torch.optim.SGD)
    assert "lr" not in layerwise.defaults  # absolute options are taken relative to TrainingArguments.learning_rate
    opt, sched = ours(name, kwargs, optimizer=layerwise)
    ref_opt, ref_sched = ours(name, kwargs)
    assert_curves(curve(opt, sched), curve(ref_opt, ref_sched))


def test_composite_optimizer_in_a_trainer_run(tmp_path):
    from transformers import TrainerCallback

    from optim_registry import OptimTrainer
    from optim_registry.testing import TokenDataset, tiny_model, training_args

    model = tiny_model()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": params[:3]}, {"params": params[3:], "lr": 1e-3}], lr=1e-2)
    seen = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kw):
            seen.append([g["lr"] for g in optimizer.param_groups])

    args = training_args("adamw_torch", str(tmp_path), lr_scheduler_type="rex", warmup_steps=2, max_steps=6,
                         lr_scheduler_kwargs="min_lr_ratio=0.1")
    trainer = OptimTrainer(model=model, args=args, train_dataset=TokenDataset(), optimizers=(optimizer, None),
                           callbacks=[Record()])
    trainer.train()

    def rex(s):
        return s / 2 if s < 2 else 0.1 + 0.9 * (1 - (s - 2) / 4) / (1 - (s - 2) / 8)

    assert_curves(seen, [[1e-2 * rex(s), 1e-3 * rex(s)] for s in range(6)])
    entries = [e for e in trainer.state.log_history if "learning_rate" in e]
    assert [e["learning_rate"] for e in entries] == pytest.approx([1e-2 * rex(s) for s in range(6)])
    # every group's rate is logged, the one each step used (transformers logs only the first group)
    assert [e["learning_rate/group_0"] for e in entries] == pytest.approx([1e-2 * rex(s) for s in range(6)])
    assert [e["learning_rate/group_1"] for e in entries] == pytest.approx([1e-3 * rex(s) for s in range(6)])


# -- GreedyLR in a real run ---------------------------------------------------------------------------------------
def test_greedy_follows_evaluations_in_a_trainer_run(tmp_path):
    from transformers import TrainerCallback

    from optim_registry import OptimTrainer
    from optim_registry.testing import TokenDataset, tiny_model, training_args

    evals = []  # (lr while evaluating, eval_loss), before GreedyLR reacts to that evaluation

    class Record(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, optimizer=None, **kw):
            evals.append((optimizer.param_groups[0]["lr"], metrics["eval_loss"]))

    args = training_args("adamw_torch", str(tmp_path), lr_scheduler_type="greedy", max_steps=5,
                         lr_scheduler_kwargs="patience=0,factor=0.5,min_lr=1e-5", eval_strategy="steps",
                         eval_steps=1, per_device_eval_batch_size=8)
    assert args.metric_for_best_model == "loss"
    trainer = OptimTrainer(model=tiny_model(), args=args, train_dataset=TokenDataset(),
                           eval_dataset=TokenDataset(n=16, seed=1), callbacks=[Record()])
    trainer.train()
    assert len(evals) == 5
    # patience=0: each evaluation that beats the best so far doubles the rate, any other halves it.
    best, lr = math.inf, 1e-2
    for seen_lr, loss in evals:
        assert seen_lr == pytest.approx(lr)
        lr, best = (min(lr / 0.5, 1.0), loss) if loss < best - 1e-6 else (max(lr * 0.5, 1e-5), best)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    assert len({round(x, 12) for x, _ in evals}) > 1


# -- plugins ---------------------------------------------------------------------------------------------------
class Halving(torch.optim.lr_scheduler.LRScheduler):
    """Halves the rate every ``every`` steps, not below ``floor``."""

    def __init__(self, optimizer, every: int = 2, floor: float = 0.0, last_epoch: int = -1):
        self.every, self.floor = every, floor
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [max(self.floor, base * 0.5 ** (self.last_epoch // self.every)) for base in self.base_lrs]


def test_register_scheduler_class_typed_from_signature():
    register_scheduler("t_halving", Halving)
    try:
        spec = schedulers.get("t_halving")
        assert {o.name: (o.type, o.default) for o in spec.options} == {"every": ("int", 2), "floor": ("float", 0.0),
                                                                        "last_epoch": ("int", -1)}
        assert spec.takes == frozenset() and spec.description.startswith("Halves the rate")
        opt, sched = ours("t_halving", "every=3,floor=1e-3")
        assert_curves(curve(opt, sched, 8), [[max(1e-3, lr * 0.5 ** (s // 3)) for lr in (LR, LR2)] for s in range(8)])
        with pytest.raises(ValueError, match=r"'evry' is not accepted by lr_scheduler_type='t_halving'.*'every'"):
            check_scheduler_args(targs("t_halving", "evry=3"), strict=True)
        with pytest.raises(ValueError, match=r"key 'every': '1.5' is not a valid integer"):
            targs("t_halving", "every=1.5")
    finally:
        schedulers.unregister("t_halving")


def test_register_scheduler_function_decorator():
    @register_scheduler("t_linear_floor", description="Linear decay with a floor")
    def linear_floor(optimizer, num_warmup_steps, num_training_steps, floor: float = 0.1):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(floor, 1 - s / num_training_steps))

    try:
        spec = schedulers.get("t_linear_floor")
        assert spec.takes == {"num_warmup_steps", "num_training_steps"} and spec.description == "Linear decay with a floor"
        opt, sched = ours("t_linear_floor", {"floor": "0.5"}, total=10)
        assert_follows(curve(opt, sched, 10), [max(0.5, 1 - s / 10) for s in range(10)])
        with pytest.raises(ValueError, match=r"'flor'.*Did you mean 'floor'"):
            check_scheduler_args(targs("t_linear_floor", "flor=0.5"), strict=True)
        from optim_registry.registry import PluginError

        with pytest.raises(PluginError, match="'cosine' is built in"):
            register_scheduler("cosine", linear_floor)
    finally:
        schedulers.unregister("t_linear_floor")


def test_plugin_metric_driven_scheduler_gets_eval_defaults():
    class Plateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
        pass

    register_scheduler("t_plateau", Plateau)
    register_scheduler("t_wrong_eval", lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                       needs_eval=True)
    try:
        assert schedulers.get("t_plateau").needs_eval
        with pytest.raises(ValueError, match="'t_plateau' changes the rate from evaluation results.*eval_strategy"):
            targs("t_plateau")
        a = targs("t_plateau", "patience=0", eval_strategy="steps", eval_steps=1)
        assert a.metric_for_best_model == "loss" and a.greater_is_better is False
        opt = two_groups()
        sched = create_scheduler(a, opt, N)
        assert isinstance(sched, Plateau)
        a = targs("t_wrong_eval", eval_strategy="steps", eval_steps=1)
        with pytest.raises(ValueError, match="metric-driven.*ReduceLROnPlateau / GreedyLR"):
            create_scheduler(a, two_groups(), N)
    finally:
        schedulers.unregister("t_plateau")
        schedulers.unregister("t_wrong_eval")


def test_entry_point_group_is_loaded_lazily(tmp_path, monkeypatch):
    from optim_registry.registry import DISABLE_ENV

    monkeypatch.delenv(DISABLE_ENV, raising=False)
    (tmp_path / "t_sched_plugin_mod.py").write_text(textwrap.dedent("""
        import torch

        def sched(optimizer, num_warmup_steps, num_training_steps, scale: float = 1.0):
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: scale)
    """))
    info = tmp_path / "t_sched_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: t-sched-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[optim_registry.schedulers]\nt_ep_sched = t_sched_plugin_mod:sched\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    schedulers.rediscover()
    try:
        assert "t_ep_sched" in schedulers.names() and "t_sched_plugin_mod" not in sys.modules
        spec = schedulers.get("t_ep_sched")
        assert spec.source == "t-sched-plugin" and [o.name for o in spec.options] == ["scale"]
        opt, sched = ours("t_ep_sched", "scale=0.5")
        assert_follows(curve(opt, sched, 3), [0.5] * 3)
        with pytest.raises(ValueError, match="'scal'.*'scale'"):
            check_scheduler_args(targs("t_ep_sched", "scal=0.5"), strict=True)
    finally:
        monkeypatch.undo()
        sys.modules.pop("t_sched_plugin_mod", None)
        schedulers.rediscover()
