"""FSDP2 checkpoint cost: bytes each rank writes and seconds per save, per optimizer, next to adamw_torch.

One ``torchrun`` launch (2 CPU processes by default, gloo, one thread each) on a Llama built from a config, every
decoder layer and the root passed to ``fully_shard``. For each optimizer: 2 training steps, then the optimizer
state saved the way the Trainer saves it under FSDP2, with accelerate's own ``save_fsdp_optimizer``:

- ``sharded`` (SHARDED_STATE_DICT, the default): ``get_optimizer_state_dict`` + ``dcp.save`` into
  ``optimizer_0/``; bytes = this rank's ``__<rank>_0.distcp`` (rank 0 also writes ``.metadata``);
- ``full`` (FULL_STATE_DICT): the state gathered to rank 0 (``cpu_offload``) and ``torch.save``d as
  ``optimizer.bin``; only rank 0 writes.

Seconds are the median of ``--repeat`` saves (each into a fresh folder) of the slowest rank; ``state_dict_s`` is
``get_optimizer_state_dict`` alone (what laying the state out costs, without the disk). Ratios are against
``adamw_torch`` on the same model in the same launch.

    python benchmarks/fsdp2_checkpoint_cost.py            # ~13M parameters, a few minutes on 2 cores
    python benchmarks/fsdp2_checkpoint_cost.py --quick    # tiny model, checks the script works
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import _common as C

CONFIG = {"vocab_size": 8000, "hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 4,
          "num_attention_heads": 6, "num_key_value_heads": 6}
QUICK_CONFIG = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2}
OPTIMS = ("adamw_torch:", "muon:", "galore_adamw:rank=32,update_proj_gap=50", "apollo_adamw:rank=32",
          "dion:", "adafactor:", "lion_32bit:", "adamw_8bit:", "schedule_free_adamw:")
QUICK_OPTIMS = ("adamw_torch:", "muon:", "galore_adamw:rank=4")


def _model(config: dict[str, Any]) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**config, max_position_embeddings=128, tie_word_embeddings=False))


def _plugin(full: bool) -> Any:
    from torch.distributed.fsdp import (
        FullOptimStateDictConfig,
        FullStateDictConfig,
        ShardedOptimStateDictConfig,
        ShardedStateDictConfig,
        StateDictType,
    )

    # The fields accelerate's FullyShardedDataParallelPlugin sets for FSDP2 (set_state_dict_type).
    if full:
        return SimpleNamespace(fsdp_version=2, state_dict_type=StateDictType.FULL_STATE_DICT,
                               state_dict_config=FullStateDictConfig(offload_to_cpu=True, rank0_only=True),
                               optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=True, rank0_only=True))
    return SimpleNamespace(fsdp_version=2, state_dict_type=StateDictType.SHARDED_STATE_DICT,
                           state_dict_config=ShardedStateDictConfig(offload_to_cpu=True),
                           optim_state_dict_config=ShardedOptimStateDictConfig(offload_to_cpu=True))


def worker(job: dict[str, Any]) -> None:
    """Runs inside torchrun; rank 0 prints one JSON line with every rank's figures."""
    import torch
    import torch.distributed as dist
    from accelerate.utils.fsdp_utils import save_fsdp_optimizer
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from optim_registry import TrainingArguments, create_optimizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    config, repeat = job["config"], job["repeat"]
    ids = torch.randint(0, config["vocab_size"], (2, job["seq_len"]), generator=torch.Generator().manual_seed(0))
    accelerator = SimpleNamespace(process_index=rank, num_processes=world, wait_for_everyone=dist.barrier)
    root = Path(job["scratch"])
    rows: list[dict[str, Any]] = []
    for item in job["optims"]:
        name, _, optim_args = item.partition(":")
        saved_world = os.environ["WORLD_SIZE"]
        os.environ["WORLD_SIZE"] = "1"  # the arguments as for one process: only the optimizer is measured
        args = TrainingArguments("/tmp/fsdp2_ckpt_bench", optim=name, optim_args=optim_args or None,
                                 learning_rate=1e-3, report_to=[], use_cpu=True,
                                 optim_target_modules=[r".*attn.*", r".*mlp.*"] if "galore" in name or "apollo" in name
                                 else None)
        os.environ["WORLD_SIZE"] = saved_world
        model = _model(config)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = create_optimizer(args, model)
        for _ in range(2):
            if hasattr(optimizer, "train") and "schedule_free" in name:
                optimizer.train()
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        row: dict[str, Any] = {"optim": name, "rank": rank, "class": type(optimizer).__name__}
        layout = []
        for _ in range(repeat):
            dist.barrier()
            t0 = time.perf_counter()
            get_optimizer_state_dict(model, optimizer, options=StateDictOptions(cpu_offload=True))
            layout.append(time.perf_counter() - t0)
        row["state_dict_s"] = C.median(layout)
        for kind in ("sharded", "full"):
            seconds = []
            for k in range(repeat):
                folder = root / f"{name}-{kind}-{k}"
                dist.barrier()
                t0 = time.perf_counter()
                save_fsdp_optimizer(_plugin(kind == "full"), accelerator, optimizer, model, str(folder))
                seconds.append(time.perf_counter() - t0)
            dist.barrier()
            folder = root / f"{name}-{kind}-0"
            if kind == "sharded":
                mine = [folder / "optimizer_0" / f"__{rank}_0.distcp"] + (
                    [folder / "optimizer_0" / ".metadata"] if rank == 0 else [])
            else:
                mine = [folder / "optimizer.bin"] if rank == 0 else []
            row[f"{kind}_s"] = C.median(seconds)
            row[f"{kind}_bytes"] = sum(p.stat().st_size for p in mine if p.exists())
            dist.barrier()
            if rank == 0:
                for k in range(repeat):
                    shutil.rmtree(root / f"{name}-{kind}-{k}", ignore_errors=True)
        row["params"] = sum(p.numel() for p in model.parameters())
        rows.append(row)
        del model, optimizer
    C.emit_gathered(rows)
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
        return {}
    p = C.parser("fsdp2_checkpoint_cost", __doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="saves per optimizer and kind (median reported)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--nproc", type=int, default=2, help="processes (ranks)")
    p.add_argument("--optims", default=None, help="comma-separated name[:optim_args] list (default: a mix of families)")
    a = p.parse_args(argv)
    config = dict(QUICK_CONFIG if a.quick else CONFIG)
    optims = a.optims.split(",") if a.optims else list(QUICK_OPTIMS if a.quick else OPTIMS)
    optims = [o if ":" in o else o + ":" for o in optims]
    if a.quick:
        a.repeat, a.seq_len = 1, 8
    before = C.machine()
    scratch = tempfile.mkdtemp(prefix="fsdp2_ckpt_cost-")
    job = {"config": config, "repeat": a.repeat, "seq_len": a.seq_len, "optims": optims, "scratch": scratch}
    try:
        per_rank, error, tail = C.torchrun_worker(__file__, job, a.nproc, C.worker_env(OMP_NUM_THREADS="1"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    settings = {"config": config, "repeat": a.repeat, "seq_len": a.seq_len, "nproc": a.nproc, "optims": optims,
                "quick": a.quick}
    if per_rank is None:
        rows = [{"optim": None, "error": error, "stderr_tail": tail}]
        return C.finish("fsdp2_checkpoint_cost", a.out, machine_before=before, rows=rows,
                        notes=["the launch failed"], settings=settings)
    rows = []
    for name in dict.fromkeys(r["optim"] for r in per_rank):
        ranks = [r for r in per_rank if r["optim"] == name]
        rows.append({
            "optim": name, "class": ranks[0]["class"], "params": ranks[0]["params"],
            "sharded_bytes_per_rank": [r["sharded_bytes"] for r in sorted(ranks, key=lambda r: r["rank"])],
            "sharded_bytes_total": sum(r["sharded_bytes"] for r in ranks),
            "full_bytes_rank0": sum(r["full_bytes"] for r in ranks),
            "sharded_s": max(r["sharded_s"] for r in ranks), "full_s": max(r["full_s"] for r in ranks),
            "state_dict_s": max(r["state_dict_s"] for r in ranks),
        })
    base = next((r for r in rows if r["optim"] == "adamw_torch"), None)
    for r in rows:
        for key in ("sharded_bytes_total", "full_bytes_rank0", "sharded_s", "full_s", "state_dict_s"):
            r[f"{key}_vs_adamw"] = C.ratio(r[key], base[key]) if base else None
    print(C.table(rows, [("optim", "optim", ""), ("sharded_bytes_per_rank", "sharded bytes / rank", ""),
                         ("sharded_bytes_total_vs_adamw", "x adamw", ".2f"), ("sharded_s", "sharded s", ".3f"),
                         ("sharded_s_vs_adamw", "x adamw", ".2f"), ("full_bytes_rank0", "full bytes (rank 0)", ","),
                         ("full_s", "full s", ".3f"), ("full_s_vs_adamw", "x adamw", ".2f"),
                         ("state_dict_s", "state_dict s", ".3f")]))
    notes = [f"{rows[0]['params']:,} parameters, {a.nproc} processes x 1 thread, gloo on {before.get('nproc')} cores; "
             f"median of {a.repeat} saves, the slowest rank's; bytes are the files each rank writes"]
    return C.finish("fsdp2_checkpoint_cost", a.out, machine_before=before, rows=rows, notes=notes, settings=settings)


if __name__ == "__main__":
    main()
