"""PyTorch's own optimizers and transformers' Adafactor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ...spec import NONNEG, POSITIVE, UNIT, Distributed, OptimizerSpec, Run, opt

#: The family page's title and first paragraph (docs/optimizers/torch.md, `optim-registry show`).
TITLE = "PyTorch and transformers built-ins"
ABOUT = "Optimizers that ship with torch (and transformers' Adafactor). Nothing to install."


# Cross-field checks (the records' ``checks``): every value in, None or what is wrong and how to fix it out.
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


_ADAM_HP = frozenset({"lr", "betas", "eps", "weight_decay"})
_COMMON = (
    opt("maximize", "bool", False, "maximise the objective instead of minimising it"),
    opt("foreach", "bool", None, "use the foreach (multi-tensor) implementation; None lets torch choose"),
)
_AMSGRAD = opt("amsgrad", "bool", False, "use the AMSGrad variant (max of past second moments)")
_FUSED = opt("fused", "bool", None, "use the fused kernel; None lets torch choose")
#: Factored second moments need each whole matrix: FSDP1 / ZeRO hand the optimizer flattened pieces.
_FACTORED = Distributed(
    fsdp="factors each weight's 2-D second moment; FSDP1 flattens the weights (use FSDP2: fsdp_version=2)",
    zero1="factors each weight's 2-D second moment; ZeRO hands the optimizer flattened partitions (use FSDP2)",
    zero2="factors each weight's 2-D second moment; ZeRO hands the optimizer flattened partitions (use FSDP2)",
    zero3="factors each weight's 2-D second moment; ZeRO-3 shards the parameters (use FSDP2)",
)
_DECOUPLED = opt("decoupled_weight_decay", "bool", False, "AdamW-style decoupled weight decay")

RECORDS = (
    OptimizerSpec(
        name="adafactor",
        demo_lr=5e-3,
        target="transformers.optimization:Adafactor",
        family="torch",
        description="transformers' Adafactor: factored second moments, sub-linear memory. With "
        "relative_step=true it computes its own step size and the Trainer uses AdafactorSchedule.",
        hparams=frozenset({"lr", "weight_decay"}),
        options=(
            opt("scale_parameter", "bool", False, "scale the step by the parameter's RMS", send=True),
            opt("relative_step", "bool", False, "time-dependent step size instead of the learning rate", send=True),
            opt("warmup_init", "bool", False, "warm the relative step up from 1e-6 (needs relative_step)"),
            opt("clip_threshold", "float", 1.0, "threshold of the root-mean-square of the final update", **POSITIVE),
            opt("decay_rate", "float", -0.8, "coefficient for the running average of squared gradients"),
            opt("beta1", "float", None, "first-moment coefficient; none keeps no first moment", **UNIT),
            opt("eps", "floats", (1e-30, 1e-3), "regularisation constants for square gradient and scale",
                length=2, **NONNEG),
        ),
        checks=(warmup_needs_relative_step,),
        builder="optim_registry.families.torch.builders:adafactor",
        state_bytes=0.03,
        distributed=replace(_FACTORED, fsdp2_run=Run()),
        paper="arXiv:1804.04235",
    ),
    OptimizerSpec(
        name="adafactor_torch",
        demo_lr=5e-3,
        target="torch.optim:Adafactor",
        family="torch",
        description="PyTorch's Adafactor (torch.optim.Adafactor): factored second moments.",
        hparams=frozenset({"lr", "weight_decay"}),
        options=(
            opt("beta2_decay", "float", -0.8, "decay rate of the second moment", high=0.0),
            opt("eps", "floats", None, "(eps1, eps2): eps1 (none: the dtype's eps) regularises the second moment, "
                "eps2 the relative step size, e.g. eps=(none,0.001)", length=2, item_nullable=True, **NONNEG),
            opt("d", "float", 1.0, "clipping threshold of the update", low=1.0),
            opt("maximize", "bool", False, "maximise the objective"),
            opt("foreach", "bool", None, "use the foreach implementation"),
        ),
        state_bytes=0.03,
        paper="arXiv:1804.04235",
        distributed=replace(_FACTORED, fsdp2_run=Run()),
    ),
    OptimizerSpec(
        name="adagrad",
        demo_lr=3e-2,
        target="torch.optim:Adagrad",
        family="torch",
        description="Adagrad: per-coordinate step sizes from the sum of squared gradients.",
        hparams=frozenset({"lr", "weight_decay"}),
        options=(
            opt("lr_decay", "float", 0.0, "learning-rate decay", **NONNEG),
            opt("initial_accumulator_value", "float", 0.0, "starting value of the sum of squares", **NONNEG),
            opt("eps", "float", 1e-10, "added to the denominator", **NONNEG),
            *_COMMON,
            _FUSED,
        ),
        checks=(one_implementation,),
        state_bytes=4.0,
        paper="JMLR 12 (2011) Duchi et al.",
    ),
    OptimizerSpec(
        name="adam",
        target="torch.optim:Adam",
        family="torch",
        description="Adam (torch.optim.Adam), L2 weight decay unless decoupled_weight_decay=true.",
        hparams=_ADAM_HP,
        options=(_AMSGRAD, _DECOUPLED, *_COMMON, _FUSED),
        checks=(one_implementation,),
        state_bytes=8.0,
        paper="arXiv:1412.6980",
    ),
    OptimizerSpec(
        name="adamax",
        target="torch.optim:Adamax",
        family="torch",
        description="Adamax: Adam with the infinity norm.",
        hparams=_ADAM_HP,
        options=_COMMON,
        state_bytes=8.0,
        paper="arXiv:1412.6980",
    ),
    OptimizerSpec(
        name="adamw_torch",
        target="torch.optim:AdamW",
        family="torch",
        description="AdamW (torch.optim.AdamW): Adam with decoupled weight decay. The default.",
        hparams=_ADAM_HP,
        options=(_AMSGRAD, *_COMMON, _FUSED),
        checks=(one_implementation,),
        state_bytes=8.0,
        paper="arXiv:1711.05101",
        # Elementwise, and torch's optimizers take DTensors: each rank updates its own rows.
        distributed=Distributed(
            fsdp2_math="local", fsdp2_run=Run(),
            # ZeRO-1/2: the clipping norm's last bit (0.0 unclipped); ZeRO-3's gradient reduction rounds differently
            zero_run=Run(measured=(1.2e-7, 1.2e-7, 7.7e-7)),
        ),
    ),
    OptimizerSpec(
        name="adamw_torch_fused",
        target="torch.optim:AdamW",
        family="torch",
        description="AdamW with torch's fused kernel (CUDA, and CPU since torch 2.4).",
        hparams=_ADAM_HP,
        options=(_AMSGRAD, opt("maximize", "bool", False, "maximise the objective")),
        fixed={"fused": True},
        state_bytes=8.0,
        paper="arXiv:1711.05101",
    ),
    OptimizerSpec(
        name="nadam",
        target="torch.optim:NAdam",
        family="torch",
        description="NAdam: Adam with Nesterov momentum.",
        hparams=_ADAM_HP,
        options=(opt("momentum_decay", "float", 0.004, "momentum decay psi", **NONNEG), _DECOUPLED, *_COMMON),
        state_bytes=8.0,
        paper="ICLR 2016 workshop, Dozat",
    ),
    OptimizerSpec(
        name="radam",
        target="torch.optim:RAdam",
        family="torch",
        description="RAdam: Adam with a rectified adaptive learning rate (no warm-up needed).",
        hparams=_ADAM_HP,
        options=(_DECOUPLED, *_COMMON),
        state_bytes=8.0,
        paper="arXiv:1908.03265",
    ),
    OptimizerSpec(
        name="rmsprop",
        target="torch.optim:RMSprop",
        family="torch",
        description="RMSprop (torch.optim.RMSprop).",
        hparams=frozenset({"lr", "weight_decay"}),
        options=(
            opt("alpha", "float", 0.99, "smoothing constant", **NONNEG),
            opt("eps", "float", 1e-8, "added to the denominator", **NONNEG),
            opt("momentum", "float", 0.0, "momentum factor", **UNIT),
            opt("centered", "bool", False, "normalise by an estimate of the gradient's variance"),
            opt("capturable", "bool", False, "CUDA-graph capturable"),
            *_COMMON,
        ),
        state_bytes=4.0,
        paper="Hinton, Coursera lecture 6e",
    ),
    OptimizerSpec(
        name="sgd",
        demo_lr=0.5,
        target="torch.optim:SGD",
        family="torch",
        description="Stochastic gradient descent, with optional (Nesterov) momentum.",
        hparams=frozenset({"lr", "weight_decay"}),
        options=(
            opt("momentum", "float", 0.0, "momentum factor", **UNIT),
            opt("dampening", "float", 0.0, "dampening for momentum", low=0.0, high=1.0),
            opt("nesterov", "bool", False, "Nesterov momentum (needs momentum > 0 and dampening = 0)"),
            *_COMMON,
            _FUSED,
        ),
        checks=(one_implementation, nesterov_needs_momentum),
        state_bytes=0.0,
        distributed=Distributed(fsdp2_run=Run("momentum=0.9"),
                                zero_run=Run("momentum=0.9", measured=(3.7e-9, 3.7e-9, 3.7e-9))),
    ),
)
