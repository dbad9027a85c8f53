"""The whole Trainer path under FSDP2 on GPUs: train, save, resume, and compare with an uninterrupted run.

Needs CUDA GPUs (accelerate applies FSDP2 only there; on the CPU it trains plain DDP). Without CUDA it refuses
at once (exit code 2) and writes nothing. With N GPUs (1 works) it launches itself with ``torchrun`` over all
of them and, for each optimizer (default ``muon``, ``galore_adamw``, ``adamw_torch``) and each
``fsdp_config["state_dict_type"]`` (``SHARDED_STATE_DICT``: ``optimizer_0/`` through torch.distributed.checkpoint;
``FULL_STATE_DICT``, the Trainer's default: ``optimizer.bin``), runs ``OptimTrainer`` with ``fsdp="full_shard"``,
``fsdp_config={"fsdp_version": 2, ...}``:

- ``uninterrupted``: ``--steps`` steps, a checkpoint every ``--save-every`` steps;
- ``resumed``: a fresh model and Trainer, ``train(resume_from_checkpoint=<the first checkpoint>)`` to the end.

Each row holds the largest difference of the final weights (gathered whole on rank 0) between the two runs,
whether the checkpoint has the registry's manifest and is complete, and how its optimizer state is stored.
Deterministic algorithms are switched on and TF32 off, so the two runs compute alike.

    python benchmarks/fsdp2_trainer_checkpoint.py                    # every visible GPU
    python benchmarks/fsdp2_trainer_checkpoint.py --optims muon --steps 8 --save-every 4
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

import _common as C

OPTIMS = ("muon", "galore_adamw:rank=8,update_proj_gap=2", "adamw_torch")
STATE_DICT_TYPES = ("SHARDED_STATE_DICT", "FULL_STATE_DICT")
NO_CUDA = (
    "benchmarks/fsdp2_trainer_checkpoint.py needs CUDA GPUs: accelerate applies FSDP2 only on GPUs (on the CPU the "
    "Trainer trains plain DDP), and torch.cuda.is_available() is False here. The CPU tests call accelerate's FSDP2 "
    "save / load functions directly under torchrun instead (tests/test_fsdp2_checkpoints.py)."
)


def _full_weights(trainer: Any) -> dict[str, Any] | None:
    """The model's weights, whole, on rank 0 (``None`` elsewhere)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if dist.get_rank() == 0 else None


def worker(job: dict[str, Any]) -> None:
    """Runs inside torchrun, one process per GPU; rank 0 prints one JSON line with the rows."""
    import torch
    import torch.distributed as dist

    from optim_registry import OptimTrainer
    from optim_registry.checkpoints import read_manifest, torn_reason
    from optim_registry.testing import TokenDataset, tiny_model, training_args

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True)
    rows: list[dict[str, Any]] = []
    for item in job["optims"]:
        name, _, optim_args = item.partition(":")
        for kind in job["state_dict_types"]:
            out = os.path.join(job["scratch"], f"{name}-{kind}")

            def trainer(out: str = out, kind: str = kind, name: str = name, optim_args: str = optim_args) -> Any:
                args = training_args(
                    name, out, optim_args or None, use_cpu=False, max_steps=job["steps"], save_strategy="steps",
                    save_steps=job["save_every"], per_device_train_batch_size=4, logging_steps=job["steps"],
                    fsdp="full_shard",
                    fsdp_config={"fsdp_version": 2, "state_dict_type": kind,
                                 "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]},
                )
                model = tiny_model(vocab_size=64, hidden=job["hidden"], layers=2)
                return OptimTrainer(model=model, args=args, train_dataset=TokenDataset(n=256, vocab_size=64))

            row: dict[str, Any] = {"optim": name, "state_dict_type": kind, "gpus": dist.get_world_size()}
            try:
                first = trainer()
                first.train()
                whole = _full_weights(first)
                row["optimizer_class"] = type(getattr(first.optimizer, "optimizer", first.optimizer)).__name__
                checkpoint = os.path.join(out, f"checkpoint-{job['save_every']}")
                if dist.get_rank() == 0:
                    manifest = read_manifest(checkpoint)
                    row["manifest"] = manifest is not None
                    row["torn"] = torn_reason(checkpoint)
                    row["optimizer_state"] = (manifest or {}).get("optimizer_state")
                del first
                second = trainer()
                second.train(resume_from_checkpoint=checkpoint)
                resumed = _full_weights(second)
                if dist.get_rank() == 0:
                    row["resume_max_diff"] = max(
                        (resumed[k].float() - whole[k].float()).abs().max().item() for k in whole
                    )
                    row["exact"] = row["resume_max_diff"] < 1e-6
                del second
            except Exception as exc:  # noqa: BLE001 - reported in the table, the other runs go on
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            dist.barrier()
            if dist.get_rank() == 0:
                shutil.rmtree(out, ignore_errors=True)
            rows.append(row)
    if dist.get_rank() == 0:
        C.emit(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
        return {}
    p = C.parser("fsdp2_trainer_checkpoint", __doc__.splitlines()[0])
    p.add_argument("--optims", default=",".join(OPTIMS), help="comma-separated name[:optim_args] list")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--save-every", type=int, default=3)
    p.add_argument("--hidden", type=int, default=64, help="the Llama's hidden size")
    p.add_argument("--gpus", type=int, default=None, help="processes (default: every visible GPU)")
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        raise SystemExit(2)
    gpus = a.gpus or torch.cuda.device_count()
    if a.quick:
        a.steps, a.save_every = 2, 1
    before = C.machine(gpus=gpus, gpu=torch.cuda.get_device_name(0))
    scratch = tempfile.mkdtemp(prefix="fsdp2_trainer_ckpt-")
    job = {"optims": a.optims.split(","), "state_dict_types": list(STATE_DICT_TYPES), "steps": a.steps,
           "save_every": a.save_every, "hidden": a.hidden, "scratch": scratch}
    # deterministic cuBLAS, as use_deterministic_algorithms wants
    env = C.worker_env(CUBLAS_WORKSPACE_CONFIG=os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8"))
    try:
        rows, error, tail = C.torchrun_worker(__file__, job, gpus, env, tail_lines=20)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    settings = {k: v for k, v in job.items() if k != "scratch"}
    if rows is None:
        rows = [{"optim": None, "error": error, "stderr_tail": tail}]
        print("\n".join(tail), file=sys.stderr)
        return C.finish("fsdp2_trainer_checkpoint", a.out, machine_before=before, rows=rows,
                        notes=["the launch failed"], settings=settings, timing=False)
    print(C.table(rows, [("optim", "optim", ""), ("state_dict_type", "state_dict_type", ""), ("gpus", "GPUs", ""),
                         ("optimizer_class", "optimizer", ""), ("resume_max_diff", "resumed vs uninterrupted", ".2e"),
                         ("exact", "exact", ""), ("manifest", "manifest", ""), ("torn", "torn", ""),
                         ("error", "error", "")]))
    notes = [f"{gpus} GPU(s) ({before.get('gpu')}); {a.steps} steps, resumed from checkpoint-{a.save_every}"]
    return C.finish("fsdp2_trainer_checkpoint", a.out, machine_before=before, rows=rows, notes=notes,
                    settings=settings, timing=False)


if __name__ == "__main__":
    main()
