"""FSDP2 Muon: optimizer step time per rank against one process and against FSDP2 AdamW, and bytes moved.

One ``torchrun`` launch (2 CPU processes, gloo, one thread each) on a Llama built from a config:

- ``single``: rank 0 alone steps the registry's ``muon`` on the unsharded model (the others wait), so
  every Newton-Schulz runs in one process;
- ``fsdp2_muon``: every decoder layer and the root passed to ``fully_shard``; each rank steps its rows,
  each matrix is orthogonalised once on its owner rank (``optim_registry.engines.fsdp2.whole_matrix_map``);
- ``fsdp2_adamw``: the same sharded model with ``adamw_torch`` (elementwise, shard-local): the floor.

Only ``optimizer.step()`` is timed (median of ``--repeat`` after one warm-up, gradients from one backward
kept). Bytes are what this rank's optimizer step sends plus receives through ``gather`` / ``scatter``,
counted on the calls themselves; FSDP2's own all-gathers and reduce-scatter (forward / backward) are not
part of the step and are reported analytically for scale. Each rank's share of the orthogonalisation work
is given twice: planned (the Newton-Schulz multiply-adds of the matrices it owns, from the owner
assignment) and measured (its seconds inside Newton-Schulz during the timed steps).

Newton-Schulz multiplies in ``--matmul-dtype`` (default ``auto``: bfloat16 where the CPU has bfloat16
instructions, float32 where bfloat16 would be emulated, as the registry's Muon picks by default).

    python benchmarks/fsdp2_muon.py            # ~27M parameters, one to two minutes on 2 cores
    python benchmarks/fsdp2_muon.py --quick    # tiny model, checks the script works
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import _common as C

CONFIG = {"vocab_size": 8000, "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 6,
          "num_attention_heads": 8, "num_key_value_heads": 8}
QUICK_CONFIG = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2}


class _Counter:
    """Counts the bytes this rank sends and receives in ``gather`` / ``scatter`` (the optimizer's traffic)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist, self.bytes = dist, 0
        self._gather, self._scatter = dist.gather, dist.scatter
        dist.gather, dist.scatter = self.gather, self.scatter

    def gather(self, tensor: Any, gather_list: Any = None, dst: int = 0, **kw: Any) -> Any:
        rank, world = self.dist.get_rank(), self.dist.get_world_size()
        self.bytes += tensor.nbytes * (world - 1) if rank == dst else tensor.nbytes
        return self._gather(tensor, gather_list, dst=dst, **kw)

    def scatter(self, tensor: Any, scatter_list: Any = None, src: int = 0, **kw: Any) -> Any:
        rank, world = self.dist.get_rank(), self.dist.get_world_size()
        self.bytes += tensor.nbytes * (world - 1) if rank == src else tensor.nbytes
        return self._scatter(tensor, scatter_list, src=src, **kw)


def _model(config: dict[str, Any]) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**config, max_position_embeddings=128, tie_word_embeddings=False, use_cache=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def _time_steps(optimizer: Any, repeat: int, barrier: Any = None) -> list[float]:
    times = []
    for i in range(repeat + 1):
        if barrier:
            barrier()
        start = time.perf_counter()
        optimizer.step()
        if barrier:
            barrier()  # the slowest rank decides a sharded step's time
        if i:
            times.append(time.perf_counter() - start)
    return times


def _ns_flops(shape: Any) -> int:
    """Multiply-adds of one 5-step quintic Newton-Schulz on a matrix (on its wide orientation)."""
    rows, cols = sorted(shape[-2:])
    batch = shape[0] if len(shape) == 3 else 1
    return batch * 5 * (2 * rows * rows * cols + rows**3)


def _planned_share(optimizer: Any, world: int) -> list[float]:
    """Each rank's share of the Newton-Schulz work under the owner assignment the sharded Muon uses."""
    from optim_registry.engines.fsdp2 import assign_owners, layout_of

    matrices = [p for g in optimizer.param_groups if g.get("use_muon") for p in g["params"]]
    layouts = [layout_of(p) for p in matrices]
    work = [0] * world
    for lay, owner in zip(layouts, assign_owners(layouts), strict=True):
        work[owner] += _ns_flops(lay.shape)
    return [w / max(1, sum(work)) for w in work]


class _NSClock:
    """Seconds this rank spends inside the registry's Newton-Schulz (wraps the optimizer's method)."""

    def __init__(self, optimizer: Any) -> None:
        self.seconds, inner = 0.0, optimizer._newton_schulz

        def timed(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - start

        optimizer._newton_schulz = timed


def worker(job: dict[str, Any]) -> None:
    """Runs inside torchrun; rank 0 prints one JSON line with every rank's figures."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from optim_registry import TrainingArguments, create_optimizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    config, repeat, seq = job["config"], job["repeat"], job["seq_len"]
    ids = torch.randint(0, config["vocab_size"], (1, seq), generator=torch.Generator().manual_seed(0))
    world_size = os.environ["WORLD_SIZE"]
    os.environ["WORLD_SIZE"] = "1"  # the arguments as for one process: only the optimizer build is measured
    muon_args = f"matmul_dtype={job['matmul_dtype']}"
    args = {n: TrainingArguments("/tmp/fsdp2_muon_bench", optim=n, learning_rate=1e-3, report_to=[], use_cpu=True,
                                 optim_args=muon_args if n == "muon" else None)
            for n in ("muon", "adamw_torch")}
    os.environ["WORLD_SIZE"] = world_size
    rows: list[dict[str, Any]] = []

    if rank == 0:
        model = _model(config)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer = create_optimizer(args["muon"], model)
        clock = _NSClock(optimizer)
        times = _time_steps(optimizer, repeat)
        rows.append({"run": "single", "optim": "muon", "rank": 0, "step_ms": C.median(times) * 1e3,
                     "bytes_per_step": 0, "params": sum(p.numel() for p in model.parameters()),
                     "ns_ms_per_step": clock.seconds / (repeat + 1) * 1e3, "planned_ns_share": 1.0,
                     "ns_dtype": str(optimizer._ns_dtype(torch.device("cpu"))).removeprefix("torch.")})
        del optimizer
        del model
    dist.barrier()

    counter = _Counter()
    for name in ("muon", "adamw_torch"):
        model = _model(config)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer = create_optimizer(args[name], model)
        clock = _NSClock(optimizer) if name == "muon" else None
        counter.bytes = 0
        times = _time_steps(optimizer, repeat, dist.barrier)
        row = {"run": f"fsdp2_{'muon' if name == 'muon' else 'adamw'}", "optim": name, "rank": rank,
               "step_ms": C.median(times) * 1e3, "bytes_per_step": counter.bytes // (repeat + 1),
               "params": sum(p.numel() for p in model.parameters())}
        if clock is not None:
            row.update(ns_ms_per_step=clock.seconds / (repeat + 1) * 1e3,
                       planned_ns_share=_planned_share(optimizer, world)[rank])
        rows.append(row)
        del model, optimizer
    C.emit_gathered(rows)
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
        return {}
    p = C.parser("fsdp2_muon", __doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5, help="timed steps per run (median reported)")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--nproc", type=int, default=2, help="processes (ranks)")
    p.add_argument("--matmul-dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                   help="Muon's matmul_dtype (auto: bfloat16 where the CPU multiplies it natively, else float32)")
    a = p.parse_args(argv)
    config = dict(QUICK_CONFIG if a.quick else CONFIG)
    if a.quick:
        a.repeat, a.seq_len = 1, 8
    before = C.machine()
    job = {"config": config, "repeat": a.repeat, "seq_len": a.seq_len, "matmul_dtype": a.matmul_dtype}
    rows, error, tail = C.torchrun_worker(__file__, job, a.nproc, C.worker_env(OMP_NUM_THREADS="1"))
    if rows is None:
        rows = [{"run": "fsdp2_muon", "optim": "muon", "rank": None, "step_ms": None, "bytes_per_step": None,
                 "error": error, "stderr_tail": tail}]
        return C.finish("fsdp2_muon", a.out, machine_before=before, rows=rows, notes=["the launch failed"],
                        settings={"config": config, "quick": a.quick})
    params = rows[0]["params"]

    def slowest(run: str) -> float | None:
        values = [r["step_ms"] for r in rows if r["run"] == run]
        return max(values) if values else None

    single, muon, adamw = slowest("single"), slowest("fsdp2_muon"), slowest("fsdp2_adamw")
    muon_bytes = max(r["bytes_per_step"] for r in rows if r["run"] == "fsdp2_muon")
    sharded = sorted((r for r in rows if r["run"] == "fsdp2_muon"), key=lambda r: r["rank"])
    ns_total = sum(r["ns_ms_per_step"] for r in sharded) or 1.0
    for r in sharded:
        r["measured_ns_share"] = r["ns_ms_per_step"] / ns_total
    ns_dtype = next((r["ns_dtype"] for r in rows if r.get("ns_dtype")), None)
    # FSDP2's own traffic per training step and rank (fp32): all-gather in forward and in backward,
    # reduce-scatter of the gradients, each moving (W - 1) / W of the model through every rank.
    fsdp_bytes = 3 * params * 4 * (a.nproc - 1) / a.nproc
    summary = {
        "fsdp2_muon_over_single": C.ratio(muon, single),
        "fsdp2_muon_over_fsdp2_adamw": C.ratio(muon, adamw),
        "muon_step_bytes_per_rank": muon_bytes,
        "fsdp2_own_bytes_per_rank_per_training_step": fsdp_bytes,
        "muon_step_bytes_over_fsdp2_own": C.ratio(muon_bytes, fsdp_bytes),
        "planned_ns_share_per_rank": [r["planned_ns_share"] for r in sharded],
        "measured_ns_share_per_rank": [r["measured_ns_share"] for r in sharded],
        "ns_dtype": ns_dtype,
    }
    print(C.table(rows, [("run", "run", ""), ("optim", "optim", ""), ("rank", "rank", ""),
                         ("step_ms", "step ms", ".1f"), ("ns_ms_per_step", "Newton-Schulz ms", ".1f"),
                         ("planned_ns_share", "NS share planned", ".3f"),
                         ("measured_ns_share", "NS share measured", ".3f"), ("bytes_per_step", "bytes / step", ",")]))
    print()
    print("per-rank share of the orthogonalisation work (planned / measured): "
          + ", ".join(f"rank {r['rank']} {r['planned_ns_share']:.1%} / {r['measured_ns_share']:.1%}" for r in sharded)
          + f"; Newton-Schulz in {ns_dtype} (--matmul-dtype {a.matmul_dtype})")
    print(f"FSDP2 Muon / one-process Muon step: {C.fmt(summary['fsdp2_muon_over_single'], '.2f')}; "
          f"FSDP2 Muon / FSDP2 AdamW: {C.fmt(summary['fsdp2_muon_over_fsdp2_adamw'], '.1f')}; "
          f"Muon step moves {muon_bytes / 2**20:.1f} MiB per rank "
          f"(FSDP2's own forward/backward traffic: {fsdp_bytes / 2**20:.1f} MiB)")
    notes = [f"{params:,} parameters, {a.nproc} processes x 1 thread, gloo on {before.get('nproc')} cores; "
             f"median of {a.repeat} optimizer steps after one warm-up; a sharded step's time is the slowest rank's"]
    return C.finish("fsdp2_muon", a.out, machine_before=before, rows=rows, notes=notes, summary=summary,
                    settings={"config": config, "repeat": a.repeat, "seq_len": a.seq_len, "nproc": a.nproc,
                              "matmul_dtype": a.matmul_dtype, "quick": a.quick})


if __name__ == "__main__":
    main()
