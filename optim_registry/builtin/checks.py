"""Cross-field checks of the built-in records: data-only functions of the values an optimizer is built with.

Each takes every value (option defaults, ``fixed``, what ``optim_args`` gave, lr / betas / eps /
weight_decay) and returns ``None`` or what is wrong and how to fix it; ``build.check_values`` runs them
when the arguments are created and prefixes the message with the optimizer's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def one_implementation(values: Mapping[str, Any]) -> str | None:
    """torch refuses ``foreach`` and ``fused`` together (a RuntimeError at construction)."""
    if values.get("foreach") and values.get("fused"):
        return (
            "foreach=true and fused=true cannot be used together (torch runs one implementation); keep one, "
            "or leave both unset and torch chooses"
        )
    return None


def nesterov_needs_momentum(values: Mapping[str, Any]) -> str | None:
    if values.get("nesterov") and (not values.get("momentum") or values.get("dampening")):
        return (
            f"nesterov=true needs momentum > 0 and dampening = 0 (got momentum={values.get('momentum')}, "
            f"dampening={values.get('dampening')}); set e.g. momentum=0.9, or drop nesterov"
        )
    return None


def warmup_needs_relative_step(values: Mapping[str, Any]) -> str | None:
    if values.get("warmup_init") and not values.get("relative_step"):
        return "warmup_init=true warms up the relative step size, so it needs relative_step=true as well"
    return None


def positive_lr(values: Mapping[str, Any]) -> str | None:
    """For optimizers that cannot take a zero rate (CAME asserts lr > 0)."""
    lr = values.get("lr")
    if lr is not None and not lr > 0:
        return f"needs a learning rate > 0 (got lr={lr}); set learning_rate (or optim_args lr) above 0"
    return None


def channel_scale_needs_std(values: Mapping[str, Any]) -> str | None:
    """APOLLO's channel-wise scaling scales rows or columns of the std-side projection only."""
    if values.get("scale_type") == "channel" and values.get("proj_type") != "std":
        return (
            "scale_type=channel scales each row or column of the gradient and needs proj_type=std "
            f"(got proj_type={values.get('proj_type')}); use scale_type=tensor for other projection sides"
        )
    return None


def ademamix_betas(values: Mapping[str, Any]) -> str | None:
    """AdEMAMix: ``betas`` and ``beta1/beta2/beta3`` are two ways to set the same numbers."""
    given = getattr(values, "given", frozenset())
    if "betas" not in given:
        return None
    betas = values.get("betas") or ()
    clash = [k for k in ("beta1", "beta2", "beta3") if k in given and (k != "beta3" or len(betas) == 3)]
    if clash:
        return (
            f"optim_args sets betas={tuple(betas)} and also {', '.join(clash)}: give either betas or "
            "beta1/beta2/beta3"
        )
    return None


def bnb_rmsprop(values: Mapping[str, Any]) -> str | None:
    """What bitsandbytes' RMSprop kernels silently ignore or reject."""
    if values.get("centered"):
        return (
            "bitsandbytes has no centred RMSprop (centered=true). Drop centered, or use optim='rmsprop' "
            "(torch.optim.RMSprop) for the centred variant."
        )
    if values.get("momentum", 0.0) != 0.0:
        return (
            f"bitsandbytes' RMSprop kernels ignore momentum (momentum={values['momentum']} would have no effect). "
            "Drop momentum, or use optim='rmsprop' (torch.optim.RMSprop) for momentum."
        )
    return None
