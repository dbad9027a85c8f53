"""Builders and shims for the bitsandbytes records (the library is imported only inside functions).

The records point at thin subclasses of bitsandbytes' own classes (``AdamW``, ``AdEMAMix``, ``Lion``,
``RMSprop``, reached through this module's ``__getattr__``). They change one thing: where config
overrides (the 32-bit state kept for ``nn.Embedding``) are looked up. bitsandbytes keeps them in a
process-global manager keyed by ``(group index, parameter index)``, so an override found for one
optimizer applies to whatever parameter sits at that position in every later optimizer of the process:
with a layer-wise optimizer (one inner optimizer per parameter, all at ``(0, 0)``) every parameter ended
up with 32-bit state once the embedding had stepped, and a second 8-bit run in the same process
inherited the first run's override. The global list of overrides also kept every trained model's
embedding alive. The subclasses resolve overrides against their own parameters only, in a manager of
their own, and take the entries they consumed off the global list.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

from ..build import BuildContext

_CLASSES = ("AdamW", "AdEMAMix", "Lion", "RMSprop")


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return _shim(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _OwnOverrides:
    """Mixin for ``bitsandbytes.optim.optimizer.Optimizer8bit`` subclasses: per-optimizer config overrides."""

    def check_overrides(self) -> None:
        from bitsandbytes.optim import GlobalOptimManager

        shared = GlobalOptimManager.get_instance()
        own = GlobalOptimManager.__new__(GlobalOptimManager)
        own.initialize()
        mine = {id(p) for group in self.param_groups for p in group["params"]}  # type: ignore[attr-defined]
        kept = []
        for triple in shared.module_weight_config_triple:
            module, attr, _config = triple
            if id(getattr(module, attr, None)) in mine:
                own.module_weight_config_triple.append(triple)
            else:
                kept.append(triple)
        # Consumed: the global list would otherwise hold this model's modules for the life of the process.
        shared.module_weight_config_triple[:] = kept
        # Overrides set with bitsandbytes' own override_config() for our parameters still apply.
        own.pid2config = {pid: dict(cfg) for pid, cfg in shared.pid2config.items() if pid in mine}
        self.mng = own
        super().check_overrides()  # type: ignore[misc]


@cache
def _shim(name: str) -> type:
    import bitsandbytes.optim

    base = getattr(bitsandbytes.optim, name)
    cls = type(
        name,
        (_OwnOverrides, base),
        {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"bitsandbytes.optim.{name} whose config overrides (32-bit embedding state) apply to "
            "its own parameters only.",
        },
    )
    return cls


def ademamix(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """AdEMAMix takes three betas: (beta1, beta2) from the arguments / ``betas``, beta3 as an option."""
    given = ctx.given
    betas = tuple(ctx.hparams["betas"])
    if "betas" in given:
        if len(betas) not in (2, 3):
            raise ValueError(
                f"optim_args betas for optim={ctx.spec.name!r} takes (beta1,beta2) or (beta1,beta2,beta3), "
                f"got {betas}"
            )
        clash = [k for k in ("beta1", "beta2", "beta3") if k in given and (k != "beta3" or len(betas) == 3)]
        if clash:
            raise ValueError(
                f"optim_args for optim={ctx.spec.name!r} sets betas={betas} and also {', '.join(clash)}: "
                "give either betas or beta1/beta2/beta3"
            )
    b1 = given.get("beta1", betas[0])
    b2 = given.get("beta2", betas[1])
    b3 = betas[2] if len(betas) == 3 else ctx.options["beta3"]
    kwargs = {k: v for k, v in ctx.kwargs.items() if k not in ("beta1", "beta2", "beta3")}
    kwargs["betas"] = (b1, b2, b3)
    if kwargs.get("is_paged") and _on_cpu(ctx):
        # bitsandbytes' other paged classes fall back to ordinary buffers on CPU with a warning; paged
        # AdEMAMix instead crashes at its first step on tensors large enough to page. Same optimizer,
        # ordinary buffers, said out loud.
        warnings.warn(
            f"optim={ctx.spec.name!r}: bitsandbytes cannot page optimizer state on CPU; using ordinary "
            "(non-paged) buffers for the same AdEMAMix optimizer",
            stacklevel=2,
        )
        kwargs["is_paged"] = False
    return ctx.target(), ctx.with_groups(kwargs)


def _on_cpu(ctx: BuildContext) -> bool:
    import torch

    if ctx.model is not None:
        return not any(p.is_cuda for p in ctx.model.parameters())
    return not torch.cuda.is_available()


def rmsprop(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """bitsandbytes RMSprop: refuse what its kernels silently ignore or reject."""
    opts = ctx.options
    name = ctx.spec.name
    if opts.get("centered"):
        raise ValueError(
            f"optim={name!r}: bitsandbytes has no centred RMSprop (centered=true). Drop centered, or use "
            "optim='rmsprop' (torch.optim.RMSprop) for the centred variant."
        )
    if opts.get("momentum", 0.0) != 0.0:
        raise ValueError(
            f"optim={name!r}: bitsandbytes' RMSprop kernels ignore momentum (momentum={opts['momentum']} would "
            "have no effect). Drop momentum, or use optim='rmsprop' (torch.optim.RMSprop) for momentum."
        )
    if opts.get("alpha", 0.99) <= 0.0:
        raise ValueError(
            f"optim={name!r}: alpha={opts['alpha']} is not supported by bitsandbytes RMSprop; use 0 < alpha < 1."
        )
    return ctx.target(), ctx.with_groups(dict(ctx.kwargs))
