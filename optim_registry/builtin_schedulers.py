"""Scheduler names beyond transformers' own: one_cycle, cosine_with_warmup_restarts, rex, step, multistep.

Data only: each record points at a function in ``optim_registry.schedules`` (imported when the name
is used) and declares its ``lr_scheduler_kwargs`` with the function's signature defaults. The checks
refuse, when the arguments are created, what no single option type can.
"""

from __future__ import annotations

from typing import Any

from .schedulers import SchedulerSpec
from .spec import opt

_FN = "optim_registry.schedules"


def _fraction(kwargs: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = kwargs.get(key)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"lr_scheduler_kwargs key {key!r} is a fraction and must be in [0, 1], got {value}")


def _check_one_cycle(kwargs: dict[str, Any]) -> None:
    pct = kwargs.get("pct_start")
    if pct is not None and not 0.0 < pct < 1.0:
        raise ValueError(
            f"lr_scheduler_kwargs key 'pct_start' (rising phase as a fraction of the run) must be in (0, 1), got {pct}"
        )


def _check_restarts(kwargs: dict[str, Any]) -> None:
    if kwargs.get("cycle_warmup_steps") is not None and kwargs.get("cycle_warmup_ratio") is not None:
        raise ValueError(
            "lr_scheduler_type='cosine_with_warmup_restarts': lr_scheduler_kwargs sets both 'cycle_warmup_steps' "
            "and 'cycle_warmup_ratio'; keep one (a step count, or a fraction of each cycle)"
        )
    if kwargs.get("num_cycles", 1) < 1:
        raise ValueError(f"lr_scheduler_kwargs key 'num_cycles' must be >= 1, got {kwargs['num_cycles']}")
    _fraction(kwargs, "min_lr_ratio", "cycle_warmup_ratio")


def _check_rex(kwargs: dict[str, Any]) -> None:
    _fraction(kwargs, "min_lr_ratio")


def _check_step(kwargs: dict[str, Any]) -> None:
    size = kwargs.get("step_size")
    if size is None or size < 1:
        raise ValueError(
            f"lr_scheduler_type='step' needs lr_scheduler_kwargs step_size=<steps >= 1> (got {size}), "
            "e.g. lr_scheduler_kwargs='step_size=1000,gamma=0.5'"
        )


def _check_multistep(kwargs: dict[str, Any]) -> None:
    milestones = kwargs.get("milestones")
    if not milestones:
        raise ValueError(
            "lr_scheduler_type='multistep' needs lr_scheduler_kwargs milestones=(<step>,<step>,...), "
            "e.g. lr_scheduler_kwargs='milestones=(1000,2000),gamma=0.1'"
        )
    if any(m < 0 for m in milestones):
        raise ValueError(f"lr_scheduler_kwargs key 'milestones' must hold steps >= 0, got {milestones}")


_GAMMA = opt("gamma", "float", 0.1, "multiplicative decay at each drop")

RECORDS = (
    SchedulerSpec(
        "cosine_with_warmup_restarts", f"{_FN}:get_cosine_with_warmup_restarts_schedule",
        "Equal cycles, each a linear warm-up then a cosine decay to min_lr_ratio.",
        options=(
            opt("num_cycles", "int", 1, "number of cycles the run is split into"),
            opt("min_lr_ratio", "float", 0.0, "lowest rate (and warm-up start) as a fraction of the initial one"),
            opt("cycle_warmup_steps", "int", None, "warm-up steps of every cycle (default: warmup_steps)"),
            opt("cycle_warmup_ratio", "float", None, "warm-up of every cycle as a fraction of a cycle"),
        ),
        check=_check_restarts,
    ),
    SchedulerSpec(
        "multistep", f"{_FN}:get_multistep_schedule",
        "Linear warm-up, then the rate times gamma at each milestone step (torch MultiStepLR in steps).",
        options=(opt("milestones", "ints", None, "global steps at which the rate drops, e.g. (1000,2000)"), _GAMMA),
        check=_check_multistep,
    ),
    SchedulerSpec(
        "one_cycle", f"{_FN}:get_one_cycle_schedule",
        "torch OneCycleLR peaking at each group's learning rate over the whole run.",
        options=(
            opt("pct_start", "float", None, "rising phase as a fraction of the run (default: warmup_steps, else 0.3)"),
            opt("anneal_strategy", "str", "cos", "cos or linear", choices=("cos", "linear")),
            opt("div_factor", "float", 25.0, "start rate = learning rate / div_factor"),
            opt("final_div_factor", "float", 1e4, "final rate = start rate / final_div_factor"),
            opt("three_phase", "bool", False, "a third phase annihilating the rate (fast.ai style)"),
            opt("cycle_momentum", "bool", False, "cycle momentum / beta1 inversely to the rate"),
            opt("base_momentum", "float", 0.85, "lowest momentum when cycling"),
            opt("max_momentum", "float", 0.95, "highest momentum when cycling"),
        ),
        check=_check_one_cycle,
    ),
    SchedulerSpec(
        "rex", f"{_FN}:get_rex_schedule",
        "Linear warm-up, then REX decay (1 - t) / (1 - t/2) (arXiv 2107.04197).",
        options=(opt("min_lr_ratio", "float", 0.0, "final rate as a fraction of the initial one"),),
        check=_check_rex,
    ),
    SchedulerSpec(
        "step", f"{_FN}:get_step_schedule",
        "Linear warm-up, then the rate times gamma every step_size steps (torch StepLR in steps).",
        options=(opt("step_size", "int", None, "steps between drops"), _GAMMA),
        check=_check_step,
    ),
)
