"""DeepSpeed ZeRO-2 training step time for adamw_torch and muon next to DDP, through OptimTrainer.

Two ``torchrun`` launches (2 CPU processes, gloo, one thread each) on the same Llama built from a config, every
rank on the same batch: one with DDP (no DeepSpeed config), one with DeepSpeed ZeRO-2 (``deepspeed=`` config in
the TrainingArguments). In each, ``adamw_torch`` and ``muon`` train ``--repeat`` steps after ``--warmup`` steps;
a callback times each whole training step (forward, backward, gradient reduction, optimizer step) from
``on_step_begin`` to ``on_step_end``. Under ZeRO ``muon`` is DeepSpeed's own Muon with the registry's routing;
under DDP the registry's ``MuonWithAdamW``. A step's time is the slowest rank's median.

DeepSpeed's Muon is wrapped in ``torch.compile``; on the CPU the compile takes minutes, so the launches run
with ``TORCHDYNAMO_DISABLE=1`` (eager, as the registry's Muon runs). The shared-memory op DeepSpeed compiles
for the CPU on first use is skipped (gloo does the communication).

    python benchmarks/zero_step.py            # ~8M parameters, a few minutes
    python benchmarks/zero_step.py --quick    # tiny model, checks the script works
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import _common as C

CONFIG = {"vocab_size": 4000, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
          "num_attention_heads": 8, "num_key_value_heads": 4}
QUICK_CONFIG = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2}
NAMES = ("adamw_torch", "muon")


def worker(job: dict[str, Any]) -> None:
    """Runs inside torchrun; rank 0 prints one JSON line with every rank's figures."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

    from optim_registry import OptimTrainer, TrainingArguments

    if job["backend"] == "zero2":
        import deepspeed.comm.torch  # noqa: F401

        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    config, batch, seq = job["config"], job["batch"], job["seq_len"]
    steps = job["warmup"] + job["repeat"]
    ids = torch.randint(0, config["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(0))

    class Same(torch.utils.data.Dataset):
        """Every rank's every batch is ``ids``."""

        def __len__(self) -> int:
            return batch * world * steps

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": ids[i % batch], "labels": ids[i % batch]}

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self.start)

    rows = []
    for name in NAMES:
        kw: dict[str, Any] = {}
        if job["backend"] == "zero2":
            kw["deepspeed"] = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto",
                               "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
                               "gradient_clipping": "auto"}
        args = TrainingArguments(
            f"/tmp/zero_step_bench_{job['backend']}_{name}", optim=name, learning_rate=1e-3, max_steps=steps,
            per_device_train_batch_size=batch, max_grad_norm=0.0, lr_scheduler_type="constant", save_strategy="no",
            report_to=[], use_cpu=True, ddp_backend="gloo", disable_tqdm=True, logging_strategy="no", **kw)
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**config, max_position_embeddings=128, tie_word_embeddings=False,
                                             use_cache=False))
        timer = Timer()
        OptimTrainer(model=model, args=args, train_dataset=Same(), callbacks=[timer]).train()
        rows.append({"backend": job["backend"], "optim": name, "rank": rank,
                     "step_ms": C.median(timer.times[job["warmup"]:]) * 1e3,
                     "params": sum(p.numel() for p in model.parameters())})
    C.emit_gathered(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
        return {}
    p = C.parser("zero_step", __doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=10, help="timed training steps per run (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch", type=int, default=4, help="sequences per rank and step")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--nproc", type=int, default=2, help="processes (ranks)")
    a = p.parse_args(argv)
    config = dict(QUICK_CONFIG if a.quick else CONFIG)
    if a.quick:
        a.repeat, a.warmup, a.seq_len = 2, 1, 8
    before = C.machine()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for backend in ("ddp", "zero2"):
        job = {"backend": backend, "config": config, "repeat": a.repeat, "warmup": a.warmup, "batch": a.batch,
               "seq_len": a.seq_len}
        got, error, _ = C.torchrun_worker(__file__, job, a.nproc,
                                          C.worker_env(OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1"))
        if got is None:
            rows += [{"backend": backend, "optim": n, "rank": None, "step_ms": None, "error": error} for n in NAMES]
            notes.append(f"the {backend} launch failed: {error}")
        else:
            rows += got

    def slowest(backend: str, name: str) -> float | None:
        values = [r["step_ms"] for r in rows if r["backend"] == backend and r["optim"] == name and r["step_ms"]]
        return max(values) if values else None

    table = []
    summary: dict[str, Any] = {}
    for name in NAMES:
        ddp, zero2 = slowest("ddp", name), slowest("zero2", name)
        summary[f"{name}_zero2_over_ddp"] = C.ratio(zero2, ddp)
        table.append({"optim": name, "ddp_ms": ddp, "zero2_ms": zero2, "ratio": summary[f"{name}_zero2_over_ddp"]})
    print(C.table(table, [("optim", "optim", ""), ("ddp_ms", "DDP step ms", ".1f"),
                          ("zero2_ms", "ZeRO-2 step ms", ".1f"), ("ratio", "ZeRO-2 / DDP", ".2f")]))
    params = next((r["params"] for r in rows if r.get("params")), None)
    notes.append(f"{params:,} parameters, {a.nproc} processes x 1 thread, gloo on {before.get('nproc')} cores; "
                 f"batch {a.batch} x {a.seq_len} tokens per rank; median of {a.repeat} training steps after "
                 f"{a.warmup}; a step's time is the slowest rank's; TORCHDYNAMO_DISABLE=1")
    return C.finish("zero_step", a.out, machine_before=before, rows=rows, notes=notes, summary=summary,
                    settings={"config": config, "repeat": a.repeat, "warmup": a.warmup, "batch": a.batch,
                              "seq_len": a.seq_len, "nproc": a.nproc, "quick": a.quick})


if __name__ == "__main__":
    main()
