"""Why a distributed claim is trusted: what each FSDP2 / ZeRO path does, and why a name on it that was not run is.

Data only (text for ``optim-registry show`` and docs/distributed.md). The runs themselves are the records' own
fields, beside the claims they back: ``Distributed.fsdp2_run`` (``tests/test_fsdp2.py`` trains every such name on
2 CPU processes, gloo, torchrun, a tiny Llama with every decoder layer and the root passed to ``fully_shard``,
every rank on the same batch, 3 steps, each rank's state_dict through torch.save / load(weights_only=True) and
back, 1 more step, against one process on that batch, to 1e-6; ``tests/test_fsdp2_checkpoints.py`` checkpoints
them) and ``Distributed.zero_run`` (``tests/test_zero.py`` trains every such name through ``OptimTrainer`` under
each of ZeRO-1, 2 and 3: 2 CPU processes, gloo, torchrun, every rank on the same batch, 3 steps, a tiny Llama,
against one process on those batches). A supported path without a run is trusted by the reasoning below, which
the tests require every such record to have (FSDP2's ``local`` and ``native`` paths, which run the library's own
code on DTensors where a raw error or a shard-wise answer can hide, must be run).
"""

from __future__ import annotations

from typing import Any

#: What each FSDP2 path (``Distributed.fsdp2_math``) does, for ``optim-registry show``.
FSDP2_PATHS = {
    "owner": "each whole tensor stepped by the library on one owner rank, shards scattered back",
    "local": "elementwise, on each rank's own rows",
    "native": "momentum on each rank's rows; each whole matrix orthogonalised once on its owner rank",
}

#: Why a name that was not run under FSDP2 is trusted, by its path.
FSDP2_REASONED = {
    "owner": "not run here; reasoned: the library's own step runs on whole tensors, each on one owner rank, "
    "which gives the one-process update exactly for any optimizer that updates each parameter from its "
    "own gradient and state (the run names of this path agree to 0.0)",
    "local": "not run here; reasoned: an elementwise update on each rank's rows",
    "native": "not run here; reasoned: the optimizer shards its whole-matrix math itself",
}

#: What the checkpoint launches (tests/test_fsdp2_checkpoints.py, tests/fsdp2_ckpt_worker.py) did with every name
#: with an FSDP2 run: through accelerate's own FSDP2 save / load functions, sharded (torch.distributed.checkpoint) and
#: full (rank-0 torch.save); all agreed with the uninterrupted run to 0.0 on torch 2.13 CPU when measured.
CHECKPOINT_RUN = "run here (saving changes nothing; saved on 2 ranks, sharded and full, resumed exactly on 1, 2 and 3)"

#: Why a name that claims FSDP2 checkpoints (``distributed.fsdp2_checkpoint``) but was not run is trusted.
CHECKPOINT_REASONED = {
    "owner": "not run here; reasoned: the owner-rank wrapper lays the library's state out like the parameters and "
    "rebuilds it on the owners of any rank count",
    "local": "not run here; reasoned: the library's state is DTensors sharded like the parameters",
    "native": "not run here; reasoned: the state is DTensors sharded like the parameters",
}

#: What each ZeRO path (``Distributed.zero_math``) does, for ``optim-registry show`` and the docs.
ZERO_PATHS = {
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

#: Why a name that was not run under ZeRO is trusted, by its path (a record's ``zero_reasoned`` says it where its
#: family's reasoning differs).
ZERO_REASONED = {
    "local": "not run here; reasoned: an elementwise update on ZeRO's flat partitions is the one-process update "
    "(the run names of this path agree to 7.7e-7)",
    "views": "not run in the tests; reasoned as adamw_8bit and lion_8bit, which were: the same bitsandbytes step "
    "on per-tensor views with each whole tensor's 8-/32-bit decision (benchmarks/zero_agreement.py also runs "
    "ademamix_8bit, rmsprop_bnb_8bit and paged_adamw_8bit: equal to one process unclipped, except RMSprop under "
    "ZeRO-3, 2.3e-4, as its 32-bit twin (2.4e-4): its first steps divide by |gradient|, which turns ZeRO-3's "
    "last-bit rounding into that)",
}

#: For scale, in one process: adamw_torch vs sgd (momentum 0.9) 3.0e-2, vs adamw_torch with beta2=0.99 1.2e-4;
#: adamw_8bit vs paged_adamw_32bit 8.8e-4 (512 tokens), 1.1e-3 (520 tokens, 3 layers) (benchmarks/zero_agreement.py).
#: ZeRO-1/2's adamw_torch difference is the clipping norm's last bit (0.0 unclipped); ZeRO-3's gradient reduction
#: rounds differently (7.5e-7 unclipped).


def runs(kind: str) -> dict[str, str | None]:
    """``name -> optim_args`` of every built-in name run here under ``kind`` (``"fsdp2"`` or ``"zero"``)."""
    from ..registry import optimizers

    found: dict[str, Any] = {}
    for name, spec in sorted(optimizers.builtin().items()):
        run = getattr(spec.distributed, f"{kind}_run")
        if run is not None:
            found[name] = run.optim_args
    return found
