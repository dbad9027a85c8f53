"""Builders for CAME (three betas, two epsilons, lr required) and the matrix optimizers Muon and Dion."""

from __future__ import annotations

from typing import Any

from ..build import BuildContext


def option(ctx: BuildContext, name: str) -> Any:
    """The typed value of a record option: what optim_args gave, else the record's default."""
    if name in ctx.options:
        return ctx.options[name]
    return ctx.spec.option_map[name].default


def two_betas(ctx: BuildContext) -> tuple[float, float]:
    betas = tuple(ctx.hparams["betas"])
    if len(betas) != 2:
        raise ValueError(
            f"optim_args key 'betas' for optim={ctx.spec.name!r} takes two numbers (beta1, beta2), got {betas}"
        )
    return float(betas[0]), float(betas[1])


def came(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """``came_pytorch.CAME`` with ``betas=(beta1, beta2, beta3)``, ``eps=(eps1, eps2)`` and ``lr`` always passed."""
    lr = ctx.hparams["lr"]
    if not lr > 0:
        # CAME asserts lr > 0 (a bare AssertionError; None crashes): say so plainly instead.
        raise ValueError(f"optim={ctx.spec.name!r} needs a learning rate > 0, got lr={lr}")
    beta1, beta2 = two_betas(ctx)
    kwargs: dict[str, Any] = {
        "lr": lr,
        "betas": (beta1, beta2, float(option(ctx, "beta3"))),
        "eps": (float(option(ctx, "eps1")), float(option(ctx, "eps2"))),
        "clip_threshold": float(option(ctx, "clip_threshold")),
        "weight_decay": ctx.hparams["weight_decay"],
    }
    return ctx.target(), ctx.with_groups(kwargs)


def routed_groups(ctx: BuildContext) -> list[dict[str, Any]]:
    """The interpreter's groups, already routed (``flag`` set) and refined by any ``optim_groups`` rules."""
    ctx.require_model()
    return [dict(g) for g in ctx.groups or ()]


def muon(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """``MuonWithAdamW`` over routed groups: Muon at ``muon_lr`` on hidden matrices, AdamW at the trainer's lr."""
    muon_lr = float(option(ctx, "muon_lr"))
    kwargs: dict[str, Any] = {
        "params": routed_groups(ctx),
        "lr": muon_lr,
        "adamw_lr": ctx.hparams["lr"],
        "momentum": float(option(ctx, "momentum")),
        "nesterov": bool(option(ctx, "nesterov")),
        "ns_steps": int(option(ctx, "ns_steps")),
        "adjust_lr_fn": option(ctx, "adjust_lr_fn"),
        "betas": two_betas(ctx),
        "eps": ctx.hparams["eps"],
        "weight_decay": ctx.hparams["weight_decay"],
    }
    return ctx.target(), kwargs


def dion(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """The registry's ``Dion`` over routed groups: Dion at ``dion_lr`` on hidden matrices, AdamW elsewhere.

    Microsoft's ``dion`` package is not on PyPI and, when installed from GitHub, takes different
    groups (``algorithm=``), keys its state differently and compiles its updates, so the name always
    means the registry's implementation: a checkpoint never changes meaning with the environment.
    """
    dion_lr = float(option(ctx, "dion_lr"))
    kwargs: dict[str, Any] = {
        "params": routed_groups(ctx),
        "lr": dion_lr,
        "adamw_lr": ctx.hparams["lr"],
        "momentum": float(option(ctx, "momentum")),
        "rank": option(ctx, "rank"),
        "rank_fraction": float(option(ctx, "rank_fraction")),
        "seed": int(option(ctx, "seed")),
        "betas": two_betas(ctx),
        "eps": ctx.hparams["eps"],
        "weight_decay": ctx.hparams["weight_decay"],
    }
    return ctx.target(), kwargs
