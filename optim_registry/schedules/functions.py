"""Learning-rate schedule functions beyond transformers' own, each ``(optimizer, num_warmup_steps, num_training_steps, **kw)``.

All but ``get_one_cycle_schedule`` return a ``LambdaLR``: it multiplies every param group's initial
rate by the same factor, so composite optimizers (Muon + AdamW) and layer-wise optimizers, whose
``param_groups`` are the real groups, keep their per-group ratios while following the schedule. The
factors are module-level functions bound with ``functools.partial`` so a scheduler pickles and its
``state_dict`` round-trips. Warm-up is linear from 0, as in transformers, unless a schedule says otherwise.
"""

from __future__ import annotations

import bisect
import math
import weakref
from collections.abc import Sequence
from functools import partial
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR


def _warmup_factor(step: int, num_warmup_steps: int) -> float:
    return float(step) / float(max(1, num_warmup_steps))


# -- REX ------------------------------------------------------------------------------------------
def _rex_lambda(step: int, *, num_warmup_steps: int, num_training_steps: int, min_lr_ratio: float) -> float:
    if step < num_warmup_steps:
        return _warmup_factor(step, num_warmup_steps)
    t = min(1.0, (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - t) / (1.0 - t / 2.0)


def get_rex_schedule(
    optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int, min_lr_ratio: float = 0.0,
    last_epoch: int = -1,
) -> LambdaLR:
    """REX (arXiv 2107.04197): linear warm-up, then ``(1 - t) / (1 - t/2)`` with ``t`` the decay progress.

    Decays slowly at first and fast at the end; ``min_lr_ratio`` lifts the floor
    (``factor = min + (1 - min) * rex(t)``).
    """
    _check_ratio("min_lr_ratio", min_lr_ratio)
    return LambdaLR(optimizer, partial(
        _rex_lambda, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps,
        min_lr_ratio=min_lr_ratio,
    ), last_epoch)


# -- cosine with a warm-up in every cycle --------------------------------------------------------------
def _cycle_bounds(step: int, num_training_steps: int, num_cycles: int) -> tuple[int, int]:
    """Start and length of the cycle holding ``step``; cycles split the run as evenly as integers allow."""
    cycle = min(num_cycles - 1, step * num_cycles // max(1, num_training_steps))
    start = cycle * num_training_steps // num_cycles
    end = (cycle + 1) * num_training_steps // num_cycles
    return start, end - start


def resolve_cycle_warmup(
    num_warmup_steps: int, num_training_steps: int, num_cycles: int,
    cycle_warmup_steps: int | None = None, cycle_warmup_ratio: float | None = None,
) -> int:
    """The warm-up of each cycle: the cycle option if given (a ratio is of one cycle), else the Trainer's."""
    if cycle_warmup_steps is not None and cycle_warmup_ratio is not None:
        raise ValueError(
            "lr_scheduler_kwargs sets both 'cycle_warmup_steps' and 'cycle_warmup_ratio'; keep one "
            "(a step count, or a fraction of each cycle)"
        )
    if cycle_warmup_ratio is not None:
        _check_ratio("cycle_warmup_ratio", cycle_warmup_ratio)
        cycle = num_training_steps // max(1, num_cycles)
        own = math.ceil(cycle * cycle_warmup_ratio)
    elif cycle_warmup_steps is not None:
        if cycle_warmup_steps < 0:
            raise ValueError(f"lr_scheduler_kwargs key 'cycle_warmup_steps' must be >= 0, got {cycle_warmup_steps}")
        own = cycle_warmup_steps
    else:
        return num_warmup_steps
    if num_warmup_steps and num_warmup_steps != own:
        raise ValueError(
            f"cosine_with_warmup_restarts got a warm-up of {num_warmup_steps} steps from TrainingArguments "
            f"(warmup_steps) and {own} per cycle from lr_scheduler_kwargs; set warmup_steps=0 or drop "
            "cycle_warmup_steps / cycle_warmup_ratio (without them, warmup_steps is each cycle's warm-up)"
        )
    return own


def _cosine_warmup_restarts_lambda(
    step: int, *, num_training_steps: int, num_cycles: int, cycle_warmup: int, min_lr_ratio: float
) -> float:
    if step >= num_training_steps:
        return min_lr_ratio
    start, length = _cycle_bounds(step, num_training_steps, num_cycles)
    pos = step - start
    warm = min(cycle_warmup, max(0, length - 1))
    if pos < warm:
        factor = pos / warm
    else:
        progress = (pos - warm) / max(1, length - warm)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * factor


def get_cosine_with_warmup_restarts_schedule(
    optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int, num_cycles: int = 1,
    min_lr_ratio: float = 0.0, cycle_warmup_steps: int | None = None, cycle_warmup_ratio: float | None = None,
    last_epoch: int = -1,
) -> LambdaLR:
    """``num_cycles`` equal cycles, each a linear warm-up from ``min_lr_ratio`` to 1 then a cosine back down.

    Each cycle warms up for ``cycle_warmup_steps`` (or ``cycle_warmup_ratio`` of a cycle); without them,
    for the Trainer's warm-up steps. With ``num_cycles=1`` and ``min_lr_ratio=0`` it is transformers' ``cosine``.
    """
    if not 1 <= num_cycles <= max(1, num_training_steps):
        raise ValueError(
            f"lr_scheduler_kwargs key 'num_cycles' must be between 1 and the {num_training_steps} training steps, "
            f"got {num_cycles}"
        )
    _check_ratio("min_lr_ratio", min_lr_ratio)
    warm = resolve_cycle_warmup(num_warmup_steps, num_training_steps, num_cycles, cycle_warmup_steps, cycle_warmup_ratio)
    return LambdaLR(optimizer, partial(
        _cosine_warmup_restarts_lambda, num_training_steps=num_training_steps, num_cycles=num_cycles,
        cycle_warmup=warm, min_lr_ratio=min_lr_ratio,
    ), last_epoch)


# -- step / multistep --------------------------------------------------------------------------------------
def _step_lambda(step: int, *, num_warmup_steps: int, step_size: int, gamma: float) -> float:
    warm = _warmup_factor(step, num_warmup_steps) if step < num_warmup_steps else 1.0
    return warm * gamma ** (step // step_size)


def get_step_schedule(
    optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int, step_size: int | None = None,
    gamma: float = 0.1, last_epoch: int = -1,
) -> LambdaLR:
    """torch's ``StepLR`` counted in optimizer steps (rate times ``gamma`` every ``step_size`` steps), after a
    linear warm-up that multiplies it. With no warm-up it equals ``StepLR(optimizer, step_size, gamma)``."""
    if step_size is None or step_size < 1:
        raise ValueError(f"lr_scheduler_type='step' needs lr_scheduler_kwargs step_size=<steps >= 1>, got {step_size}")
    _check_gamma(gamma)
    return LambdaLR(optimizer, partial(
        _step_lambda, num_warmup_steps=num_warmup_steps, step_size=step_size, gamma=gamma,
    ), last_epoch)


def _multistep_lambda(step: int, *, num_warmup_steps: int, milestones: tuple[int, ...], gamma: float) -> float:
    warm = _warmup_factor(step, num_warmup_steps) if step < num_warmup_steps else 1.0
    return warm * gamma ** bisect.bisect_right(milestones, step)


def get_multistep_schedule(
    optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
    milestones: Sequence[int] | None = None, gamma: float = 0.1, last_epoch: int = -1,
) -> LambdaLR:
    """torch's ``MultiStepLR`` in optimizer steps: times ``gamma`` at each milestone (global step numbers),
    after a linear warm-up that multiplies it."""
    if not milestones:
        raise ValueError(
            "lr_scheduler_type='multistep' needs lr_scheduler_kwargs milestones=(<step>,<step>,...), e.g. "
            "milestones=(1000,2000)"
        )
    if any(m < 0 for m in milestones):
        raise ValueError(f"lr_scheduler_kwargs key 'milestones' must hold steps >= 0, got {tuple(milestones)}")
    _check_gamma(gamma)
    return LambdaLR(optimizer, partial(
        _multistep_lambda, num_warmup_steps=num_warmup_steps, milestones=tuple(sorted(milestones)), gamma=gamma,
    ), last_epoch)


# -- polynomial with an explicit reference rate --------------------------------------------------------------
def _polynomial_lambda(
    step: int, *, num_warmup_steps: int, num_training_steps: int, lr_end: float, power: float, lr_init: float
) -> float:
    # transformers' formula, with lr_init given instead of read from optimizer.defaults (which a
    # layer-wise optimizer does not carry).
    if step < num_warmup_steps:
        return _warmup_factor(step, num_warmup_steps)
    if step > num_training_steps:
        return lr_end / lr_init
    remaining = 1 - (step - num_warmup_steps) / (num_training_steps - num_warmup_steps)
    return ((lr_init - lr_end) * remaining**power + lr_end) / lr_init


def get_polynomial_schedule(
    optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int, lr_end: float = 1e-7,
    power: float = 1.0, lr_init: float | None = None, last_epoch: int = -1,
) -> LambdaLR:
    """transformers' ``polynomial`` with the reference rate ``lr_init`` explicit (default: ``optimizer.defaults['lr']``).

    Every group is scaled by the same factor, so ``lr_end`` is reached by the group whose rate is ``lr_init``.
    """
    if lr_init is None:
        lr_init = optimizer.defaults["lr"]
    if not power > 0:  # power <= 0 divides by zero at the end of the decay
        raise ValueError(f"lr_scheduler_kwargs power={power!r} is out of range (key 'power', valid range > 0)")
    if not lr_init > lr_end:
        raise ValueError(
            f"lr_scheduler_kwargs key 'lr_end' ({lr_end}) must be smaller than the learning rate ({lr_init})"
        )
    return LambdaLR(optimizer, partial(
        _polynomial_lambda, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps,
        lr_end=lr_end, power=power, lr_init=lr_init,
    ), last_epoch)


# -- one cycle ---------------------------------------------------------------------------------------------
def get_one_cycle_schedule(
    optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int, pct_start: float | None = None,
    anneal_strategy: str = "cos", div_factor: float = 25.0, final_div_factor: float = 1e4,
    three_phase: bool = False, cycle_momentum: bool = False, base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> OneCycleLR:
    """torch's ``OneCycleLR`` peaking at each group's own rate, over the whole run.

    The rising phase is ``pct_start`` of the run; without it, the Trainer's warm-up steps (when set), else
    torch's 0.3. ``cycle_momentum`` is off by default because Adam-style optimizers have no momentum
    to cycle (torch would cycle ``betas[0]``).
    """
    if num_training_steps < 2:
        raise ValueError(f"one_cycle needs at least 2 training steps, got {num_training_steps}")
    if pct_start is None:
        pct_start = num_warmup_steps / num_training_steps if num_warmup_steps else 0.3
    elif num_warmup_steps:
        raise ValueError(
            f"one_cycle got both a warm-up of {num_warmup_steps} steps (TrainingArguments.warmup_steps) and "
            f"lr_scheduler_kwargs pct_start={pct_start}; its rising phase is one of them: set warmup_steps=0 "
            "or drop pct_start"
        )
    if not 0.0 < pct_start < 1.0:
        raise ValueError(f"one_cycle: pct_start (rising phase as a fraction of the run) must be in (0, 1), got {pct_start}")
    max_lr = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    return OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=num_training_steps, pct_start=pct_start,
        anneal_strategy=anneal_strategy, cycle_momentum=cycle_momentum, base_momentum=base_momentum,
        max_momentum=max_momentum, div_factor=div_factor, final_div_factor=final_div_factor,
        three_phase=three_phase,
    )


# -- warmup-stable-decay with phases as ratios -------------------------------------------------------------------
def wsd_phase_steps(
    num_training_steps: int, *, num_decay_steps: int | None = None, decay_ratio: float | None = None,
    num_stable_steps: int | None = None, stable_ratio: float | None = None,
) -> tuple[int, int | None]:
    """``(num_decay_steps, num_stable_steps)`` from counts or fractions of the run (ratios round up)."""
    if num_decay_steps is not None and decay_ratio is not None:
        raise ValueError(
            "lr_scheduler_kwargs sets both 'num_decay_steps' and 'decay_ratio' for warmup_stable_decay; keep one "
            "(a step count, or a fraction of the run)"
        )
    if num_stable_steps is not None and stable_ratio is not None:
        raise ValueError(
            "lr_scheduler_kwargs sets both 'num_stable_steps' and 'stable_ratio' for warmup_stable_decay; keep one "
            "(a step count, or a fraction of the run)"
        )
    if num_decay_steps is None and decay_ratio is None:
        raise ValueError(
            "lr_scheduler_type='warmup_stable_decay' needs the length of its decay phase: set lr_scheduler_kwargs "
            "decay_ratio=<fraction of the run, e.g. 0.1> or num_decay_steps=<steps>"
        )
    if decay_ratio is not None:
        _check_ratio("decay_ratio", decay_ratio)
        num_decay_steps = math.ceil(num_training_steps * decay_ratio)
    if stable_ratio is not None:
        _check_ratio("stable_ratio", stable_ratio)
        num_stable_steps = int(num_training_steps * stable_ratio)
    return int(num_decay_steps), num_stable_steps  # type: ignore[arg-type]


def _check_gamma(gamma: float) -> None:
    if not (gamma > 0 and math.isfinite(gamma)):  # 0 stops training at the first drop, < 0 flips the sign
        raise ValueError(f"lr_scheduler_kwargs gamma={gamma!r} is out of range (key 'gamma', valid range > 0)")


def _check_ratio(key: str, value: Any) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"lr_scheduler_kwargs key {key!r} is a fraction and must be in [0, 1], got {value}")


# -- a warm-up for the metric-driven schedulers ---------------------------------------------------------------
class _StepWarmup:
    """A linear warm-up over optimizer steps for a scheduler the Trainer steps only with evaluation metrics.

    ``ReduceLROnPlateau`` and ``GreedyLR`` are stepped at evaluations, so the warm-up advances from a
    step hook on the optimizer instead (on ``fused_backward`` for LOMO-style optimizers): the k-th optimizer step (from 0) uses ``k / num_warmup_steps``
    of each group's rate, as transformers' warm-ups do. Evaluations during the warm-up are not judged
    (the rate is still rising; a plateau there means nothing), as timm's plateau scheduler does.
    """

    _WARMUP_KEYS = ("warmup_steps_total", "warmup_steps_done", "warmup_base_lrs")
    #: Attributes that are wiring, not state (torch's ReduceLROnPlateau saves its whole __dict__).
    _NOT_STATE = ("_warmup_hook", "_warmup_target")

    optimizer: Optimizer

    def _start_warmup(self, num_warmup_steps: int) -> None:
        self.warmup_steps_total = int(num_warmup_steps)
        self.warmup_steps_done = 0
        self.warmup_base_lrs = [float(group["lr"]) for group in self.optimizer.param_groups]
        self._apply_warmup()
        stepped = self.optimizer
        # The Trainer hands accelerate's wrapper, which steps the real optimizer but keeps no hooks itself.
        while not hasattr(stepped, "_optimizer_step_post_hooks") and hasattr(stepped, "optimizer"):
            stepped = stepped.optimizer
        # Only the newest warm-up scheduler of an optimizer drives it: one replaced on the same optimizer
        # (a second train(), restarting the schedule on resume) must not keep writing rates.
        stepped._optim_registry_warmup = weakref.ref(self)
        self._warmup_target = stepped
        fused = getattr(stepped, "fused_backward", None)
        if callable(fused):
            # LOMO / AdaLomo update inside backward; accelerate never calls their step(), so no step hook
            # would fire: count their fused backward passes instead (one per optimizer step, since
            # gradient accumulation is refused for them).
            def fused_backward(*args: Any, **kwargs: Any) -> Any:
                result = fused(*args, **kwargs)
                self._after_optimizer_step(stepped, args, kwargs)
                return result

            stepped.fused_backward = fused_backward
            self._warmup_hook = None
        else:
            self._warmup_hook = stepped.register_step_post_hook(self._after_optimizer_step)

    @property
    def in_warmup(self) -> bool:
        # getattr: the base class may step once inside its own __init__, before the warm-up is set up.
        return getattr(self, "warmup_steps_done", 0) < getattr(self, "warmup_steps_total", 0)

    def _apply_warmup(self) -> None:
        factor = min(1.0, self.warmup_steps_done / self.warmup_steps_total)
        for group, base in zip(self.optimizer.param_groups, self.warmup_base_lrs):
            group["lr"] = base * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        owner = getattr(self._warmup_target, "_optim_registry_warmup", None)
        if owner is not None and owner() is self and self.in_warmup:
            self.warmup_steps_done += 1
            self._apply_warmup()

    def step(self, metrics: Any = None, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if self.in_warmup:
            return
        super().step(metrics, *args, **kwargs)  # type: ignore[misc]

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in super().state_dict().items() if k not in self._NOT_STATE}  # type: ignore[misc]
        state.update({k: getattr(self, k) for k in self._WARMUP_KEYS})
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        for key in self._WARMUP_KEYS:
            if key in state:
                setattr(self, key, state.pop(key))
        super().load_state_dict(state)  # type: ignore[misc]


def _plateau_type() -> type:
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    class WarmupReduceLROnPlateau(_StepWarmup, ReduceLROnPlateau):
        """``ReduceLROnPlateau`` after a linear warm-up of ``num_warmup_steps`` optimizer steps."""

        def __init__(self, optimizer: Optimizer, num_warmup_steps: int, **kwargs: Any) -> None:
            super().__init__(optimizer, **kwargs)
            self._start_warmup(num_warmup_steps)

    return WarmupReduceLROnPlateau


def _greedy_type() -> type:
    from transformers.optimization import GreedyLR

    class WarmupGreedyLR(_StepWarmup, GreedyLR):
        """``GreedyLR`` after a linear warm-up of ``num_warmup_steps`` optimizer steps."""

        def __init__(self, optimizer: Optimizer, num_warmup_steps: int, **kwargs: Any) -> None:
            super().__init__(optimizer, **kwargs)
            self._start_warmup(num_warmup_steps)

    return WarmupGreedyLR


_WARMUP_TYPES: dict[str, type] = {}


def warmup_type(kind: str) -> type:
    """The warm-up subclass of ``ReduceLROnPlateau`` (``"plateau"``) or ``GreedyLR`` (``"greedy"``), made once so
    every scheduler is of one class; made on first use so other schedules do not import transformers."""
    if kind not in _WARMUP_TYPES:
        _WARMUP_TYPES[kind] = {"plateau": _plateau_type, "greedy": _greedy_type}[kind]()
    return _WARMUP_TYPES[kind]


def get_reduce_on_plateau_schedule(optimizer: Optimizer, num_warmup_steps: int = 0, **kwargs: Any) -> Any:
    """torch's ``ReduceLROnPlateau``; with ``num_warmup_steps`` a linear warm-up first (the Trainer's
    ``warmup_steps``, which transformers' own ``reduce_lr_on_plateau`` ignores)."""
    if not num_warmup_steps:
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        return ReduceLROnPlateau(optimizer, **kwargs)
    return warmup_type("plateau")(optimizer, num_warmup_steps, **kwargs)


def get_greedy_schedule(optimizer: Optimizer, num_warmup_steps: int = 0, **kwargs: Any) -> Any:
    """transformers' ``GreedyLR``; with ``num_warmup_steps`` a linear warm-up first."""
    if not num_warmup_steps:
        from transformers.optimization import GreedyLR

        return GreedyLR(optimizer, **kwargs)
    return warmup_type("greedy")(optimizer, num_warmup_steps, **kwargs)
