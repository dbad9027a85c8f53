"""bitsandbytes optimizers: AdamW, AdEMAMix, Lion and RMSprop with 8-bit or 32-bit state, paged or not.

Every feature is record data (``fixed={"optim_bits": 8, "is_paged": True}``), never read out of the
name. bitsandbytes 0.50 runs all of them on CPU; paged names fall back to ordinary buffers there (the
library warns once). Parameters under ``min_8bit_size`` elements keep 32-bit state even in 8-bit mode,
and the 8-bit names keep ``nn.Embedding`` state in 32 bits (``embedding_32bit``), as transformers does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ...spec import AT_LEAST_ONE, NONNEG, UNIT, Distributed, OptimizerSpec, Requirement, Run, opt

#: The family page's title and first paragraph (docs/optimizers/bitsandbytes.md, `optim-registry show`).
TITLE = "bitsandbytes: 8-bit, paged and 32-bit optimizers"
ABOUT = (
    "Block-wise quantised optimizer state from bitsandbytes. 8-bit names keep `nn.Embedding` state in "
    "32 bits, as transformers does. All run on CPU with bitsandbytes 0.50; paged names fall back to "
    "non-paged memory there."
)


# Cross-field checks (the records' ``checks``): every value in, None or what is wrong and how to fix it out.
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


_REQUIRES = (Requirement("bitsandbytes", "bitsandbytes", "0.45.0", extra="bnb"),)
_FAMILY = "bitsandbytes"
_SHIMS = "optim_registry.families.bitsandbytes.builders"
#: transformers returns bitsandbytes' own classes for these names; so do we. The override fix is a hook.
_LIB = "bitsandbytes.optim"
_ADOPT = f"{_SHIMS}:adopt"
#: 8-bit names: ``nn.Embedding`` state in 32 bits, as transformers does (``embedding_32bit``).
_EMBEDDINGS_32BIT = f"{_SHIMS}:keep_embeddings_32bit"

_MIN_8BIT = opt(
    "min_8bit_size", "int", 4096, "parameters with fewer elements keep 32-bit state (bitsandbytes' threshold)",
    **NONNEG,
)
_ADEMAMIX_OPTIONS = (
    opt("beta1", "float", None, "fast EMA coefficient (default: TrainingArguments.adam_beta1)", **UNIT),
    opt("beta2", "float", None, "second-moment coefficient (default: TrainingArguments.adam_beta2)", **UNIT),
    opt("beta3", "float", 0.9999, "slow EMA coefficient", send=True, **UNIT),
    opt("alpha", "float", 5.0, "weight of the slow EMA in the update", send=True, **NONNEG),
    opt("t_alpha", "int", None, "warm alpha up over this many steps (none: no warm-up)", **AT_LEAST_ONE),
    opt("t_beta3", "int", None, "warm beta3 up over this many steps (none: no warm-up)", **AT_LEAST_ONE),
)
_RMSPROP_OPTIONS = (
    opt("alpha", "float", 0.99, "smoothing constant of the squared-gradient average", low=0.0, high=1.0,
        low_open=True, high_open=True),
    opt("eps", "float", 1e-8, "added to the denominator", **NONNEG),
    opt("momentum", "float", 0.0, "momentum factor; bitsandbytes' kernels have none, so only 0 is accepted",
        **UNIT),
    opt("centered", "bool", False, "centred RMSprop; bitsandbytes has none, so only false is accepted"),
)


#: 8-bit state is quantised in blocks of each tensor: under ZeRO it is stepped on per-tensor views of the flat
#: partitions, each with its whole tensor's 8-/32-bit decision (``engines.zero.ZeroViews``).
_VIEWS = Distributed(zero_math="views")


def _state_note(bits: int, paged: bool) -> str:
    size = "8-bit block-wise quantised" if bits == 8 else "32-bit"
    return f"{size} state" + (", paged (moved to CPU memory under GPU memory pressure; ordinary buffers on CPU)" if paged else "")


def _distributed(bits: int, **runs: Run) -> Distributed:
    """8-bit state on per-tensor views under ZeRO; ``runs`` the evidence of the names run here."""
    return replace(_VIEWS if bits == 8 else Distributed(), **runs)


def _adamw(name: str, bits: int, paged: bool, alias_of: str = "", **runs: Run) -> OptimizerSpec:
    return OptimizerSpec(
        name=name,
        target=f"{_LIB}:AdamW",
        adapt=_ADOPT,
        family=_FAMILY,
        description=f"bitsandbytes AdamW with {_state_note(bits, paged)}."
        + (f" Alias of {alias_of}." if alias_of else ""),
        requires=_REQUIRES,
        hparams=frozenset({"lr", "betas", "eps", "weight_decay"}),
        options=(_MIN_8BIT,) if bits == 8 else (),
        distributed=_distributed(bits, **runs),
        fixed={"optim_bits": bits, "is_paged": paged},
        embedding_32bit=bits == 8,
        adapt_model=_EMBEDDINGS_32BIT if bits == 8 else None,
        state_bytes=2.03 if bits == 8 else 8.0,
        paper="arXiv:2110.02861" if bits == 8 else "arXiv:1711.05101",
    )


def _ademamix(name: str, bits: int, paged: bool) -> OptimizerSpec:
    # AdEMAMix(optim_bits=32), never the AdEMAMix32bit / PagedAdEMAMix32bit classes: those fail at the first
    # step with a shape error in bitsandbytes 0.50.
    return OptimizerSpec(
        name=name,
        target=f"{_LIB}:AdEMAMix",
        adapt=_ADOPT,
        family=_FAMILY,
        description=f"bitsandbytes AdEMAMix (Adam with a mixture of a fast and a slow EMA) with "
        f"{_state_note(bits, paged)}. betas=(beta1,beta2[,beta3]) or beta1/beta2/beta3 in optim_args.",
        requires=_REQUIRES,
        hparams=frozenset({"lr", "betas", "eps", "weight_decay"}),
        options=_ADEMAMIX_OPTIONS + ((_MIN_8BIT,) if bits == 8 else ()),
        distributed=_distributed(bits),
        fixed={"optim_bits": bits, "is_paged": paged},
        builder=f"{_SHIMS}:ademamix",
        # (beta1, beta2) and beta3 from its option, or all three in betas
        num_betas=(2, 3),
        checks=(ademamix_betas,),
        embedding_32bit=bits == 8,
        adapt_model=_EMBEDDINGS_32BIT if bits == 8 else None,
        state_bytes=3.05 if bits == 8 else 12.0,
        paper="arXiv:2409.03137",
    )


def _lion(name: str, bits: int, paged: bool, **runs: Run) -> OptimizerSpec:
    return OptimizerSpec(
        name=name,
        demo_lr=4e-3,
        target=f"{_LIB}:Lion",
        adapt=_ADOPT,
        family=_FAMILY,
        description=f"bitsandbytes Lion (sign of an interpolated momentum) with {_state_note(bits, paged)}. "
        "betas come from adam_beta1/adam_beta2; Lion usually wants a 3-10x smaller learning rate than AdamW.",
        requires=_REQUIRES,
        hparams=frozenset({"lr", "betas", "weight_decay"}),
        options=(_MIN_8BIT,) if bits == 8 else (),
        distributed=_distributed(bits, **runs),
        fixed={"optim_bits": bits, "is_paged": paged},
        embedding_32bit=bits == 8,
        adapt_model=_EMBEDDINGS_32BIT if bits == 8 else None,
        state_bytes=1.02 if bits == 8 else 4.0,
        paper="arXiv:2302.06675",
    )


def _rmsprop(name: str, bits: int) -> OptimizerSpec:
    return OptimizerSpec(
        name=name,
        target=f"{_LIB}:RMSprop",
        adapt=_ADOPT,
        family=_FAMILY,
        description=f"bitsandbytes RMSprop with {_state_note(bits, False)} (no momentum, not centred).",
        requires=_REQUIRES,
        hparams=frozenset({"lr", "weight_decay"}),
        options=_RMSPROP_OPTIONS + ((_MIN_8BIT,) if bits == 8 else ()),
        distributed=_distributed(bits),
        fixed={"optim_bits": bits},
        checks=(bnb_rmsprop,),
        embedding_32bit=bits == 8,
        adapt_model=_EMBEDDINGS_32BIT if bits == 8 else None,
        state_bytes=1.02 if bits == 8 else 4.0,
        paper="Hinton, Coursera lecture 6e",
    )


RECORDS = (
    _adamw(
        name="adamw_8bit", bits=8, paged=False, alias_of="adamw_bnb_8bit", fsdp2_run=Run(),
        zero_run=Run(measured=(0.0, 0.0, 4.9e-4), note=(
            "unclipped, 520-token vocabulary and 3 layers: ZeRO-3 splits the 8-bit LM head at element 4160, "
            "mid-block, and 4.9e-4 is in that block, which each rank quantises with its own part's maximum (elsewhere "
            "1.8e-6; 8-bit vs 32-bit state in one process 1.1e-3; the library on the flat partitions 1.8e-2); with "
            "max_grad_norm=1 ZeRO's clipping factor differs in its last bit, which 8-bit state turns into one "
            "quantisation step where a value sits on a code boundary (one element 2.1e-4 off under ZeRO-3)"
        )),
    ),
    _adamw(name="adamw_bnb_8bit", bits=8, paged=False),
    _ademamix(name="ademamix", bits=32, paged=False),
    _ademamix(name="ademamix_8bit", bits=8, paged=False),
    _lion(name="lion_32bit", bits=32, paged=False, fsdp2_run=Run(), zero_run=Run(measured=(0.0, 0.0, 0.0))),
    _lion(name="lion_8bit", bits=8, paged=False,
          zero_run=Run(measured=(0.0, 0.0, 0.0), note="512-token vocabulary, clipped as by default")),
    _adamw(name="paged_adamw_32bit", bits=32, paged=True),
    _adamw(name="paged_adamw_8bit", bits=8, paged=True),
    _ademamix(name="paged_ademamix_32bit", bits=32, paged=True),
    _ademamix(name="paged_ademamix_8bit", bits=8, paged=True),
    _lion(name="paged_lion_32bit", bits=32, paged=True),
    _lion(name="paged_lion_8bit", bits=8, paged=True),
    _rmsprop(name="rmsprop_bnb", bits=32),
    _rmsprop(name="rmsprop_bnb_32bit", bits=32),
    _rmsprop(name="rmsprop_bnb_8bit", bits=8),
)
