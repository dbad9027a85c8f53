"""Schedule-free optimizers (schedulefree): no decay schedule needed, train/eval modes, own warm-up."""

from __future__ import annotations

from dataclasses import replace

from ...spec import NONNEG, Distributed, OptimizerSpec, Requirement, Run, opt

#: The family page's title and first paragraph (docs/optimizers/schedulefree.md, `optim-registry show`).
TITLE = "Schedule-free optimizers"
ABOUT = (
    "No decaying schedule needed: the optimizer averages its iterates. It must be switched to "
    "`eval()` before evaluating and saving; `OptimTrainer` does that."
)

_REQUIRES = (Requirement("schedulefree", "schedulefree", "1.4", "schedulefree"),)
_BUILDER = "optim_registry.families.schedulefree.builders:schedule_free"
#: Elementwise updates, and train()/eval() move the real weights: run on each rank's rows as they are.
_DISTRIBUTED = Distributed(fsdp2_math="local", fsdp2_run=Run())
_ADAM_HP = frozenset({"lr", "betas", "eps", "weight_decay"})
_AVERAGING = (
    opt("r", "float", 0.0, "polynomial weighting of the average: iterate k weighs k**r", **NONNEG),
    opt("weight_lr_power", "float", 2.0, "iterates are weighted by max_lr_so_far**weight_lr_power (0: no "
        "weighting)", **NONNEG),
    opt("foreach", "bool", None, "use the foreach (multi-tensor) implementation; none lets the library choose"),
)
_RESUME = "state_dict (z, moments, k, weight_sum, train_mode); the checkpoint is saved in eval mode; exact"

RECORDS = (
    OptimizerSpec(
        name="schedule_free_adamw",
        target="schedulefree:AdamWScheduleFree",
        family="schedulefree",
        description="Schedule-free AdamW: averaging replaces the decay schedule. Warms up itself over "
        "TrainingArguments.warmup_steps (a ratio < 1 is converted to steps); evaluate and save in eval mode.",
        requires=_REQUIRES,
        hparams=_ADAM_HP,
        options=_AVERAGING,
        builder=_BUILDER,
        protocol="train_eval",
        distributed=replace(_DISTRIBUTED, zero_run=Run(measured=(0.0, 0.0, 7.7e-7))),
        owns_warmup=True,
        state_bytes=8.0,
        paper="arXiv:2405.15682",
        resume=_RESUME,
    ),
    OptimizerSpec(
        name="schedule_free_radam",
        target="schedulefree:RAdamScheduleFree",
        family="schedulefree",
        description="Schedule-free RAdam: needs neither warm-up nor schedule. With silent_sgd_phase "
        "(the default) the weights stay unchanged for the first steps (4 with beta2=0.999).",
        requires=_REQUIRES,
        hparams=_ADAM_HP,
        options=(
            *_AVERAGING,
            opt("silent_sgd_phase", "bool", True, "skip updates while the rectification is undefined "
                "(the first ~4 steps); false does plain SGD steps there instead"),
        ),
        protocol="train_eval",
        distributed=replace(_DISTRIBUTED, fsdp2_run=Run("silent_sgd_phase=false")),
        state_bytes=8.0,
        paper="arXiv:2405.15682",
        resume=_RESUME,
    ),
    OptimizerSpec(
        name="schedule_free_sgd",
        demo_lr=0.5,
        target="schedulefree:SGDScheduleFree",
        family="schedulefree",
        description="Schedule-free SGD with momentum-style interpolation. Warms up itself over "
        "TrainingArguments.warmup_steps (a ratio < 1 is converted to steps); evaluate and save in eval mode.",
        requires=_REQUIRES,
        hparams=frozenset({"lr", "weight_decay"}),
        options=(
            opt("momentum", "float", 0.9, "interpolation between the averaged and the base sequence, in (0, 1)",
                low=0.0, high=1.0, low_open=True, high_open=True),
            *_AVERAGING,
        ),
        builder=_BUILDER,
        protocol="train_eval",
        distributed=_DISTRIBUTED,
        owns_warmup=True,
        state_bytes=4.0,
        paper="arXiv:2405.15682",
        resume=_RESUME,
    ),
)
