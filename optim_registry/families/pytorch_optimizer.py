"""Builders for the ``po_*`` names the generic path cannot build: Muon routing, Adam-mini, Ranger21, A2Grad."""

from __future__ import annotations

from typing import Any

from ..build import BuildContext


def _decay_groups(ctx: BuildContext) -> list[dict[str, Any]]:
    from ..build import current_decay_names
    from ..param_groups import build_groups

    return build_groups(ctx.require_model(), weight_decay=ctx.hparams["weight_decay"], decay_names=current_decay_names())


def muon(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """Muon-family classes want groups flagged ``use_muon``: hidden 2-D weights orthogonalised, the rest AdamW.

    Routing follows the registry's Muon rule (2-D, not an embedding or the output head). The AdamW groups
    take the class's ``adamw_lr`` / ``adamw_wd`` (their library defaults unless given in optim_args); the
    weight-decay split of the Trainer still applies (no decay for biases and norms).
    """
    from ..optimizers.muon import split_muon_params

    model = ctx.require_model()
    hidden = {id(p) for _, p in split_muon_params(model)[0]}
    groups = []
    for group in _decay_groups(ctx):
        decayed = group["weight_decay"] > 0
        for use_muon in (True, False):
            params = [p for p in group["params"] if (id(p) in hidden) == use_muon]
            if not params:
                continue
            new: dict[str, Any] = {"params": params, "use_muon": use_muon}
            if use_muon:
                new["weight_decay"] = group["weight_decay"]
            elif not decayed:
                new["weight_decay"] = 0.0  # else the class fills in adamw_wd
            groups.append(new)
    kwargs = {k: v for k, v in ctx.kwargs.items() if k != "weight_decay"}
    return ctx.target(), {**kwargs, "params": groups}


def adam_mini(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """Adam-mini is built with the model; its block layout (width, heads, kv groups) comes from ``model.config``."""
    model = ctx.require_model()
    config = getattr(model, "config", None)
    kwargs = dict(ctx.kwargs)
    kwargs["weight_decay"] = ctx.hparams["weight_decay"]
    for key, attr in (("num_embeds", "hidden_size"), ("num_heads", "num_attention_heads"),
                      ("num_query_groups", "num_key_value_heads")):
        value = getattr(config, attr, None)
        if key not in ctx.given and value is not None:
            kwargs[key] = int(value)
    return ctx.target(), {**kwargs, "model": model}


def ranger21(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """Ranger21 schedules warm-up and warm-down itself over ``num_iterations``: the run's optimizer steps."""
    kwargs = dict(ctx.kwargs)
    if kwargs.get("num_iterations") is None:
        steps = ctx.num_training_steps
        if steps is None:
            raise ValueError(
                f"optim={ctx.spec.name!r} needs the run's length: set max_steps in TrainingArguments, train through "
                "the Trainer (it knows the steps), or pass optim_args='num_iterations=N'"
            )
        kwargs["num_iterations"] = int(steps)
    return ctx.target(), ctx.with_groups(kwargs)


def lr_in_groups(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """A2Grad sets its own step sizes and keeps no ``lr``; the Trainer's scheduler and logs read one per group."""
    kwargs = dict(ctx.kwargs)
    if ctx.groups is not None:
        kwargs["params"] = [{**group, "lr": kwargs["lr"]} for group in ctx.groups]
    return ctx.target(), kwargs
