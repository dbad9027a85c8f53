"""transformers' remaining names: GrokAdamW, and the AdamW variants of accelerator or unpublished packages.

``adamw_torch_xla`` (TPU / XLA devices), ``adamw_torch_npu_fused`` (Ascend NPUs) and
``adamw_anyprecision`` (torchdistx, which is not published on PyPI) resolve only where their package
is installed; elsewhere the missing-package error says what to install.
"""

from __future__ import annotations

from ...spec import NONNEG, OptimizerSpec, Requirement, opt

#: The family page's title and first paragraph (docs/optimizers/misc.md, `optim-registry show`).
TITLE = "Other optimizers"
ABOUT = "Optimizers that fit no other family."

_ADAM_HP = frozenset({"lr", "betas", "eps", "weight_decay"})
#: _UNTESTED: the three accelerator / unpublished-package names get no ``_layerwise`` twin: their packages
#: cannot be installed where the registry is tested (XLA's lazy tensors in particular), so a twin would
#: be a name nobody has ever run.

_TORCHDISTX = Requirement(
    "torchdistx",
    "torchdistx",
    install="torchdistx is not on PyPI (no `pip install` line exists); build it from source against your torch: "
    "git clone --recursive https://github.com/pytorch/torchdistx && cd torchdistx && "
    "cmake -DTORCHDIST_INSTALL_STANDALONE=ON -B build && cmake --build build && pip install . "
    "(its README lists torch 1.11 / Python <= 3.9 as the last supported pair). "
    "For bf16 state with Kahan summation on current torch, torch-optimi's AdamW (pip install torch-optimi) "
    "does the same job",
)

RECORDS = (
    OptimizerSpec(
        name="adamw_anyprecision",
        target="torchdistx.optimizers:AnyPrecisionAdamW",
        family="misc",
        description="torchdistx AnyPrecisionAdamW: AdamW with chosen state dtypes and optional Kahan summation "
        "for pure-bf16 training. Needs torchdistx, which is not on PyPI.",
        requires=(_TORCHDISTX,),
        hparams=_ADAM_HP,
        options=(
            opt("use_kahan_summation", "bool", False, "Kahan-compensated weight updates", send=True),
            opt("momentum_dtype", "dtype", "float32", "dtype of the first moment", send=True),
            opt("variance_dtype", "dtype", "float32", "dtype of the second moment (library default bfloat16)",
                send=True),
            opt("compensation_buffer_dtype", "dtype", "bfloat16", "dtype of the Kahan compensation buffer",
                send=True),
        ),
        supports_layerwise=False,  # see _UNTESTED
        state_bytes=8.0,
    ),
    OptimizerSpec(
        name="adamw_torch_npu_fused",
        target="torch_npu.optim:NpuFusedAdamW",
        family="misc",
        description="AdamW with Ascend's fused NPU kernel (torch_npu NpuFusedAdamW); needs an Ascend NPU, the "
        "CANN toolkit and a torch-npu build matching torch.",
        requires=(Requirement("torch-npu", "torch_npu"),),
        hparams=_ADAM_HP,
        supports_layerwise=False,  # see _UNTESTED
        state_bytes=8.0,
        paper="arXiv:1711.05101",
    ),
    OptimizerSpec(
        name="adamw_torch_xla",
        target="torch_xla.amp.syncfree:AdamW",
        family="misc",
        description="torch_xla's sync-free AdamW for XLA devices (TPU); needs a torch-xla build matching torch.",
        requires=(Requirement("torch-xla", "torch_xla"),),
        hparams=_ADAM_HP,
        supports_layerwise=False,  # see _UNTESTED
        state_bytes=8.0,
        paper="arXiv:1711.05101",
    ),
    OptimizerSpec(
        name="grokadamw",
        target="optim_registry.families.misc.optimizers:GrokAdamW",
        family="misc",
        description="GrokAdamW: AdamW amplifying slow gradient components (a gradient EMA) to speed up grokking. "
        "Its grokking signal reads train_loss / eval_loss from the param groups; the Trainer sets neither, so "
        "alpha stays alpha_init unless you write them there.",
        requires=(Requirement("grokadamw", "grokadamw", "0.1.2", extra="grokadamw"),),
        hparams=_ADAM_HP,
        options=(
            opt("alpha_init", "float", 0.98, "initial decay of the gradient EMA", send=True, low=0.0, high=1.0),
            opt("lamb", "float", 2.0, "amplification of the gradient EMA", send=True, **NONNEG),
            opt("gamma", "float", 0.1, "per-layer decay of beta1 (beta1 * (1 - gamma) ** layer index)", send=True,
                low=0.0, high=1.0),
            opt("grokking_signal_decay_rate", "float", 0.1, "how fast the grokking signal lowers alpha", send=True,
                **NONNEG),
            opt("gradient_clipping", "float", 1.0, "per-parameter gradient norm clip inside the step (0: off)",
                send=True, **NONNEG),
        ),
        # gamma decays beta1 by a parameter's position in its group: one optimizer per parameter would put
        # every parameter at position 0 and silently change the algorithm.
        supports_layerwise=False,
        state_bytes=12.0,
        paper="https://huggingface.co/blog/grokadamw (Grokfast: arXiv:2405.20233)",
        resume="state_dict (the library's group-held state moved into optimizer.state)",
    ),
)
