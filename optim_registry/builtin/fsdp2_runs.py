"""Which names were trained and checkpointed under FSDP2 here, and why the others that claim support are trusted.

Data only. ``tests/test_fsdp2.py`` trains exactly the names in ``RUN`` (2 CPU processes, gloo,
torchrun, a tiny Llama with every decoder layer and the root passed to ``fully_shard``, every rank on
the same batch, 3 steps, each rank's state_dict through torch.save / load(weights_only=True) and back,
1 more step) against one process on that batch and requires them to agree to 1e-6; it
also requires every record whose FSDP2 path is ``local`` or ``native`` to be in ``RUN``, because
those run the library's own code on DTensors, where a raw error or a shard-wise answer can hide.
``tests/test_fsdp2_checkpoints.py`` checkpoints the same names (``CHECKPOINT_RUN``).
``docs/distributed.md`` and ``optim-registry show`` print this from here.
"""

from __future__ import annotations

#: name -> optim_args used for the run (``None``: the defaults). All agreed with one process exactly
#: (largest weight difference 0.0) on torch 2.13 CPU when measured.
RUN: dict[str, str | None] = {
    "adafactor": None,
    "adafactor_torch": None,
    "adamw_8bit": None,
    "adamw_torch": None,
    "apollo_adamw": "rank=4,update_proj_gap=2",
    "apollo_mini": "update_proj_gap=2",
    "came_pytorch": None,
    "dion": None,
    "galore_adafactor": "rank=4,update_proj_gap=2",
    "galore_adamw": "rank=4,update_proj_gap=2",
    "lion_32bit": None,
    "muon": None,
    "po_adamw": None,
    "po_madgrad": None,  # keeps a step count in state, keyed by no parameter (checkpointed in the first group)
    "schedule_free_adamw": None,
    "schedule_free_radam": "silent_sgd_phase=false",
    "schedule_free_sgd": None,
    "sgd": "momentum=0.9",
}

#: Names the same launch checks are refused with a ValueError naming FSDP2.
REFUSED: tuple[str, ...] = ("adamw_torch_layerwise", "lomo", "po_lamb")

#: Why a name that was not run is trusted, by its record's ``distributed.fsdp2_math``.
REASONED = {
    "owner": "not run here; reasoned: the library's own step runs on whole tensors, each on one owner rank, "
    "which gives the one-process update exactly for any optimizer that updates each parameter from its "
    "own gradient and state (the run names of this path agree to 0.0)",
    "local": "not run here; reasoned: an elementwise update on each rank's rows",
    "native": "not run here; reasoned: the optimizer shards its whole-matrix math itself",
}

#: What each path does, for ``optim-registry show``.
MATH = {
    "owner": "each whole tensor stepped by the library on one owner rank, shards scattered back",
    "local": "elementwise, on each rank's own rows",
    "native": "momentum on each rank's rows; each whole matrix orthogonalised once on its owner rank",
}

#: What the checkpoint launches (tests/test_fsdp2_checkpoints.py, tests/fsdp2_ckpt_worker.py) did with every name
#: of ``RUN``: through accelerate's own FSDP2 save / load functions, sharded (torch.distributed.checkpoint) and
#: full (rank-0 torch.save); all agreed with the uninterrupted run to 0.0 on torch 2.13 CPU when measured.
CHECKPOINT_RUN = "run here (saving changes nothing; saved on 2 ranks, sharded and full, resumed exactly on 1, 2 and 3)"

#: Why a name that claims FSDP2 checkpoints (``distributed.fsdp2_checkpoint``) but was not run is trusted.
CHECKPOINT_REASONED = {
    "owner": "not run here; reasoned: the owner-rank wrapper lays the library's state out like the parameters and "
    "rebuilds it on the owners of any rank count",
    "local": "not run here; reasoned: the library's state is DTensors sharded like the parameters",
    "native": "not run here; reasoned: the state is DTensors sharded like the parameters",
}
