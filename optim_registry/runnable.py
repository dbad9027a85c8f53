"""The one answer to "can this name run here, with these arguments?".

``can_run`` is what listings, ``compare``, the benchmarks and the registry-wide test sweep ask;
``check_training_args`` is the same decision raised as the one clear exception, which is how the
TrainingArguments (when created) and the Trainer (when it builds) ask it. Both start from
``environment_refusal``: registered, resolvable, installed, trainable through a Trainer, GPU present.

Example::

    ok, reason = can_run("galore_adamw")          # (True, None) where galore-torch is installed
    ok, reason = can_run("adamw_torch", args)     # also every check the arguments alone allow
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .spec import OptimizerSpec


@dataclass(frozen=True)
class Refusal:
    """Why a name cannot run here: a short ``reason`` for tables, the full ``message`` for the exception."""

    reason: str
    message: str
    error: type[Exception] = ValueError


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def environment_refusal(record: Any, *, use_cpu: bool = False, packages: bool = True) -> Refusal | None:
    """What keeps ``record`` (an ``OptimizerSpec`` or a ``list_optimizers()`` entry) from running here.

    An ``OptimizerInfo`` is judged from its own fields, so a listing never imports a plugin's code.
    ``packages=False`` leaves a missing package out (creating arguments only warns about it).
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
    if record.needs_gpu is not None and (use_cpu or not _cuda_available()):
        where = "use_cpu=True" if use_cpu else "this machine has none"
        return Refusal(
            f"needs a CUDA GPU ({record.needs_gpu}); {where}",
            f"optim={name!r} needs a CUDA GPU ({record.needs_gpu}); none is available here. "
            "Train on a GPU, or choose a CPU-capable name (`optim-registry list --available`).",
        )
    return None


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
    refusal = environment_refusal(record, use_cpu=bool(getattr(args, "use_cpu", False)))
    if refusal is not None:
        return False, refusal.reason
    if args is not None:
        if _plain(args.optim) != record.name:
            raise ValueError(f"can_run({record.name!r}, args): args.optim is {_plain(args.optim)!r}")
        try:
            check_training_args(args, building=True)
        except (ValueError, ImportError) as exc:
            return False, str(exc)
    return True, None


def _plain(value: Any) -> str:
    return str(getattr(value, "value", value))


def check_training_args(args: Any, *, building: bool = False) -> None:
    """Every check that can be made from the arguments alone, raised before a model exists.

    A missing optimizer package is an environment fact, not a mistake in the arguments: the stock class
    accepts such arguments (they may be written on one machine and trained on another), so creating them
    only warns, and ``building=True`` (when training starts) refuses.
    """
    from . import build, deps
    from .distributed import check_distributed
    from .registry import optimizers
    from .schedulers import check_scheduler_args

    name = _plain(args.optim)
    spec = optimizers.get(name)
    if not building:
        deps.warn_missing(spec.name, spec.requires)
    refusal = environment_refusal(spec, use_cpu=bool(getattr(args, "use_cpu", False)), packages=building)
    if refusal is not None:
        raise refusal.error(refusal.message)
    if spec.builder is not None and spec.source != "builtin":
        build.load_builder(spec)  # a plugin's "builder" that cannot be one is refused by name, now
    given, _ = build.check_values(spec, args)
    build.parse_group_rules(spec, getattr(args, "optim_groups", None))
    _check_target_modules(spec, getattr(args, "optim_target_modules", None))
    check_scheduler_args(args)
    ga = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
    if spec.protocol == "fused_backward" and ga > 1:
        raise ValueError(
            f"optim={name!r} updates the weights inside backward, so gradient accumulation cannot work: "
            f"set gradient_accumulation_steps=1 (got {ga}), or choose another optimizer."
        )
    if spec.protocol == "fused_backward" and getattr(args, "fp16", False):
        raise ValueError(
            f"optim={name!r} needs its own backward (fused_backward), but with fp16=True accelerate runs the "
            "GradScaler's backward instead and never calls it. Use bf16=True or full precision."
        )
    if spec.layerwise and getattr(args, "fp16", False):
        raise ValueError(
            f"optim={name!r} steps each parameter inside backward, before fp16 loss scaling can unscale or "
            "check the gradients. Use bf16=True, or the whole-model name " + repr(spec.base) + "."
        )
    if spec.layerwise:
        from .layerwise import check_layerwise_clipping

        # transformers' default max_grad_norm passes (warned about when the optimizer is built); another
        # value needs a clipping option.
        check_layerwise_clipping(spec, args, given)
    check_distributed(spec, args)


#: (optim, target patterns) already warned about: the warning is said once, not at every validation.
_WARNED_UNUSED_TARGETS: set[tuple[str, str]] = set()


def _check_target_modules(spec: Any, patterns: Any) -> None:
    """Target patterns well formed for a record that uses them; a warning for one that does not."""
    from .param_groups import check_target_patterns

    if spec.target_modules:
        if patterns is None:
            raise ValueError(
                f"optim={spec.name!r} needs `optim_target_modules` (e.g. ['self_attn', 'mlp'] or 'all-linear'): "
                "the modules whose weights it projects"
            )
        check_target_patterns(patterns)
        return
    if patterns is None or (spec.builder is not None and spec.source != "builtin"):
        return  # a plugin's own builder may read the patterns itself
    key = (spec.name, repr(patterns))
    if key not in _WARNED_UNUSED_TARGETS:
        _WARNED_UNUSED_TARGETS.add(key)
        import warnings

        from .optim_args import shorten

        warnings.warn(
            f"optim_target_modules={shorten(patterns)} is ignored: optim={spec.name!r} does not use target modules "
            "(GaLore, APOLLO and Q-GaLore names do). Drop optim_target_modules, or choose such an optimizer.",
            UserWarning,
            stacklevel=3,
        )
