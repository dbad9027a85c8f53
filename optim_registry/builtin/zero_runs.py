"""Which names were trained under DeepSpeed ZeRO here, and why the others that claim support are trusted.

Data only. ``tests/test_zero.py`` trains exactly the names in ``RUN`` through ``OptimTrainer`` under each of
ZeRO-1, 2 and 3 (2 CPU processes, gloo, torchrun, every rank on the same batch, 3 steps, a tiny Llama; 8-bit
state on a 512- or 520-token vocabulary so that the LM head's is quantised) against one process on those batches,
and requires every record whose ZeRO path was not run to have a path in ``REASONED``. ``docs/distributed.md`` and
``optim-registry show`` print this from here.
"""

from __future__ import annotations

#: name -> optim_args of the run (``None``: the defaults). Measured on torch 2.13 CPU, deepspeed 0.19.8: largest
#: weight difference to one process after 3 steps, per stage (ZeRO-1, 2, 3).
RUN: dict[str, str | None] = {
    "adamw_8bit": None,
    "adamw_torch": None,
    "lion_32bit": None,
    "lion_8bit": None,
    "muon": None,
    "schedule_free_adamw": None,
    "sgd": "momentum=0.9",
}

#: The measured differences (largest |weight - one process's weight|), stage -> name -> value.
MEASURED: dict[int, dict[str, float]] = {
    1: {"adamw_torch": 1.2e-7, "sgd": 3.7e-9, "lion_32bit": 0.0, "schedule_free_adamw": 0.0, "adamw_8bit": 0.0,
        "lion_8bit": 0.0, "muon": 5.6e-3},
    2: {"adamw_torch": 1.2e-7, "sgd": 3.7e-9, "lion_32bit": 0.0, "schedule_free_adamw": 0.0, "adamw_8bit": 0.0,
        "lion_8bit": 0.0, "muon": 5.6e-3},
    3: {"adamw_torch": 7.7e-7, "sgd": 3.7e-9, "lion_32bit": 0.0, "schedule_free_adamw": 7.7e-7,
        "adamw_8bit": 4.9e-4, "lion_8bit": 0.0, "muon": 6.4e-3},
}

#: What a run's figure means where the plain number would mislead (``optim-registry show``, the docs).
RUN_NOTES = {
    "adamw_8bit": "unclipped, 520-token vocabulary and 3 layers: ZeRO-3 splits the 8-bit LM head at element 4160, "
    "mid-block, and 4.9e-4 is in that block, which each rank quantises with its own part's maximum (elsewhere "
    "1.8e-6; 8-bit vs 32-bit state in one process 1.1e-3; the library on the flat partitions 1.8e-2); with "
    "max_grad_norm=1 ZeRO's clipping factor differs in its last bit, which 8-bit state turns into one quantisation "
    "step where a value sits on a code boundary (one element 2.1e-4 off under ZeRO-3)",
    "lion_8bit": "512-token vocabulary, clipped as by default",
}

#: For scale, in one process: adamw_torch vs sgd (momentum 0.9) 3.0e-2, vs adamw_torch with beta2=0.99 1.2e-4;
#: adamw_8bit vs paged_adamw_32bit 8.8e-4 (512 tokens), 1.1e-3 (520 tokens, 3 layers) (benchmarks/zero_agreement.py).
#: ZeRO-1/2's adamw_torch difference is the clipping norm's last bit (0.0 unclipped); ZeRO-3's gradient reduction
#: rounds differently (7.5e-7 unclipped).

#: Muon under ZeRO is DeepSpeed's Muon: equal (0.0) to DeepSpeed's Muon over the registry's groups in one
#: process, which differs from the registry's own Muon by its bf16 Newton-Schulz arithmetic only.
MUON = {
    "bound": 1e-2,  # what the test allows between ZeRO's Muon and the registry's single-process Muon
    "bf16_vs_fp32": 3.6e-3,  # the registry's own Muon, bf16 vs float32 Newton-Schulz, same run
    "to_adamw": 4.4e-2,  # the registry's Muon vs adamw_torch, same run
    # ZeRO-3 vs DeepSpeed's Muon in one process (ZeRO-1/2: 0.0): ZeRO-3's gradients differ from one process's
    # in the last bit, which bf16 Newton-Schulz amplifies
    "zero3": 3.6e-3,
}

#: Names the same launches check are refused with a ValueError naming the stage and the way out.
REFUSED: tuple[str, ...] = ("adafactor", "adamw_torch_layerwise", "apollo_adamw", "dion", "galore_adamw")

#: Why a name that was not run is trusted, by its record's ``distributed.zero_math``.
REASONED = {
    "local": "not run here; reasoned: an elementwise update on ZeRO's flat partitions is the one-process update "
    "(the run names of this path agree to 7.7e-7)",
    "views": "not run in the tests; reasoned as adamw_8bit and lion_8bit, which were: the same bitsandbytes step "
    "on per-tensor views with each whole tensor's 8-/32-bit decision (benchmarks/zero_agreement.py also runs "
    "ademamix_8bit, rmsprop_bnb_8bit and paged_adamw_8bit: equal to one process unclipped, except RMSprop under "
    "ZeRO-3, 2.3e-4, as its 32-bit twin (2.4e-4): its first steps divide by |gradient|, which turns ZeRO-3's "
    "last-bit rounding into that)",
}

#: Where a family's reasoning differs from the path's (``(zero_math, family)`` -> text).
REASONED_BY_FAMILY = {
    ("views", "torchao"): "run by benchmarks/zero_agreement.py, not by the tests (torchao compiles its step with "
    "torch.compile, which the test launches switch off: DeepSpeed's Muon in the same launch would compile for "
    "minutes): 4-bit, 8-bit and fp8 AdamW equal to one process (0.0) under ZeRO-1/2; under ZeRO-3, which splits "
    "the LM head mid-block, 7.8e-4 (8-bit), 3.3e-3 (4-bit), 1.2e-3 (fp8) inside that block and at most 1.1e-5 "
    "elsewhere (the library on the flat partitions: a ValueError inside torchao under ZeRO-1/2, where DeepSpeed "
    "slices its quantised state, and 0.64 off under ZeRO-3)",
    ("views", "flashoptim"): "the CPU path (quantize=false, no quantised state) run by benchmarks/zero_agreement.py: "
    "7.5e-9 (ZeRO-2), 7.7e-7 (ZeRO-3) from one process; the quantised path needs CUDA and was not run: reasoned "
    "(its int8 groups of 32 are cut at tensor boundaries as bitsandbytes' blocks of 256 are)",
}

#: What each path does, for ``optim-registry show`` and the docs.
MATH = {
    "local": "the library's own step on ZeRO's flat fp32 partitions (elementwise)",
    "views": "the library's own step on per-tensor views of ZeRO's flat partitions (one per model tensor piece, "
    "sharing its storage), each taking its whole tensor's 8-/32-bit decision (min_8bit_size, the embeddings' 32-bit "
    "state, torchao's size rule) and the piece of a tensor split between two ranks cut at the tensor's block "
    "boundary, so every block is the one one process quantises except the block a partition boundary runs through "
    "(each rank scales its part by its own maximum); its state is the library's state dict over the views, saved "
    "and resumed through DeepSpeed's checkpoint; DeepSpeed features that read the state by flat partition (nvme "
    "optimizer offload, elastic and universal checkpoints, ZenFlow) are refused",
    "deepspeed_muon": "DeepSpeed's own Muon with the registry's groups, rates, weight decay and routing (use_muon "
    "tags), torch AdamW on the rest; the same conventions as the registry's Muon (Nesterov momentum, 5 "
    "Newton-Schulz iterations with coefficients (3.4445, -4.775, 2.0315) in bf16, rate scale sqrt(max(1, "
    "rows/cols)) = adjust_lr_fn 'original') but its own bf16 arithmetic: 5.6e-3 from the registry's Muon after 3 "
    "steps (the registry's bf16 vs fp32 Newton-Schulz: 3.6e-3); no gradient clipping; nesterov=false, other "
    "ns_steps and adjust_lr_fn='match_rms_adamw' are refused",
}
