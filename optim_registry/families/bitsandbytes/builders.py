"""Builders and the post-construction hooks of the bitsandbytes records (the library is imported only inside
functions).

The records point at bitsandbytes' own classes (``bitsandbytes.optim.AdamW``, ``AdEMAMix``, ``Lion``,
``RMSprop``), exactly what transformers returns for these names. The 8-bit names keep ``nn.Embedding`` state in
32 bits as transformers does (`keep_embeddings_32bit`, their ``adapt_model``, run once by ``build.finalize``). One
thing is fixed after construction (`adopt`, run by ``build.finalize`` and for each layer-wise inner optimizer):
where those config overrides are looked up. bitsandbytes keeps them in a process-global
manager keyed by ``(group index, parameter index)``, so an override found for one optimizer applies to
whatever parameter sits at that position in every later optimizer of the process: with a layer-wise
optimizer (one inner optimizer per parameter, all at ``(0, 0)``) every parameter ended up with 32-bit
state once the embedding had stepped, and a second 8-bit run in the same process inherited the first
run's override. The global list of overrides also kept every trained model's embedding alive. A step
pre-hook gives the optimizer, just before bitsandbytes reads the overrides at its first step, a manager
of its own holding only the overrides for its own parameters, and takes those entries off the global
list. No subclass is needed: bitsandbytes reads ``self.mng`` at that moment, and torch runs step
pre-hooks before the step body.
"""

from __future__ import annotations

import warnings
from typing import Any

from ...context import BuildContext

_ADOPTED = "_optim_registry_own_overrides"


def take_own_overrides(optimizer: Any) -> None:
    """Point ``optimizer.mng`` at a manager with only the overrides for its own parameters.

    The entries found are removed from bitsandbytes' global list: it would otherwise hold this model's
    modules (and apply them by position to other optimizers) for the life of the process.
    """
    from bitsandbytes.optim import GlobalOptimManager

    shared = GlobalOptimManager.get_instance()
    own = GlobalOptimManager.__new__(GlobalOptimManager)
    own.initialize()
    mine = {id(p) for group in optimizer.param_groups for p in group["params"]}
    kept = []
    for triple in shared.module_weight_config_triple:
        module, attr, _config = triple
        if id(getattr(module, attr, None)) in mine:
            own.module_weight_config_triple.append(triple)
        else:
            kept.append(triple)
    shared.module_weight_config_triple[:] = kept
    # Overrides set with bitsandbytes' own override_config() for our parameters still apply.
    own.pid2config = {pid: dict(cfg) for pid, cfg in shared.pid2config.items() if pid in mine}
    optimizer.mng = own


def _before_first_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    if not getattr(optimizer, "initialized", True):  # bitsandbytes calls check_overrides() in this step
        take_own_overrides(optimizer)


def adopt(optimizer: Any) -> None:
    """Install the per-optimizer override lookup on a bitsandbytes optimizer (idempotent)."""
    if getattr(optimizer, _ADOPTED, None) is None:
        setattr(optimizer, _ADOPTED, optimizer.register_step_pre_hook(_before_first_step))


def keep_embeddings_32bit(optimizer: Any, model: Any) -> int:
    """Tell bitsandbytes to keep ``nn.Embedding`` state in 32 bits (the 8-bit records' ``adapt_model``); returns the
    parameters covered.

    Once per module: transformers' ``Trainer.create_optimizer`` registers the same override itself for any
    class whose name contains "bitsandbytes" built with ``optim_bits=8``, and bitsandbytes' list only grows.
    Registered process-wide, keyed by module: each optimizer takes its own entries off that list before its first
    step (``adopt``), as the FSDP2 and ZeRO engines do for the copies and views they step.
    """
    import bitsandbytes
    from torch import nn

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    registered = {
        id(module)
        for module, param, config in manager.module_weight_config_triple
        if param == "weight" and config == {"optim_bits": 32}
    }
    covered = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            if id(module) not in registered:
                manager.register_module_override(module, "weight", {"optim_bits": 32})
            covered += module.weight.numel()
    return covered


class OwnOverrides:
    """Mixin for our own ``Optimizer8bit`` subclasses (GaLore 8-bit) that call ``check_overrides`` themselves."""

    def check_overrides(self) -> None:
        take_own_overrides(self)
        super().check_overrides()  # type: ignore[misc]


def ademamix(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """AdEMAMix takes three betas: (beta1, beta2) from the arguments / ``betas``, beta3 as an option."""
    given = ctx.given
    # Two or three numbers (the record's num_betas); betas together with beta1/2/3 is refused by its checks.
    betas = tuple(ctx.hparams["betas"])
    b1 = given.get("beta1", betas[0])
    b2 = given.get("beta2", betas[1])
    b3 = betas[2] if len(betas) == 3 else ctx.options["beta3"]
    kwargs = {k: v for k, v in ctx.kwargs.items() if k not in ("beta1", "beta2", "beta3")}
    kwargs["betas"] = (b1, b2, b3)
    if kwargs.get("is_paged") and ctx.on_cpu:
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
