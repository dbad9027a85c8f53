"""LOMO and AdaLomo (lomo_optim): the weights are updated inside backward, built with the model."""

from __future__ import annotations

from ...spec import NONNEG, POSITIVE, Distributed, OptimizerSpec, Requirement, opt

#: The family page's title and first paragraph (docs/optimizers/lomo.md, `optim-registry show`).
TITLE = "LOMO and AdaLomo: updates fused into backward"
ABOUT = (
    "The weights change inside backward, so gradients are never stored for the whole model. "
    "No gradient accumulation; built with the model."
)

_REQUIRES = (Requirement("lomo-optim", "lomo_optim", "0.1.1", "lomo"),)
_CLIP_VALUE = opt(
    "clip_grad_value", "float", None,
    "clamp every gradient element to [-v, v] before the update (none: no value clipping)", nullable=True,
    **POSITIVE,
)
_NO_DEEPSPEED = (
    "under DeepSpeed, accelerate runs DeepSpeed's backward and never calls fused_backward, so the weights "
    "would be updated by stale hooks without the scheduled lr"
)
_DISTRIBUTED = Distributed(
    ddp="the weights change inside backward, before DDP has averaged the gradients",
    fsdp="the weights change inside backward, before FSDP has reduced the gradients",
    zero1=_NO_DEEPSPEED,
    zero2=_NO_DEEPSPEED,
    zero3=_NO_DEEPSPEED,
)
_RESUME_NOTE = "no state beyond state_dict (LOMO keeps none); exact"

RECORDS = (
    OptimizerSpec(
        name="adalomo",
        target="optim_registry.families.lomo.optimizers:ClippedAdaLomo",
        family="lomo",
        description="AdaLomo (lomo_optim): LOMO with Adafactor-style factored second moments, updated "
        "inside backward. Runs on CPU and GPU; max_grad_norm clips for real (one extra backward).",
        requires=_REQUIRES,
        hparams=frozenset({"lr", "weight_decay"}),
        weight_decay_kwarg=True,
        options=(
            _CLIP_VALUE,
            opt("clip_threshold", "float", 1.0, "threshold of the root-mean-square of the final update",
                **POSITIVE),
            opt("decay_rate", "float", -0.8, "exponent of the running average of squared gradients"),
            opt("eps", "floats", (1e-30, 1e-3), "(eps1, eps2): added to squared gradients; floor of the "
                "parameter scale", length=2, **NONNEG),
            opt("loss_scale", "float", 1024.0, "the loss is multiplied by this before backward and the "
                "gradients divided by it (0 disables)", **NONNEG),
        ),
        builder="optim_registry.families.lomo.optimizers:lomo",
        needs_model=True,
        supports_layerwise=False,
        protocol="fused_backward",
        state_bytes=0.03,  # factored moments: 0.03 B/param at hidden 256, 0.008 at hidden 1024
        paper="arXiv:2310.10195",
        distributed=_DISTRIBUTED,
        resume="factored second moments and step count added to state_dict (the library keeps them "
        "outside it); restored in fp32; exact",
    ),
    OptimizerSpec(
        name="lomo",
        demo_lr=0.5,
        target="optim_registry.families.lomo.optimizers:ClippedLomo",
        family="lomo",
        description="LOMO (lomo_optim): plain SGD fused into backward, so no gradients or optimizer state "
        "are kept. max_grad_norm clips for real (one extra backward); no gradient accumulation.",
        requires=_REQUIRES,
        hparams=frozenset({"lr", "weight_decay"}),
        weight_decay_kwarg=True,
        options=(_CLIP_VALUE,),
        builder="optim_registry.families.lomo.optimizers:lomo",
        needs_model=True,
        supports_layerwise=False,
        protocol="fused_backward",
        state_bytes=0.0,
        paper="arXiv:2306.09782",
        distributed=_DISTRIBUTED,
        resume=_RESUME_NOTE,
    ),
)
