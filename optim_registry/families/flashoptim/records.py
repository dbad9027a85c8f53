"""FlashOptim (Databricks): quantised optimizer state, 24-bit master weights and fused Triton steps.

Its default path (quantize, master_weight_bits=24, fused) needs CUDA. On a CPU the only path that runs
is the plain one (``quantize=False, master_weight_bits=None, fused=False``), and the registry does not
switch to it silently: a CPU run is refused unless ``optim_args="quantize=false"`` opts in.
"""

from __future__ import annotations

from ...spec import UNIT, Distributed, OptimizerSpec, Requirement, opt
from ..torch.records import nesterov_needs_momentum  # FlashSGD takes torch SGD's momentum options

#: The family page's title and first paragraph (docs/optimizers/flashoptim.md, `optim-registry show`).
TITLE = "flashoptim"
ABOUT = "flashoptim's optimizers; on CPU only in their unquantised, unfused form."

_REQ = (Requirement("flashoptim", "flashoptim", "0.1.4", extra="flashoptim"),)
_BUILDER = "optim_registry.families.flashoptim.builders:build"
#: int8 state quantised in groups of each tensor: under ZeRO stepped on per-tensor views of the flat partitions.
_DISTRIBUTED = Distributed(
    zero_math="views",
    zero_reasoned="the CPU path (quantize=false, no quantised state) run by benchmarks/zero_agreement.py: 7.5e-9 "
    "(ZeRO-2), 7.7e-7 (ZeRO-3) from one process; the quantised path needs CUDA and was not run: reasoned (its int8 "
    "groups of 32 are cut at tensor boundaries as bitsandbytes' blocks of 256 are)",
)

_CPU_POLICY = (
    " CUDA runs get the quantised, fused path with 24-bit master weights for bf16/fp16 weights "
    "(master_weight_bits is dropped, with a warning, when every weight is fp32). On CPU the run is "
    "refused unless optim_args=\"quantize=false\" is given: that opts into FlashOptim's plain eager "
    "path (fp32-or-weight-dtype state, no master-weight correction, unfused), with none of its memory "
    "savings; fused=true or master_weight_bits=24/32 given on CPU are refused."
)
_FLASH = (
    opt("quantize", "bool", True, "int8 optimizer state (needs CUDA); false is the opt-in for CPU runs"),
    opt("master_weight_bits", "int", 24, "effective master-weight precision for bf16/fp16 weights kept "
        "as error-correction bits (24: +1 byte/param, 32: +2); none keeps no master copy",
        choices=(24, 32), nullable=True),
    opt("fused", "bool", True, "run each step as one Triton kernel (needs CUDA)"),
    opt("compress_state_dict", "bool", True, "save the quantised state in checkpoints (when quantize=true)"),
    opt("check_numerics", "bool", False, "raise NumericsError when the lr is too small to change the weights"),
)
_DECOUPLE_LR = opt(
    "decouple_lr", "bool", False, "scale weight decay by lr / initial_lr instead of lr (fully decoupled)"
)
_SGD = (
    opt("momentum", "float", 0.0, "momentum factor", **UNIT),
    opt("dampening", "float", 0.0, "dampening for momentum", low=0.0, high=1.0),
    opt("nesterov", "bool", False, "Nesterov momentum (needs momentum > 0 and dampening = 0)"),
)

RECORDS = (
    OptimizerSpec(
        name="flash_adam",
        target="flashoptim:FlashAdam",
        family="flashoptim",
        description="FlashOptim Adam (L2 weight decay through the gradient)." + _CPU_POLICY,
        requires=_REQ,
        hparams=frozenset({"lr", "betas", "eps", "weight_decay"}),
        weight_decay_kwarg=True,
        options=_FLASH,
        builder=_BUILDER,
        distributed=_DISTRIBUTED,
        supports_layerwise=False,
        paper="arXiv:2602.23349",
    ),
    OptimizerSpec(
        name="flash_adamw",
        target="flashoptim:FlashAdamW",
        family="flashoptim",
        description="FlashOptim AdamW (decoupled weight decay)." + _CPU_POLICY,
        requires=_REQ,
        hparams=frozenset({"lr", "betas", "eps", "weight_decay"}),
        weight_decay_kwarg=True,
        options=(*_FLASH, _DECOUPLE_LR),
        builder=_BUILDER,
        distributed=_DISTRIBUTED,
        supports_layerwise=False,
        paper="arXiv:2602.23349",
    ),
    OptimizerSpec(
        name="flash_lion",
        demo_lr=4e-3,
        target="flashoptim:FlashLion",
        family="flashoptim",
        description="FlashOptim Lion (decoupled weight decay); betas from TrainingArguments as for "
        "transformers' lion names (the paper uses (0.9,0.99))." + _CPU_POLICY,
        requires=_REQ,
        hparams=frozenset({"lr", "betas", "weight_decay"}),
        weight_decay_kwarg=True,
        options=(*_FLASH, _DECOUPLE_LR),
        builder=_BUILDER,
        distributed=_DISTRIBUTED,
        supports_layerwise=False,
        paper="arXiv:2602.23349, arXiv:2302.06675",
    ),
    OptimizerSpec(
        name="flash_sgd",
        demo_lr=0.5,
        target="flashoptim:FlashSGD",
        family="flashoptim",
        description="FlashOptim SGD (L2 weight decay through the gradient)." + _CPU_POLICY,
        requires=_REQ,
        hparams=frozenset({"lr", "weight_decay"}),
        weight_decay_kwarg=True,
        options=(*_FLASH, *_SGD),
        checks=(nesterov_needs_momentum,),
        builder=_BUILDER,
        distributed=_DISTRIBUTED,
        supports_layerwise=False,
        paper="arXiv:2602.23349",
    ),
    OptimizerSpec(
        name="flash_sgdw",
        demo_lr=0.5,
        target="flashoptim:FlashSGDW",
        family="flashoptim",
        description="FlashOptim SGDW (decoupled weight decay)." + _CPU_POLICY,
        requires=_REQ,
        hparams=frozenset({"lr", "weight_decay"}),
        weight_decay_kwarg=True,
        options=(*_FLASH, *_SGD, _DECOUPLE_LR),
        checks=(nesterov_needs_momentum,),
        builder=_BUILDER,
        distributed=_DISTRIBUTED,
        supports_layerwise=False,
        paper="arXiv:2602.23349",
    ),
)
