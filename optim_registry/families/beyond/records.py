"""Optimizers transformers does not name: ADOPT, CAME, Muon and Dion (matrix optimizers with an AdamW side)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ...spec import (
    AT_LEAST_ONE,
    NONNEG,
    POSITIVE,
    UNIT,
    Distributed,
    MatrixRouting,
    OptimizerSpec,
    Requirement,
    Run,
    opt,
)

#: The family page's title and first paragraph (docs/optimizers/beyond.md, `optim-registry show`).
TITLE = "Beyond Adam: Muon, Dion, CAME, ADOPT"
ABOUT = (
    "Newer optimizers, some with their own parameter split (Muon: 2-D hidden matrices on Muon, the "
    "rest on AdamW)."
)


# Cross-field checks (the records' ``checks``): every value in, None or what is wrong and how to fix it out.
def positive_lr(values: Mapping[str, Any]) -> str | None:
    """For optimizers that cannot take a zero rate (CAME asserts lr > 0)."""
    lr = values.get("lr")
    if lr is not None and not lr > 0:
        return f"needs a learning rate > 0 (got lr={lr}); set learning_rate (or optim_args lr) above 0"
    return None


_ALL_HP = frozenset({"lr", "betas", "eps", "weight_decay"})

#: Muon and Dion act on whole 2-D matrices; sharded (flattened) parameters break that.
_MATRIX_DISTRIBUTED = Distributed(
    fsdp="updates whole 2-D matrices; FSDP1 shards (flattens) them (use FSDP2: fsdp_version=2)",
    zero1="updates whole 2-D matrices; ZeRO partitions flattened optimizer state (use FSDP2)",
    zero2="updates whole 2-D matrices; ZeRO partitions flattened optimizer state (use FSDP2)",
    zero3="updates whole 2-D matrices; ZeRO-3 shards the parameters (use FSDP2)",
)
#: Muon shards its own Newton-Schulz across FSDP2 ranks (optim_registry.engines.fsdp2.whole_matrix_map); under
#: ZeRO it is handed to DeepSpeed's own Muon, which orthogonalises whole gradients inside ZeRO's partitioning.
_MUON_DISTRIBUTED = replace(
    _MATRIX_DISTRIBUTED, fsdp2_math="native", zero1=True, zero2=True, zero3=True, zero_math="deepspeed_muon",
    fsdp2_run=Run(), zero_run=Run(measured=(5.6e-3, 5.6e-3, 6.4e-3)),
)

#: Muon under ZeRO is DeepSpeed's Muon: equal (0.0) to DeepSpeed's Muon over the registry's groups in one
#: process, which differs from the registry's own Muon by its bf16 Newton-Schulz arithmetic only.
MUON_UNDER_ZERO = {
    "bound": 1e-2,  # what tests/test_zero.py allows between ZeRO's Muon and the registry's single-process Muon
    "bf16_vs_fp32": 3.6e-3,  # the registry's own Muon, bf16 vs float32 Newton-Schulz, same run
    "to_adamw": 4.4e-2,  # the registry's Muon vs adamw_torch, same run
    # ZeRO-3 vs DeepSpeed's Muon in one process (ZeRO-1/2: 0.0): ZeRO-3's gradients differ from one process's
    # in the last bit, which bf16 Newton-Schulz amplifies
    "zero3": 3.6e-3,
}

#: ``matmul_dtype`` of the registry's Muon and Dion (``optim_registry.families.beyond.precision.MATMUL_DTYPES``,
#: written out here because listing imports no torch).
MATMUL_DTYPES = ("auto", "bfloat16", "float32")


def _matmul_dtype(help_: str) -> Any:
    return opt("matmul_dtype", "str", "auto", help_ + "; bfloat16 or float32 force one", choices=MATMUL_DTYPES)


#: Routing options shared by Muon and Dion (their ``MatrixRouting`` names them: ``_ROUTED_BY``).
_ROUTING_OPTIONS = (
    opt("exclude", "str", r"embed|lm_head|wte|wpe|output", "regex searched in a 2-D weight's last two name "
        "parts (module, parameter); a match sends it to AdamW"),
    opt("lora_to_adamw", "bool", True, "LoRA factors (lora_A / lora_B) go to AdamW; false puts them on the "
        "matrix side"),
    opt("router_to_adamw", "bool", True, "MoE routers (mlp.gate: the matrix beside the experts that picks them) "
        "go to AdamW, as published MoE recipes keep them; false puts them on the matrix side"),
)
_ROUTED_BY = {"exclude_option": "exclude", "lora_option": "lora_to_adamw", "router_option": "router_to_adamw"}

RECORDS = (
    OptimizerSpec(
        name="adopt_adamw",
        target="pytorch_optimizer:ADOPT",
        family="beyond",
        description="ADOPT (pytorch_optimizer.ADOPT) with decoupled (AdamW-style) weight decay: the "
        "update is normalised by the *previous* second moment and clipped by step**0.25, so it "
        "converges for any beta2. The first step only fills the second moment (weights move from step "
        "2). betas/eps come from TrainingArguments; the paper uses betas=(0.9,0.9999), eps=1e-6.",
        requires=(Requirement("pytorch-optimizer", "pytorch_optimizer", "4.1", extra="pytorch-optimizer"),),
        hparams=_ALL_HP,
        fixed={"weight_decouple": True},
        options=(
            opt("fixed_decay", "bool", False, "decay weights by weight_decay alone, not weight_decay * lr"),
            opt("foreach", "bool", None, "batched (foreach) update; none lets pytorch_optimizer choose"),
            opt("maximize", "bool", False, "maximise the objective"),
        ),
        state_bytes=8.0,
        paper="arXiv:2411.02853",
    ),
    OptimizerSpec(
        name="came_pytorch",
        target="came_pytorch:CAME",
        family="beyond",
        description="CAME (came_pytorch.CAME): Adafactor-style factored second moments plus a "
        "confidence-guided (instability) correction; near-Adafactor memory, Adam-like quality. betas "
        "(beta1, beta2) come from TrainingArguments, beta3 from optim_args. Resume is exact for fp32 "
        "weights; with bf16 weights CAME keeps fp32 state that torch's load_state_dict casts to bf16, so "
        "a resumed bf16 run drifts slightly.",
        requires=(Requirement("came-pytorch", "came_pytorch", "0.1.3", extra="came"),),
        hparams=frozenset({"lr", "betas", "weight_decay"}),
        weight_decay_kwarg=True,
        options=(
            opt("beta3", "float", 0.9999, "averaging coefficient of the instability (confidence) estimate", **UNIT),
            opt("eps1", "float", 1e-30, "regularisation constant added to the squared gradient", **NONNEG),
            opt("eps2", "float", 1e-16, "regularisation constant added to the instability", **NONNEG),
            opt("clip_threshold", "float", 1.0, "threshold on the root-mean-square of the update", **POSITIVE),
        ),
        checks=(positive_lr,),
        builder="optim_registry.families.beyond.builders:came",
        state_bytes=4.1,
        paper="arXiv:2307.02047",
        distributed=Distributed(fsdp2_run=Run()),
        resume="state_dict (exact for fp32 weights; bf16 weights get their fp32 state cast to bf16 by torch)",
    ),
    OptimizerSpec(
        name="dion",
        target="optim_registry.families.beyond.dion:Dion",
        family="beyond",
        description="Dion (the registry's single-device implementation of the paper's Algorithm 1; "
        "Microsoft's package is not on PyPI): low-rank orthonormalised updates with error feedback on "
        "the hidden 2-D weight matrices, AdamW on everything else. Routing: every trainable 2-D weight "
        "that is not an nn.Embedding, the input/output embedding, a MoE router (router_to_adamw), a LoRA "
        "factor (lora_to_adamw) or matched by `exclude` -> Dion at lr=dion_lr; embeddings, the LM head, "
        "MoE routers, LoRA factors, norms, biases and >2-D tensors (MoE expert stacks included) -> AdamW at "
        "TrainingArguments.learning_rate (with its betas/eps). The weight-decay split and optim_groups "
        "rules apply on both sides (a rule's lr on a matrix replaces dion_lr); the scheduler scales "
        "every group from its own initial lr.",
        hparams=_ALL_HP,
        weight_decay_kwarg=True,
        options=(
            opt("dion_lr", "float", 0.01, "learning rate of the Dion (matrix) groups", role="rate", **NONNEG),
            opt("momentum", "float", 0.95, "error-feedback decay mu of the Dion momentum", **UNIT),
            opt("rank", "int", None, "rank r of the low-rank step; none uses rank_fraction", **AT_LEAST_ONE),
            opt("rank_fraction", "float", 1.0, "r = ceil(rank_fraction * min(rows, cols)) when rank is none",
                low=0.0, high=1.0, low_open=True),
            opt("seed", "int", 0, "seed of the initial right factors Q"),
            _matmul_dtype("dtype of the power iteration's products: auto = the state's dtype, or float32 where a "
                          "16-bit state would be multiplied in emulation (CPUs without AVX512-BF16/AMX)"),
            *_ROUTING_OPTIONS,
        ),
        builder="optim_registry.families.beyond.builders:dion",
        routing=MatrixRouting("use_dion", "dion_lr", **_ROUTED_BY),
        group_options=frozenset({"betas", "eps", "momentum", "rank", "rank_fraction"}),
        supports_layerwise=False,
        state_bytes=4.0,
        paper="arXiv:2504.05295",
        distributed=replace(_MATRIX_DISTRIBUTED, fsdp2_run=Run()),
    ),
    OptimizerSpec(
        name="muon",
        target="optim_registry.families.beyond.muon:MuonWithAdamW",
        family="beyond",
        description="Muon (Newton-Schulz-orthogonalised momentum, as torch.optim.Muon) on the hidden "
        "2-D weight matrices and AdamW on everything else, in one optimizer. Routing: every trainable "
        "2-D weight that is not an nn.Embedding, the input/output embedding, a MoE router (mlp.gate; "
        "router_to_adamw), a LoRA factor (lora_to_adamw) or matched by `exclude` -> Muon at lr=muon_lr "
        "(default 0.02); 3-D MoE expert stacks (experts.gate_up_proj / experts.down_proj) -> Muon, one matrix "
        "per expert (expert_matrices); embeddings, the LM head, MoE routers, LoRA factors, norms, biases and "
        "other tensors -> "
        "AdamW at TrainingArguments.learning_rate (with its betas/eps). The weight-decay split "
        "(TrainingArguments.weight_decay, or muon_weight_decay on the matrices; none for norms/biases) "
        "and optim_groups rules apply on both sides (a rule's lr on a matrix replaces muon_lr); the "
        "scheduler scales every group from its own initial lr, so both sides follow it.",
        hparams=_ALL_HP,
        weight_decay_kwarg=True,
        options=(
            opt("muon_lr", "float", 0.02, "learning rate of the Muon (matrix) groups", role="rate", **NONNEG),
            opt("momentum", "float", 0.95, "Muon momentum", **UNIT),
            opt("nesterov", "bool", True, "Nesterov-style Muon momentum"),
            opt("ns_steps", "int", 5, "Newton-Schulz iterations", **AT_LEAST_ONE),
            opt("adjust_lr_fn", "str", None, "shape scaling of the Muon lr: none/original = "
                "sqrt(max(1, rows/cols)), match_rms_adamw = 0.2*sqrt(max(rows, cols))",
                choices=("original", "match_rms_adamw")),
            opt("muon_weight_decay", "float", None, "weight decay of the Muon matrices; none uses "
                "TrainingArguments.weight_decay", low=0.0),
            opt("expert_matrices", "bool", True, "3-D MoE expert stacks go to Muon, one matrix per expert; "
                "false sends them to AdamW"),
            _matmul_dtype("dtype of the Newton-Schulz iteration: auto = bfloat16 (torch.optim.Muon's) where the device "
                          "multiplies it natively (CUDA from Ampere, CPUs with AVX512-BF16 or AMX), float32 where "
                          "bfloat16 would be emulated and float32 is faster (other CPUs)"),
            *_ROUTING_OPTIONS,
        ),
        builder="optim_registry.families.beyond.builders:muon",
        routing=MatrixRouting("use_muon", "muon_lr", "muon_weight_decay", experts=True,
                              experts_option="expert_matrices", **_ROUTED_BY),
        group_options=frozenset({"betas", "eps", "momentum", "nesterov", "ns_steps", "adjust_lr_fn"}),
        supports_layerwise=False,
        state_bytes=4.0,
        paper="https://kellerjordan.github.io/posts/muon/, arXiv:2502.16982",
        distributed=_MUON_DISTRIBUTED,
    ),
)
