"""Run under torchrun: trains each named optimizer with OptimTrainer on 2 CPU processes (gloo).

Usage: torchrun --nproc_per_node 2 tests/ddp_worker.py OUT_DIR name[:optim_args] ...
Each rank writes OUT_DIR/<name>/rank<r>.pt with its final parameters; a name refused when the
arguments are created is recorded instead.
"""

from __future__ import annotations

import json
import os
import sys

import torch


def main() -> None:
    from optim_registry import OptimTrainer
    from optim_registry.testing import TokenDataset, tiny_model, training_args

    torch.set_num_threads(1)
    out, specs = sys.argv[1], sys.argv[2:]
    rank = int(os.environ["RANK"])
    for item in specs:
        name, _, optim_args = item.partition(":")
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        try:
            args = training_args(name, folder, optim_args or None, max_steps=3, ddp_backend="gloo",
                                 per_device_train_batch_size=4, learning_rate=1e-2)
        except ValueError as exc:
            with open(os.path.join(folder, f"refused{rank}.json"), "w") as f:
                json.dump({"error": str(exc)}, f)
            continue
        model = tiny_model()
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer = OptimTrainer(model=model, args=args, train_dataset=TokenDataset())
        trainer.train()
        final = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        torch.save({"start": start, "final": final, "world": args.world_size}, os.path.join(folder, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
