"""torch-optimi (``import optimi``): low-precision-friendly optimizers with Kahan summation.

Every class takes ``lr`` (required), stores ``beta1`` / ``beta2`` in its groups and picks Triton
kernels by itself; the builder (``builders.py``) passes the TrainingArguments betas as the
``betas`` tuple each constructor takes and turns Triton off for CPU parameters.
"""

from __future__ import annotations

from ...spec import AT_LEAST_ONE, POSITIVE, UNIT, OptimizerSpec, Requirement, opt

#: The family page's title and first paragraph (docs/optimizers/optimi.md, `optim-registry show`).
TITLE = "torch-optimi"
ABOUT = (
    "Optimizers from torch-optimi with Kahan summation and fully decoupled weight decay; run on CPU "
    "with `triton=False`, which the registry sets for CPU parameters."
)

_REQ = (Requirement("torch-optimi", "optimi", "0.3.0", extra="optimi"),)
_BUILDER = "optim_registry.families.optimi.builders:build"
_ADAM_HP = frozenset({"lr", "betas", "eps", "weight_decay"})

_KAHAN = opt(
    "kahan_sum", "bool", None,
    "Kahan-compensated parameter updates; none turns them on for bf16/fp16 weights only",
)
_DECOUPLE_LR = opt(
    "decouple_lr", "bool", False,
    "fully decoupled weight decay: decay by weight_decay * lr / max_lr each step instead of lr * "
    "weight_decay (use a much smaller weight_decay, e.g. 1e-5)",
)
_MAX_LR = opt(
    "max_lr", "float", None,
    "peak scheduled learning rate used by decouple_lr (default: the initial learning rate)",
    role="rate", **POSITIVE,
)
_TRITON = opt(
    "triton", "bool", None,
    "optimi's Triton kernels; none = the registry turns them off for CPU parameters and lets optimi "
    "choose on GPUs; true with CPU parameters is refused",
)
_DECOUPLE_WD = opt(
    "decouple_wd", "bool", False, "AdamW-style decoupled weight decay instead of L2 added to the gradient"
)
_COMMON = (_DECOUPLE_LR, _KAHAN, _MAX_LR, _TRITON)

#: optimi keeps its step counter as a tensor in each param group, updated in place; the layer-wise engine
#: keeps such tensors apart for each per-parameter optimizer after a load (only the lr is shared), so the
#: ``_layerwise`` twins resume exactly.
_LAYERWISE_TWINS = True

_CPU_NOTE = (
    " On CPU the registry passes triton=false (optimi can otherwise pick its Triton kernels and fail "
    "with '0 active drivers')."
)

RECORDS = (
    OptimizerSpec(
        name="optimi_adam",
        target="optimi:Adam",
        family="optimi",
        description="torch-optimi Adam: L2 weight decay unless decouple_wd=true; Kahan summation for "
        "bf16/fp16 weights; betas/eps from TrainingArguments." + _CPU_NOTE,
        requires=_REQ,
        hparams=_ADAM_HP,
        weight_decay_kwarg=True,
        options=(_DECOUPLE_WD, *_COMMON),
        builder=_BUILDER,
        supports_layerwise=_LAYERWISE_TWINS,
        state_bytes=8.0,
        paper="arXiv:1412.6980",
    ),
    OptimizerSpec(
        name="optimi_adamw",
        target="optimi:AdamW",
        family="optimi",
        description="torch-optimi AdamW: decoupled weight decay (or fully lr-decoupled with "
        "decouple_lr=true); Kahan summation for bf16/fp16 weights; betas/eps from TrainingArguments."
        + _CPU_NOTE,
        requires=_REQ,
        hparams=_ADAM_HP,
        weight_decay_kwarg=True,
        options=_COMMON,
        builder=_BUILDER,
        supports_layerwise=_LAYERWISE_TWINS,
        state_bytes=8.0,
        paper="arXiv:1711.05101",
    ),
    OptimizerSpec(
        name="optimi_adan",
        target="optimi:Adan",
        family="optimi",
        description="torch-optimi Adan: adaptive Nesterov momentum with three betas (its own "
        "optim_args key `betas`, default (0.98,0.92,0.99); TrainingArguments' two Adam betas do not "
        "apply). Four state tensors per parameter." + _CPU_NOTE,
        requires=_REQ,
        hparams=frozenset({"lr", "eps", "weight_decay"}),
        weight_decay_kwarg=True,
        options=(
            opt("betas", "floats", (0.98, 0.92, 0.99), "(beta1, beta2, beta3): gradient, gradient "
                "difference and squared-term averaging", length=3, **UNIT),
            opt("adam_wd", "bool", False, "AdamW-style weight decay instead of Adan's proximal decay"),
            _DECOUPLE_LR,
            opt("kahan_sum", "bool", False, "Kahan-compensated parameter updates (bf16/fp16 weights)"),
            _MAX_LR,
            _TRITON,
        ),
        builder=_BUILDER,
        supports_layerwise=_LAYERWISE_TWINS,
        state_bytes=16.0,
        paper="arXiv:2208.06677",
    ),
    OptimizerSpec(
        name="optimi_lion",
        demo_lr=4e-3,
        target="optimi:Lion",
        family="optimi",
        description="torch-optimi Lion: sign of interpolated momentum, one state tensor; betas from "
        "TrainingArguments as for transformers' lion names (the paper uses (0.9,0.99)); use a 3-10x "
        "smaller learning rate than AdamW." + _CPU_NOTE,
        requires=_REQ,
        hparams=frozenset({"lr", "betas", "weight_decay"}),
        weight_decay_kwarg=True,
        options=_COMMON,
        builder=_BUILDER,
        supports_layerwise=_LAYERWISE_TWINS,
        state_bytes=4.0,
        paper="arXiv:2302.06675",
    ),
    OptimizerSpec(
        name="optimi_radam",
        target="optimi:RAdam",
        family="optimi",
        description="torch-optimi RAdam: rectified adaptive learning rate, no warm-up needed; L2 "
        "weight decay unless decouple_wd=true." + _CPU_NOTE,
        requires=_REQ,
        hparams=_ADAM_HP,
        weight_decay_kwarg=True,
        options=(_DECOUPLE_WD, *_COMMON),
        builder=_BUILDER,
        supports_layerwise=_LAYERWISE_TWINS,
        state_bytes=8.0,
        paper="arXiv:1908.03265",
    ),
    OptimizerSpec(
        name="optimi_ranger",
        target="optimi:Ranger",
        family="optimi",
        description="torch-optimi Ranger: RAdam plus Lookahead (slow weights synced every k steps); "
        "decoupled weight decay by default." + _CPU_NOTE,
        requires=_REQ,
        hparams=_ADAM_HP,
        weight_decay_kwarg=True,
        options=(
            opt("k", "int", 6, "Lookahead synchronisation period", **AT_LEAST_ONE),
            opt("alpha", "float", 0.5, "Lookahead slow-weight step", low=0.0, high=1.0, low_open=True),
            opt("decouple_wd", "bool", True, "decoupled weight decay (false: L2 added to the gradient)"),
            *_COMMON,
        ),
        builder=_BUILDER,
        supports_layerwise=_LAYERWISE_TWINS,
        state_bytes=12.0,
        paper="arXiv:1908.03265, arXiv:1907.08610",
    ),
    OptimizerSpec(
        name="optimi_sgd",
        demo_lr=0.5,
        target="optimi:SGD",
        family="optimi",
        description="torch-optimi SGD with optional momentum, dampening and decoupled weight decay; "
        "Kahan summation for bf16/fp16 weights." + _CPU_NOTE,
        requires=_REQ,
        hparams=frozenset({"lr", "weight_decay"}),
        weight_decay_kwarg=True,
        options=(
            opt("momentum", "float", 0.0, "momentum factor", **UNIT),
            opt("dampening", "bool", False, "dampen the momentum update by (1 - momentum)"),
            _DECOUPLE_WD,
            opt("torch_init", "bool", False, "initialise the momentum buffer with the first gradient, as "
                "torch.optim.SGD does"),
            *_COMMON,
        ),
        builder=_BUILDER,
        supports_layerwise=_LAYERWISE_TWINS,
        state_bytes=0.0,
    ),
    OptimizerSpec(
        name="stable_adamw",
        target="optimi:StableAdamW",
        family="optimi",
        description="StableAdamW (torch-optimi): AdamW with Adafactor-style update clipping, the "
        "transformers name. Differences from transformers 5.23: decouple_lr / kahan_sum are real "
        "booleans (transformers reads `false` as true), unknown keys are refused, and CPU parameters "
        "get triton=false (transformers' build crashes on CPU)." + _CPU_NOTE,
        requires=_REQ,
        hparams=_ADAM_HP,
        weight_decay_kwarg=True,
        options=_COMMON,
        builder=_BUILDER,
        supports_layerwise=_LAYERWISE_TWINS,
        state_bytes=8.0,
        paper="arXiv:2304.13013",
    ),
)
