"""Run under torchrun: each named optimizer on an FSDP2-sharded tiny Llama against one process on the same batch.

Usage: torchrun --nproc_per_node 2 tests/fsdp2_worker.py OUT_JSON name[:optim_args] ... [muon@shardwise]

Every rank trains on the same batch, so FSDP2's averaged gradient equals one process's bit for bit and
any difference in the weights comes from the optimizer. For each name rank 0 first steps an unsharded
copy (same seed, same batch) with the same optimizer, then both ranks step the sharded model built with
``optim_registry.create_optimizer`` (3 steps, a state_dict round trip, 1 more step from the loaded
state); rank 0 writes one JSON record per name: ``ok`` with the largest
weight difference, ``refused`` with the ValueError's message, or ``error`` with any other exception.
``name@hsdp`` shards over a 2-D mesh (refused); ``name@trainer`` builds through ``OptimTrainer.create_optimizer`` instead; ``muon@shardwise`` (last: it
patches the sharded path) is the negative control, Newton-Schulz on shards.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

STEPS = 3
#: An odd vocabulary: the embedding and LM head split 17 / 16 rows, so uneven shards are exercised.
VOCAB = 33


@contextlib.contextmanager
def one_process_env() -> Iterator[None]:
    """Arguments created as for one process: what is tested here is create_optimizer's decision."""
    saved = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        if saved is not None:
            os.environ["WORLD_SIZE"] = saved


def shard(model: Any, mesh: Any) -> Any:
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def train(model: Any, optimizer: Any, batch: dict[str, torch.Tensor], protocol: str, steps: int = STEPS) -> None:
    if protocol == "train_eval":
        optimizer.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if protocol == "train_eval":
        optimizer.eval()  # schedule-free: the weights one evaluates (and saves)


def main() -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from optim_registry import create_optimizer
    from optim_registry.registry import optimizers
    from optim_registry.testing import TokenDataset, state_round_trip, tiny_model, training_args

    torch.set_num_threads(1)
    out, specs = sys.argv[1], sys.argv[2:]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    data = TokenDataset().data[:4]
    batch = {"input_ids": data, "labels": data}
    results: dict[str, Any] = {}
    for item in specs:
        name, _, optim_args = item.partition(":")
        label = name
        name, _, control = name.partition("@")
        started = time.perf_counter()
        spec = optimizers.get(name)
        with one_process_env():
            args = training_args(name, "/tmp/unused", optim_args or None)
        reference = None
        if rank == 0:
            model = tiny_model(vocab_size=VOCAB)
            try:
                optimizer = create_optimizer(args, model)
                train(model, optimizer, batch, spec.protocol)
                train(model, optimizer, batch, spec.protocol, steps=1)
                reference = {n: p.detach().clone() for n, p in model.named_parameters()}
            except Exception as exc:  # noqa: BLE001 - recorded, the test reports it
                reference = f"{type(exc).__name__}: {exc}"
        if control == "shardwise":
            # The negative control: Newton-Schulz on each rank's rows, as a naive port would do.
            import optim_registry.engines.fsdp2 as sharded

            sharded.whole_matrix_map = lambda ts, fn, out_dtype=None: [fn(t.to_local()) for t in ts]
        # HSDP (a 2-D mesh: replicated x sharded) is a layout the registry's FSDP2 support refuses by name.
        layout = (init_device_mesh("cpu", (1, dist.get_world_size()), mesh_dim_names=("replicate", "shard"))
                  if control == "hsdp" else mesh)
        model = shard(tiny_model(vocab_size=VOCAB), layout)
        start = {n: p.full_tensor().clone() for n, p in model.named_parameters()}
        try:
            if control == "trainer":
                # The Trainer's own path: its create_optimizer on the sharded model (accelerate would
                # shard only on a GPU; the optimizer decision is the same).
                from optim_registry import OptimTrainer

                with one_process_env():
                    trainer_args = training_args(name, "/tmp/unused", optim_args or None, ddp_backend="gloo")
                optimizer = OptimTrainer(model=model, args=trainer_args, train_dataset=TokenDataset()).create_optimizer()
            else:
                optimizer = create_optimizer(args, model)
        except ValueError as exc:
            results[label] = {"status": "refused", "error": str(exc)}
            continue
        except Exception as exc:  # noqa: BLE001
            results[label] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            continue
        try:
            train(model, optimizer, batch, spec.protocol)
        except Exception as exc:  # noqa: BLE001
            results[label] = {"status": "error", "error": f"{type(exc).__name__} in step: {exc}"}
            continue
        # Each rank's part of the state through torch.save / torch.load(weights_only=True) and back, then
        # one more step from the loaded state: a resume must continue exactly.
        round_trip, why = state_round_trip(optimizer)
        train(model, optimizer, batch, spec.protocol, steps=1)
        final = {n: p.full_tensor() for n, p in model.named_parameters()}
        if rank == 0:
            if isinstance(reference, str):
                results[label] = {"status": "error", "error": "one process: " + reference}
                continue
            diff = max((final[n] - reference[n]).abs().max().item() for n in final)
            moved = sum(not torch.equal(final[n], start[n]) for n in final)
            results[label] = {"status": "ok", "max_diff": diff, "moved": moved, "params": len(final),
                             "wrapped": type(optimizer).__name__, "seconds": time.perf_counter() - started,
                             "round_trip": round_trip, "round_trip_error": why}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
