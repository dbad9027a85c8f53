"""Which names were trained under DeepSpeed ZeRO here, and why the others that claim support are trusted.

Data only. ``tests/test_zero.py`` trains exactly the names in ``RUN`` through ``OptimTrainer`` under each of
ZeRO-1, 2 and 3 (2 CPU processes, gloo, torchrun, every rank on the same batch, 3 steps, a tiny Llama; 8-bit
state on a 512-token vocabulary so that it is quantised) against one process on those batches, and requires
every record whose ZeRO path was not run to have a path in ``REASONED``. ``docs/distributed.md`` and
``optim-registry show`` print this from here.
"""

from __future__ import annotations

#: name -> optim_args of the run (``None``: the defaults). Measured on torch 2.13 CPU, deepspeed 0.19.8: largest
#: weight difference to one process after 3 steps, per stage (ZeRO-1, 2, 3).
RUN: dict[str, str | None] = {
    "adamw_8bit": None,
    "adamw_torch": None,
    "lion_32bit": None,
    "muon": None,
    "schedule_free_adamw": None,
    "sgd": "momentum=0.9",
}

#: The measured differences (largest |weight - one process's weight|), stage -> name -> value.
MEASURED: dict[int, dict[str, float]] = {
    1: {"adamw_torch": 1.2e-7, "sgd": 3.7e-9, "lion_32bit": 0.0, "schedule_free_adamw": 0.0, "adamw_8bit": 1.8e-2,
        "muon": 5.6e-3},
    2: {"adamw_torch": 1.2e-7, "sgd": 3.7e-9, "lion_32bit": 0.0, "schedule_free_adamw": 0.0, "adamw_8bit": 1.8e-2,
        "muon": 5.6e-3},
    3: {"adamw_torch": 7.7e-7, "sgd": 3.7e-9, "lion_32bit": 0.0, "schedule_free_adamw": 7.7e-7,
        "adamw_8bit": 1.8e-2, "muon": 6.4e-3},
}

#: For scale, in one process: adamw_torch vs sgd (momentum 0.9) 3.0e-2, vs adamw_torch with beta2=0.99 1.2e-4;
#: adamw_8bit vs paged_adamw_32bit 8.8e-4 (benchmarks/zero_agreement.py). ZeRO-1/2's adamw_torch difference is the
#: clipping norm's last bit (0.0 unclipped); ZeRO-3's gradient reduction rounds differently (7.5e-7 unclipped).

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
    "blockwise": "not run here; reasoned as adamw_8bit, which was: state quantised in blocks over ZeRO's flat "
    "partitions trains, but not as one process (warned when built)",
}

#: What each path does, for ``optim-registry show`` and the docs.
MATH = {
    "local": "the library's own step on ZeRO's flat fp32 partitions (elementwise)",
    "blockwise": "the library's own step on ZeRO's flat partitions, its 8-/4-bit state quantised in blocks that "
    "run across tensors: trains, not as one process (warned)",
    "deepspeed_muon": "DeepSpeed's own Muon with the registry's groups, rates, weight decay and routing (use_muon "
    "tags), torch AdamW on the rest; the same conventions as the registry's Muon (Nesterov momentum, 5 "
    "Newton-Schulz iterations with coefficients (3.4445, -4.775, 2.0315) in bf16, rate scale sqrt(max(1, "
    "rows/cols)) = adjust_lr_fn 'original') but its own bf16 arithmetic: 5.6e-3 from the registry's Muon after 3 "
    "steps (the registry's bf16 vs fp32 Newton-Schulz: 3.6e-3); no gradient clipping; nesterov=false, other "
    "ns_steps and adjust_lr_fn='match_rms_adamw' are refused",
}
