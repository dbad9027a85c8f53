"""Run under torchrun: FSDP2 checkpoints of each named optimizer through accelerate's own save / load functions.

Usage: torchrun --nproc_per_node N tests/fsdp2_ckpt_worker.py OUT_JSON ROOT PHASE name[:optim_args] ...

PHASE ``save`` (2 ranks here), for each name, every rank on the same batch, a linear schedule with one warm-up
step (the first step runs at lr 0, as the Trainer's does):

* ``uninterrupted``: 3 + 2 steps, the reference;
* ``perturb``: 3 steps, then the checkpoint taken twice exactly as the Trainer takes it under FSDP2 (accelerate's
  ``save_fsdp_model`` / ``save_fsdp_optimizer`` with a SHARDED_STATE_DICT plugin into ``ROOT/name/sharded`` and a
  FULL_STATE_DICT one into ``ROOT/name/full``; the scheduler with ``torch.save``), then 2 more steps: saving must
  change nothing (the weights right after the saves, ``saved_moved``, and the end of the run);
* ``sharded`` / ``full``: a fresh model and a fresh optimizer built with ``create_optimizer``, the model, the
  optimizer and the schedule loaded with accelerate's ``load_fsdp_model`` / ``load_fsdp_optimizer``, 2 steps (a
  schedule-free optimizer is switched to train mode before the sharded load, as a training loop may do first: the
  switch must not hide its state from the load);
* ``dropped`` (the names given as ``name@dropped``): one rank's file of the sharded optimizer checkpoint removed;
  the load must refuse on every rank (no rank may resume, none may hang).

PHASE ``load`` (3 ranks, 1 rank): the ``uninterrupted`` reference on this rank count, then ``sharded`` / ``full``
from the checkpoints the 2-rank launch wrote.

Every difference is the largest over all ranks of each rank's own rows against its rows of the reference
(``torch.distributed.all_reduce(MAX)``). Gradients are reduced in float64 (FSDP2's ``reduce_dtype``): each rank
holds the same gradient g, and the average of N copies of g is then g exactly for any N, so 1, 2 and 3 ranks
train bit for bit alike and a resume on another rank count can be compared with 0 tolerance in mind.
Rank 0 writes one JSON record per name.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fsdp2_worker import VOCAB, one_process_env  # noqa: E402

BEFORE, AFTER = 3, 2
#: Which checkpoints are resumed (measuring an old version one at a time: a failed load may leave ranks apart).
KINDS = os.environ.get("CKPT_WORKER_KINDS", "sharded,full").split(",")
TOTAL = 8  # the schedule's length: it is still decaying when the runs end


def shard(model: Any, mesh: Any) -> Any:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(reduce_dtype=torch.float64)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def plugin(kind: str) -> Any:
    """The fields of accelerate's FullyShardedDataParallelPlugin that its save / load functions read, set as
    its ``set_state_dict_type`` sets them for FSDP2."""
    from torch.distributed.fsdp import (
        FullOptimStateDictConfig,
        FullStateDictConfig,
        ShardedOptimStateDictConfig,
        ShardedStateDictConfig,
        StateDictType,
    )

    if kind == "full":
        return SimpleNamespace(fsdp_version=2, state_dict_type=StateDictType.FULL_STATE_DICT,
                               state_dict_config=FullStateDictConfig(offload_to_cpu=True, rank0_only=True),
                               optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=True, rank0_only=True))
    return SimpleNamespace(fsdp_version=2, state_dict_type=StateDictType.SHARDED_STATE_DICT,
                           state_dict_config=ShardedStateDictConfig(offload_to_cpu=True),
                           optim_state_dict_config=ShardedOptimStateDictConfig(offload_to_cpu=True))


def accelerator() -> Any:
    rank, world = dist.get_rank(), dist.get_world_size()
    return SimpleNamespace(process_index=rank, num_processes=world, is_main_process=rank == 0, is_fsdp2=True,
                           wait_for_everyone=dist.barrier)


class Run:
    """One named optimizer on a freshly sharded tiny Llama, with its schedule."""

    def __init__(self, name: str, optim_args: str | None, mesh: Any) -> None:
        from transformers import get_linear_schedule_with_warmup

        from optim_registry import create_optimizer
        from optim_registry.checkpoints import group_settings
        from optim_registry.registry import optimizers
        from optim_registry.testing import tiny_model, training_args

        with one_process_env():
            args = training_args(name, "/tmp/unused", optim_args or None)
        self.args = args
        self.protocol = optimizers.get(name).protocol
        self.model = shard(tiny_model(vocab_size=VOCAB), mesh)
        self.optimizer = create_optimizer(args, self.model)
        # What accelerate's AcceleratedOptimizer does when the Trainer prepares it (device_placement=True): the
        # fresh optimizer's state dict loaded back (moved to the device: a no-op here).
        self.optimizer.load_state_dict(self.optimizer.state_dict())
        self.built = group_settings(self.optimizer)  # what the Trainer records as built, before the schedule
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, 1, TOTAL)

    def train(self, batch: dict[str, torch.Tensor], steps: int) -> None:
        for _ in range(steps):
            if self.protocol == "train_eval":
                self.optimizer.train()  # what the Trainer's training_step calls
            self.model(**batch).loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    def rows(self) -> dict[str, torch.Tensor]:
        """This rank's rows of every parameter."""
        return {n: (p.to_local() if hasattr(p, "to_local") else p).detach().clone()
                for n, p in self.model.named_parameters()}

    def save(self, folder: Path, kind: str, step: int) -> None:
        """What the Trainer's ``_save_checkpoint`` writes under FSDP2, the registry's manifest last (rank 0)."""
        from accelerate.utils.fsdp_utils import save_fsdp_model, save_fsdp_optimizer

        from optim_registry.checkpoints import write_manifest

        folder.mkdir(parents=True, exist_ok=True)
        save_fsdp_model(plugin(kind), accelerator(), self.model, str(folder))
        save_fsdp_optimizer(plugin(kind), accelerator(), self.optimizer, self.model, str(folder))
        if dist.get_rank() == 0:
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
            write_manifest(self.trainer_view(step), str(folder))
        dist.barrier()

    def trainer_view(self, step: int) -> Any:
        """The attributes of a Trainer that the manifest reads (the arguments as this rank count's)."""
        args = self.args

        class Args:
            world_size = dist.get_world_size()

            def __getattr__(self, key: str) -> Any:
                return getattr(args, key)

        return SimpleNamespace(args=Args(), optimizer=self.optimizer, model=self.model, lr_scheduler=self.scheduler,
                               state=SimpleNamespace(global_step=step, max_steps=TOTAL),
                               _registry_built_settings=self.built)

    def load(self, folder: Path, kind: str, checked: bool = True) -> None:
        """What the Trainer does on resume: the registry's checks (every rank), then accelerate's loads."""
        from accelerate.utils.fsdp_utils import load_fsdp_model, load_fsdp_optimizer

        from optim_registry.checkpoints import check_complete, read_manifest, verify_checksums

        if checked:
            check_complete(str(folder))
            manifest = read_manifest(str(folder))
            if manifest is not None:
                verify_checksums(str(folder), manifest)
        load_fsdp_model(plugin(kind), accelerator(), self.model, str(folder))
        load_fsdp_optimizer(plugin(kind), accelerator(), self.optimizer, self.model, str(folder))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest difference of any rank's rows (every rank takes part)."""
    local = max(((a[n].double() - b[n].double()).abs().max().item() if a[n].numel() else 0.0) for n in a)
    out = torch.tensor([local], dtype=torch.float64)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return float(out.item())


def moved(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor]) -> int:
    """How many parameters changed on some rank."""
    changed = torch.tensor([[float(not torch.equal(start[n], end[n])) for n in start]])
    dist.all_reduce(changed, op=dist.ReduceOp.MAX)
    return int(changed.sum().item())


def attempt(results: dict[str, Any], key: str, fn: Any, *args: Any) -> bool:
    """Whether ``fn(*args)`` returned; its exception is recorded under ``key``."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        fn(*args)
        return True
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - recorded, the test reports it
        results[key] = f"{type(exc).__name__}: {exc}"[:1500]
        if os.environ.get("CKPT_WORKER_TRACE"):
            traceback.print_exc()
        return False


def main() -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from optim_registry.testing import TokenDataset

    torch.set_num_threads(1)
    out, root, phase, specs = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
    # A refused load must not leave a rank waiting for the others for half an hour.
    dist.init_process_group("gloo", timeout=timedelta(seconds=float(os.environ.get("CKPT_WORKER_TIMEOUT", 120))))
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    data = TokenDataset(vocab_size=VOCAB).data[:4]
    batch = {"input_ids": data, "labels": data}
    results: dict[str, Any] = {}
    for item in specs:
        label, _, optim_args = item.partition(":")
        name, _, control = label.partition("@")
        r: dict[str, Any] = {"world": world}
        results[label] = r
        started = time.perf_counter()
        folder = root / name
        try:
            if control == "dropped":
                dropped(name, optim_args, mesh, folder, r)
                continue
            ref = Run(name, optim_args, mesh)
            start = ref.rows()
            r["class"] = type(ref.optimizer).__name__
            ref.train(batch, BEFORE + AFTER)
            reference = ref.rows()
            r["moved"], r["params"] = moved(start, reference), len(start)
            if phase == "save":
                run = Run(name, optim_args, mesh)
                run.train(batch, BEFORE)
                before_save = run.rows()
                # torch's surface DCP relies on: ``state`` holds every trained parameter, on every rank.
                held = torch.tensor([float(len(run.optimizer.state))])
                dist.all_reduce(held, op=dist.ReduceOp.MIN)
                r["state_entries_min_over_ranks"] = int(held.item())
                t0 = time.perf_counter()
                for kind in ("sharded", "full"):
                    attempt(r, f"save_{kind}_error", run.save, folder / kind, kind, BEFORE)
                r["save_seconds"] = time.perf_counter() - t0
                r["saved_moved"] = largest_difference(run.rows(), before_save)
                run.train(batch, AFTER)
                r["perturb"] = largest_difference(run.rows(), reference)
            for kind in KINDS:
                resumed = Run(name, optim_args, mesh)
                if kind == "sharded" and resumed.protocol == "train_eval":
                    resumed.optimizer.train()
                if attempt(r, f"{kind}_error", resumed.load, folder / kind, kind):
                    resumed.train(batch, AFTER)
                    r[kind] = largest_difference(resumed.rows(), reference)
                dist.barrier()
        except Exception as exc:  # noqa: BLE001
            r["error"] = f"{type(exc).__name__}: {exc}"[:1500]
            if os.environ.get("CKPT_WORKER_TRACE"):
                traceback.print_exc()
        r["seconds"] = time.perf_counter() - started
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


def dropped(name: str, optim_args: str, mesh: Any, folder: Path, r: dict[str, Any]) -> None:
    """The negative control: the sharded checkpoint without the last rank's optimizer file must not load.

    Three ways: with the manifest (the registry's resume check), without it (the check of the DCP folder
    against its ``.metadata``), and straight into accelerate's functions (DCP's own error). Each must be
    refused on every rank, none resumed.
    """
    torn = folder.parent / f"{name}@dropped"
    if dist.get_rank() == 0:
        shutil.rmtree(torn, ignore_errors=True)
        shutil.copytree(folder / "sharded", torn)
        victims = sorted((torn / "optimizer_0").glob("*.distcp"))
        r["removed"] = victims[-1].name
        victims[-1].unlink()
    dist.barrier()
    for how in ("manifest", "metadata", "unchecked"):
        if how == "metadata" and dist.get_rank() == 0:
            (torn / "optim_registry.json").unlink()
        dist.barrier()
        run = Run(name, optim_args, mesh)
        flags = torch.tensor([float(not attempt(r, f"{how}_error", run.load, torn, "sharded", how != "unchecked"))])
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        r[f"{how}_refused_on_every_rank"] = bool(flags.item())


if __name__ == "__main__":
    main()
