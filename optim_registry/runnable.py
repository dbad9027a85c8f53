"""The one answer to "can this name run here, with these arguments?".

``can_run`` is what listings, ``compare``, the benchmarks and the registry-wide test sweep ask;
``check_training_args`` is the same decision raised as the one clear exception, which is how the
TrainingArguments (when created) and the Trainer (when it builds) ask it; ``check_here`` is what the build asks.
All start from ``environment_refusal``: installed, trainable through a Trainer, a GPU where one is needed
(``on_cpu``: the one device rule). What the arguments mean is their ``plan.Plan``.

Example::

    ok, reason = can_run("galore_adamw")          # (True, None) where galore-torch is installed
    ok, reason = can_run("adamw_torch", args)     # also every check the arguments alone allow
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .spec import OptimizerSpec, plain_name

if TYPE_CHECKING:
    from .plan import Plan


@dataclass(frozen=True)
class Refusal:
    """Why a name cannot run here: a short ``reason`` for tables, the full ``message`` for the exception."""

    reason: str
    message: str
    error: type[Exception] = ValueError


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def on_cpu(model: Any = None, args: Any = None) -> bool:
    """The one device rule: whether the run's parameters live on the CPU.

    With a model, where its trainable parameters are (one on the CPU is enough: a CUDA-only kernel would
    meet it). Without one, ``TrainingArguments.use_cpu``, or no CUDA GPU on this machine.
    """
    params = []
    if model is not None and hasattr(model, "parameters"):
        params = [p for p in model.parameters() if p.requires_grad] or list(model.parameters())
    if params:
        return any(p.device.type == "cpu" for p in params)
    if args is not None and getattr(args, "use_cpu", False):
        return True
    return not _cuda_available()


def environment_refusal(record: Any, *, on_cpu: bool | None = None, packages: bool = True) -> Refusal | None:
    """What keeps ``record`` (an ``OptimizerSpec`` or a ``list_optimizers()`` entry) from running here.

    An ``OptimizerInfo`` is judged from its own fields, so a listing never imports a plugin's code.
    ``packages=False`` leaves a missing package out (creating arguments only warns about it). ``on_cpu``:
    whether the run's parameters are on the CPU (``None``: only whether this machine has a GPU).
    """
    name = record.name
    if not packages:
        problem = install = None
    elif isinstance(record, OptimizerSpec):
        from . import deps

        problem = deps.missing_text(name, record.requires)
        install = " && ".join(r.pip_line for r in deps.missing(record.requires)) if problem else None
    else:
        problem = None if record.available else f"optim={name!r} needs {record.install or 'a package that is missing'}"
        install = None if record.available else record.install
    if problem is not None:
        from .deps import MissingDependencyError

        return Refusal(f"package missing: {install}", problem, MissingDependencyError)
    if record.unsupported:
        return Refusal(
            f"cannot train through a Trainer: {record.unsupported}",
            f"optim={name!r} cannot train through the Trainer: {record.unsupported}",
        )
    if record.needs_gpu is not None and (on_cpu or not _cuda_available()):
        where = "the parameters are on the CPU" if on_cpu else "this machine has none"
        return Refusal(
            f"needs a CUDA GPU ({record.needs_gpu}); {where}",
            f"optim={name!r} needs a CUDA GPU ({record.needs_gpu}); {where}. "
            "Train on a GPU, or choose a CPU-capable name (`optim-registry list --available`).",
        )
    return None


def check_here(spec: OptimizerSpec, *, on_cpu: bool | None = None, packages: bool = True) -> None:
    """``environment_refusal`` raised as its one exception (``MissingDependencyError`` or ``ValueError``)."""
    refusal = environment_refusal(spec, on_cpu=on_cpu, packages=packages)
    if refusal is not None:
        raise refusal.error(refusal.message)


def can_run(spec_or_name: Any, args: Any = None) -> tuple[bool, str | None]:
    """``(True, None)`` if the name can train here (with ``args``, if given), else ``(False, reason)``.

    ``spec_or_name``: a registered name, an ``OptimizerSpec`` or a ``list_optimizers()`` entry. With
    ``args`` every check the arguments alone allow is made too (as when training starts); the reason is
    then the message of the exception the Trainer would raise.
    """
    record = spec_or_name
    if isinstance(spec_or_name, str):
        from .registry import optimizers

        try:
            optimizers.check_name(spec_or_name)
            record = optimizers.get(spec_or_name)
        except (ValueError, ImportError) as exc:
            return False, str(exc)
    refusal = environment_refusal(record, on_cpu=bool(getattr(args, "use_cpu", False)) or None)
    if refusal is not None:
        return False, refusal.reason
    if args is not None:
        if plain_name(args.optim) != record.name:
            raise ValueError(f"can_run({record.name!r}, args): args.optim is {plain_name(args.optim)!r}")
        try:
            check_training_args(args, building=True)
        except (ValueError, ImportError) as exc:
            return False, str(exc)
    return True, None


def check_training_args(args: Any, *, building: bool = False, model: Any = None) -> Plan:
    """Every check that can be made from the arguments alone (their plan), and whether the name runs here.

    A missing optimizer package is an environment fact, not a mistake in the arguments: the stock class
    accepts such arguments (they may be written on one machine and trained on another), so creating them
    only warns, and ``building=True`` (when training starts) refuses. With ``model``, a GPU-only name is
    judged by where the model's parameters are.
    """
    from . import deps
    from .plan import plan_of
    from .registry import optimizers

    spec = optimizers.get(plain_name(args.optim))
    if not building:
        deps.warn_missing(spec.name, spec.requires)
    device = on_cpu(model, args) if model is not None else bool(getattr(args, "use_cpu", False)) or None
    check_here(spec, on_cpu=device, packages=building)
    return plan_of(args)
