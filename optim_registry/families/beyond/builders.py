"""Builders for CAME (three betas, two epsilons, lr required) and the matrix optimizers Muon and Dion."""

from __future__ import annotations

from typing import Any

from ...context import BuildContext


def came(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """``came_pytorch.CAME`` with ``betas=(beta1, beta2, beta3)``, ``eps=(eps1, eps2)`` and ``lr`` always passed."""
    lr = ctx.hparams["lr"]  # > 0: CAME asserts it, so the record's positive_lr check refuses 0 up front
    beta1, beta2 = ctx.hparams["betas"]  # two numbers: the record's num_betas, checked by the parser
    opts = ctx.options
    kwargs: dict[str, Any] = {
        "lr": lr,
        "betas": (float(beta1), float(beta2), float(opts["beta3"])),
        "eps": (float(opts["eps1"]), float(opts["eps2"])),
        "clip_threshold": float(opts["clip_threshold"]),
        "weight_decay": ctx.kwargs["weight_decay"],
    }
    return ctx.target(), ctx.with_groups(kwargs)


def routed_groups(ctx: BuildContext) -> list[dict[str, Any]]:
    """The interpreter's groups, already routed (``flag`` set) and refined by any ``optim_groups`` rules."""
    ctx.require_model()
    return [dict(g) for g in ctx.groups or ()]


def _hybrid_kwargs(ctx: BuildContext, **own: Any) -> dict[str, Any]:
    """What both hybrid classes take, beside their ``own`` options: the routed groups, the matrix rate (the option the
    record's routing names) as ``lr``, the Trainer's rate as ``adamw_lr``, the momentum, the product dtype, and the
    AdamW side's betas / eps / weight decay."""
    opts = ctx.options
    return {
        "params": routed_groups(ctx),
        "lr": float(opts[ctx.spec.routing.lr_option]),
        "adamw_lr": ctx.hparams["lr"],
        "momentum": float(opts["momentum"]),
        **own,
        "matmul_dtype": opts["matmul_dtype"],
        "betas": tuple(ctx.hparams["betas"]),
        "eps": ctx.hparams["eps"],
        "weight_decay": ctx.kwargs["weight_decay"],
    }


def muon(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """``MuonWithAdamW`` over routed groups: Muon at ``muon_lr`` on hidden matrices, AdamW at the trainer's lr."""
    opts = ctx.options
    return ctx.target(), _hybrid_kwargs(
        ctx, nesterov=bool(opts["nesterov"]), ns_steps=int(opts["ns_steps"]), adjust_lr_fn=opts["adjust_lr_fn"]
    )


def dion(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """The registry's ``Dion`` over routed groups: Dion at ``dion_lr`` on hidden matrices, AdamW elsewhere.

    Microsoft's ``dion`` package is not on PyPI and, when installed from GitHub, takes different
    groups (``algorithm=``), keys its state differently and compiles its updates, so the name always
    means the registry's implementation: a checkpoint never changes meaning with the environment.
    """
    opts = ctx.options
    return ctx.target(), _hybrid_kwargs(
        ctx, rank=opts["rank"], rank_fraction=float(opts["rank_fraction"]), seed=int(opts["seed"])
    )
