"""torchao low-bit AdamW: 4-bit, 8-bit and FP8 optimizer state, each step compiled with torch.compile.

torchao quantises the state of a parameter only when it has at least 4096 elements and its size is a
multiple of ``block_size``; smaller parameters keep ordinary fp32 state. The first step of each new
parameter shape is compiled (tens of seconds on a small CPU; a C compiler is needed).
"""

from __future__ import annotations

from ...spec import AT_LEAST_ONE, Distributed, OptimizerSpec, Requirement, opt

#: The family page's title and first paragraph (docs/optimizers/torchao.md, `optim-registry show`).
TITLE = "torchao low-bit optimizers"
ABOUT = "4-bit, 8-bit and FP8 AdamW state from torchao."

_REQUIRES = (Requirement("torchao", "torchao", "0.11.0", extra="torchao"),)
_FAMILY = "torchao"
_SHIMS = "optim_registry.families.torchao.builders"
_HP = frozenset({"lr", "betas", "eps", "weight_decay"})
_OPTIONS = (
    opt(
        "block_size",
        "int",
        256,
        "elements per quantisation block; a parameter is quantised only if it has >= 4096 elements and its "
        "size is a multiple of this (transformers' default 256 is sent; torchao's own 4-bit default is 128)",
        send=True,
        **AT_LEAST_ONE,
    ),
    opt(
        "bf16_stochastic_round",
        "bool",
        False,
        "round bf16 weights stochastically after the fp32 update (only for bf16 parameters)",
        send=True,
    ),
    opt("amsgrad", "bool", False, "keep the maximum of past second moments (AMSGrad)"),
)
#: Block-wise quantised state: under ZeRO stepped on per-tensor views of the flat partitions.
_DISTRIBUTED = Distributed(
    zero_math="views",
    zero_reasoned="run by benchmarks/zero_agreement.py, not by the tests (torchao compiles its step with "
    "torch.compile, which the test launches switch off: DeepSpeed's Muon in the same launch would compile for "
    "minutes): 4-bit, 8-bit and fp8 AdamW equal to one process (0.0) under ZeRO-1/2; under ZeRO-3, which splits "
    "the LM head mid-block, 7.8e-4 (8-bit), 3.3e-3 (4-bit), 1.2e-3 (fp8) inside that block and at most 1.1e-5 "
    "elsewhere (the library on the flat partitions: a ValueError inside torchao under ZeRO-1/2, where DeepSpeed "
    "slices its quantised state, and 0.64 off under ZeRO-3)",
)
_NOTE = (
    " State of parameters with fewer than 4096 elements, or a size that is not a multiple of block_size, stays "
    "fp32. Each step is compiled (slow first step, needs a C compiler)."
)


def _ao(name: str, kind: str, description: str) -> OptimizerSpec:
    cls, bytes_per_param = {"4bit": ("AdamW4bit", 1.03), "8bit": ("AdamW8bit", 2.03), "fp8": ("AdamWFp8", 2.03)}[kind]
    return OptimizerSpec(
        name=name,
        target=f"torchao.optim:{cls}",
        adapt=f"{_SHIMS}:adopt",
        family=_FAMILY,
        description=description + _NOTE,
        requires=_REQUIRES,
        hparams=_HP,
        options=_OPTIONS,
        state_bytes=bytes_per_param,
        distributed=_DISTRIBUTED,
        resume="state_dict (quantised state tensors stored as plain tensors plus metadata)",
        paper={"4bit": "arXiv:2309.01507", "8bit": "arXiv:2110.02861", "fp8": "arXiv:2310.18313"}[kind],
    )


RECORDS = (
    _ao(name="adamw_torch_4bit", kind="4bit", description="torchao AdamW with 4-bit block-wise quantised state."),
    _ao(name="adamw_torch_8bit", kind="8bit", description="torchao AdamW with 8-bit block-wise quantised state."),
    _ao(name="ao_adamw_4bit", kind="4bit", description="Alias of adamw_torch_4bit (torchao AdamW4bit)."),
    _ao(name="ao_adamw_8bit", kind="8bit", description="Alias of adamw_torch_8bit (torchao AdamW8bit)."),
    _ao(name="ao_adamw_fp8", kind="fp8", description="torchao AdamW with FP8 (e4m3) block-wise scaled state."),
)
