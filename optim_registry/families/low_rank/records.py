"""Low-rank gradient projection: GaLore (AdamW, 8-bit AdamW, Adafactor), APOLLO, APOLLO-Mini and Q-GaLore.

Each projects the gradients of the ``optim_target_modules`` Linear weights into a low-rank space and keeps its
optimizer state there; every other parameter gets the plain update. The classes are the checkpointable
subclasses in ``optim_registry.families.low_rank.optimizers`` (exact resume through ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ...spec import AT_LEAST_ONE, NONNEG, POSITIVE, UNIT, Distributed, OptimizerSpec, Requirement, Run, opt

#: The family page's title and first paragraph (docs/optimizers/low_rank.md, `optim-registry show`).
TITLE = "Low-rank projection: GaLore and APOLLO"
ABOUT = (
    "Gradients of the `optim_target_modules` Linear weights are projected to a low rank, so the "
    "optimizer state of those weights is small. They need `optim_target_modules` "
    "([target_modules.md](../target_modules.md))."
)


# Cross-field checks (the records' ``checks``): every value in, None or what is wrong and how to fix it out.
def channel_scale_needs_std(values: Mapping[str, Any]) -> str | None:
    """APOLLO's channel-wise scaling scales rows or columns of the std-side projection only."""
    if values.get("scale_type") == "channel" and values.get("proj_type") != "std":
        return (
            "scale_type=channel scales each row or column of the gradient and needs proj_type=std "
            f"(got proj_type={values.get('proj_type')}); use scale_type=tensor for other projection sides"
        )
    return None


def _group_size(values: Mapping[str, Any]) -> str | None:
    size = values.get("proj_group_size")
    if values.get("proj_quant") and size is not None and (size == 0 or size < -1):
        return (f"proj_group_size={size} must be positive, or -1 for one quantization group per row of the "
                "projection")
    return None


_ALL_HP = frozenset({"lr", "betas", "eps", "weight_decay"})
_GALORE = (Requirement("galore-torch", "galore_torch", "1.0", "galore"),)
_APOLLO = (Requirement("apollo-torch", "apollo_torch", "1.0", "apollo"),)
_BNB = Requirement("bitsandbytes", "bitsandbytes", "0.45", "bnb")
_Q_GALORE = (Requirement("q-galore-torch", "q_galore_torch", "1.0", "qgalore"), _BNB)

#: What ``optim-registry compare`` trains the tiny model with (these defaults are sized for hidden sizes in the
#: thousands: rank 128 on a 64-wide model would project nothing away).
_TINY = {"rank": 16, "update_proj_gap": 50}

_GAP = opt("update_proj_gap", "int", 200, "optimizer steps between refreshes of the projection", send=True,
           **AT_LEAST_ONE)
_PROJ_SIDES = ("std", "reverse_std", "right", "left")

_GALORE_TARGET = (
    opt("rank", "int", 128, "rank of the gradient projection", send=True, role="rank", **AT_LEAST_ONE),
    _GAP,
    opt("scale", "float", 0.25, "factor on the update projected back to the weight's shape", send=True,
        **POSITIVE),
    opt("proj_type", "str", "std", "which side is projected: std (the smaller one), reverse_std, right, left, "
        "full (both)", choices=(*_PROJ_SIDES, "full"), send=True),
)
_GALORE_KEYS = frozenset(o.name for o in _GALORE_TARGET)
_CORRECT_BIAS = opt("correct_bias", "bool", True, "Adam bias correction")
_MIN_8BIT = opt("min_8bit_size", "int", 4096, "tensors (projected) with fewer elements keep 32-bit state",
                **NONNEG)

#: The projections need each weight's 2-D shape; sharded (flattened) parameters break that.
_LOW_RANK_DISTRIBUTED = Distributed(
    fsdp="projects each weight's 2-D gradient; FSDP1 shards (flattens) the weights (use FSDP2: fsdp_version=2)",
    zero1="projects each weight's 2-D gradient; ZeRO hands the optimizer flattened partitions (use FSDP2)",
    zero2="projects each weight's 2-D gradient; ZeRO hands the optimizer flattened partitions (use FSDP2)",
    zero3="projects each weight's 2-D gradient; ZeRO-3 shards the parameters (use FSDP2)",
)
#: Run under FSDP2 here with a rank and a refresh gap the tiny test model exercises.
_RUN_UNDER_FSDP2 = replace(_LOW_RANK_DISTRIBUTED, fsdp2_run=Run("rank=4,update_proj_gap=2"))
#: The 8-bit classes are bitsandbytes optimizers: ``nn.Embedding`` state in 32 bits, as its own 8-bit names keep it.
_EMBEDDINGS_32BIT = "optim_registry.families.low_rank.optimizers:keep_embeddings_32bit"
_RESUME = ("projector objects saved as tensors and plain values (matrix, rank, gap, scale, type, random seed) and "
           "rebuilt on load; loads with weights_only=True; exact, also across a projection refresh")

_APOLLO_RECORD = OptimizerSpec(
    name="apollo_adamw",
    target="optim_registry.families.low_rank.optimizers:SafeAPOLLOAdamW",
    family="low_rank",
    description="APOLLO (apollo_torch): AdamW moments of a random (or SVD) low-rank projection of each target "
    "weight's gradient, used only to scale the full gradient channel- or tensor-wise; near-SGD memory. "
    "betas/eps/weight_decay come from TrainingArguments (transformers drops weight decay).",
    requires=_APOLLO,
    hparams=_ALL_HP,
    options=(
        opt("rank", "int", 256, "rank of the gradient projection", send=True, role="rank", **AT_LEAST_ONE),
        _GAP,
        opt("scale", "float", 1.0, "gradient scale factor (its square root multiplies the update)", send=True,
            **POSITIVE),
        opt("proj_type", "str", "std", "which side is projected: std (the smaller one), reverse_std, right, left; "
            "scale_type=channel needs std", choices=_PROJ_SIDES, send=True),
        opt("proj", "str", "random", "projection: random (seeded Gaussian) or svd", choices=("random", "svd"),
            send=True),
        opt("scale_type", "str", "channel", "gradient scaling per channel or per tensor",
            choices=("channel", "tensor"), send=True),
        opt("scale_front", "bool", False, "apply the scale before the norm-growth limiter"),
        opt("disable_nl", "bool", False, "turn off the norm-growth limiter"),
        _CORRECT_BIAS,
    ),
    checks=(channel_scale_needs_std,),
    target_modules=True,
    target_options=frozenset({"rank", "update_proj_gap", "scale", "proj_type", "proj", "scale_type"}),
    paper="arXiv:2412.05270",
    distributed=_RUN_UNDER_FSDP2,
    resume=_RESUME,
    demo_options=_TINY,
)

RECORDS = (
    _APOLLO_RECORD,
    _APOLLO_RECORD.variant(
        name="apollo_mini",
        demo_options={"update_proj_gap": 50},  # rank 1 already
        distributed=replace(_LOW_RANK_DISTRIBUTED, fsdp2_run=Run("update_proj_gap=2")),
        description="APOLLO-Mini (apollo_torch): APOLLO with a rank-1 random projection and one scaling factor "
        "per tensor (scale 128), for SGD-like memory. Same options as apollo_adamw, other defaults.",
        options=tuple(
            {
                "rank": opt("rank", "int", 1, "rank of the gradient projection", send=True, role="rank", **AT_LEAST_ONE),
                "scale": opt("scale", "float", 128.0, "gradient scale factor (its square root multiplies the "
                             "update)", send=True, **POSITIVE),
                "scale_type": opt("scale_type", "str", "tensor", "gradient scaling per channel or per tensor",
                                  choices=("channel", "tensor"), send=True),
            }.get(o.name, o)
            for o in _APOLLO_RECORD.options
        ),
    ),
    OptimizerSpec(
        name="galore_adafactor",
        demo_options=_TINY,
        demo_lr=5e-3,
        target="optim_registry.families.low_rank.optimizers:SafeGaLoreAdafactor",
        family="low_rank",
        description="GaLore Adafactor (galore_torch): Adafactor on the low-rank projection of each target weight's "
        "gradient, with a manual learning rate (relative_step and scale_parameter off, also layer-wise).",
        requires=_GALORE,
        hparams=frozenset({"lr", "weight_decay"}),
        options=(
            *_GALORE_TARGET,
            opt("clip_threshold", "float", 1.0, "threshold of the root-mean-square of the final update",
                **POSITIVE),
            opt("decay_rate", "float", -0.8, "coefficient for the running average of squared gradients"),
            opt("beta1", "float", None, "first-moment coefficient; none keeps no first moment", nullable=True,
                **UNIT),
            opt("eps", "floats", (1e-30, 1e-3), "regularisation constants for square gradient and scale",
                length=2, **NONNEG),
        ),
        # The library defaults (relative_step=True) refuse a manual lr; transformers forgot this layer-wise.
        fixed={"scale_parameter": False, "relative_step": False},
        target_modules=True,
        target_options=_GALORE_KEYS,
        paper="arXiv:2403.03507",
        distributed=_RUN_UNDER_FSDP2,
        resume=_RESUME + "; fp32 moments of bf16 weights stay fp32",
    ),
    OptimizerSpec(
        name="galore_adamw",
        demo_options=_TINY,
        target="optim_registry.families.low_rank.optimizers:SafeGaLoreAdamW",
        family="low_rank",
        description="GaLore AdamW (galore_torch): AdamW moments kept for the SVD low-rank projection of each target "
        "weight's gradient, refreshed every update_proj_gap steps. betas/eps/weight_decay come from "
        "TrainingArguments (transformers drops them).",
        requires=_GALORE,
        hparams=_ALL_HP,
        options=(*_GALORE_TARGET, _CORRECT_BIAS),
        target_modules=True,
        target_options=_GALORE_KEYS,
        paper="arXiv:2403.03507",
        distributed=_RUN_UNDER_FSDP2,
        resume=_RESUME,
    ),
    OptimizerSpec(
        name="galore_adamw_8bit",
        demo_options=_TINY,
        target="optim_registry.families.low_rank.optimizers:SafeGaLoreAdamW8bit",
        family="low_rank",
        description="GaLore 8-bit AdamW (galore_torch over bitsandbytes): GaLore's projection with bitsandbytes' "
        "block-wise 8-bit Adam state; embeddings keep 32-bit state. Runs on CPU and GPU.",
        requires=(*_GALORE, _BNB),
        hparams=_ALL_HP,
        options=(*_GALORE_TARGET, _MIN_8BIT),
        target_modules=True,
        target_options=_GALORE_KEYS,
        embedding_32bit=True,
        adapt_model=_EMBEDDINGS_32BIT,
        paper="arXiv:2403.03507",
        distributed=_LOW_RANK_DISTRIBUTED,
        resume=_RESUME + "; 8-bit state and quantisation maps as bitsandbytes saves them",
    ),
    OptimizerSpec(
        name="q_galore_adamw8bit",
        demo_options=_TINY,
        target="optim_registry.families.low_rank.optimizers:SafeQGaLoreAdamW8bit",
        family="low_rank",
        description="Q-GaLore (q_galore_torch over bitsandbytes): GaLore 8-bit AdamW with INT-n quantised "
        "projection matrices and a refresh gap that grows while the subspace stays stable. Needs bf16 weights; "
        "not with LoRA adapters or 4/8-bit loaded models.",
        requires=_Q_GALORE,
        hparams=_ALL_HP,
        options=(
            opt("rank", "int", 256, "rank of the gradient projection", send=True, role="rank", **AT_LEAST_ONE),
            _GAP,
            opt("scale", "float", 0.25, "factor on the update projected back to the weight's shape", send=True,
                **POSITIVE),
            opt("proj_type", "str", "std", "projection side; Q-GaLore implements std only", choices=("std",),
                send=True),
            opt("proj_quant", "bool", True, "quantise the projection matrices", send=True),
            opt("proj_bits", "int", 4, "bits per projection-matrix entry", choices=tuple(range(1, 9)), send=True),
            opt("proj_group_size", "int", 256, "quantisation group size; must divide the last dimension of every "
                "projection matrix (-1: one group per row)", send=True),
            opt("cos_threshold", "float", 0.4, "mean cosine similarity of successive projections above which the "
                "refresh gap grows", send=True, low=-1.0, high=1.0),
            opt("gamma_proj", "int", 2, "factor the refresh gap grows by", send=True, **AT_LEAST_ONE),
            opt("queue_size", "int", 5, "successive projections compared", send=True, **AT_LEAST_ONE),
            _MIN_8BIT,
        ),
        checks=(_group_size,),
        builder="optim_registry.families.low_rank.optimizers:q_galore",
        target_modules=True,
        target_options=frozenset({
            "rank", "update_proj_gap", "scale", "proj_type", "proj_quant", "proj_bits", "proj_group_size",
            "cos_threshold", "gamma_proj", "queue_size",
        }),
        embedding_32bit=True,
        adapt_model=_EMBEDDINGS_32BIT,
        paper="arXiv:2407.08296",
        distributed=_LOW_RANK_DISTRIBUTED,
        resume=_RESUME + "; also the adaptive gap and the cosine queue",
    ),
)

