"""Peak resident memory of a layer-wise run against the whole-model run of the same optimizer.

A ~134M-parameter Llama built from a config (random weights, fp32) trains a few steps, each run in a fresh
Python process that reports its peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and its RSS just
before training:

- ``stock``: ``transformers.Trainer``, ``optim="adamw_torch"`` (reference: the registry should add nothing)
- ``ours``: ``OptimTrainer`` with ``adamw_torch``, and with ``galore_adamw`` (``optim_target_modules``
  attention and MLP)
- ``ours_layerwise``: ``OptimTrainer`` with their twins ``adamw_torch_layerwise`` and ``galore_adamw_layerwise``
  (each parameter stepped in backward and its gradient freed, so the whole model's gradients never exist at once)

Same arguments everywhere (``max_grad_norm=0``, which layer-wise stepping requires). What layer-wise stepping
can save is every gradient but the largest one (fp32: 4 bytes per parameter, less the embedding's or the
head's); each pair prints ``saved / could be saved`` from the median of ``--repeat`` paired runs, with the
spread. The runs of one repeat go one after the other (order reversed every other repeat), so other
processes on a shared machine do not add to a peak.

    python benchmarks/layerwise_memory.py            # ~134M parameters, 3 steps, 3 repeats: ~5 minutes
    python benchmarks/layerwise_memory.py --quick    # tiny model, checks the script works
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import _common as C

CONFIG = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
          "num_attention_heads": 12, "num_key_value_heads": 12}
QUICK_CONFIG = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2}
RUNS = (("stock", "adamw_torch"), ("ours", "adamw_torch"), ("ours_layerwise", "adamw_torch_layerwise"),
        ("ours", "galore_adamw"), ("ours_layerwise", "galore_adamw_layerwise"))
#: (whole-model run, its layer-wise twin): the pairs whose difference is the saving.
PAIRS = ((("ours", "adamw_torch"), ("ours_layerwise", "adamw_torch_layerwise")),
         (("ours", "galore_adamw"), ("ours_layerwise", "galore_adamw_layerwise")))
TARGET_MODULES = ["self_attn", "mlp"]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(side: str, name: str, config: dict[str, Any], steps: int, seq_len: int, batch: int,
           trim_mib: float | None = None) -> dict[str, Any]:
    """One training run in this (fresh) process; returns its memory figures and its CPU time per step."""
    import contextlib
    import io
    import resource
    import statistics
    import tempfile
    import time

    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    import optim_registry
    import optim_registry.engines.layerwise.engine
    from optim_registry.testing import TokenDataset

    if trim_mib is not None:  # --trim-every-mib: the engine's hand-back of freed gradient memory (0: off)
        optim_registry.engines.layerwise.engine.TRIM_EVERY_BYTES = int(trim_mib * 2**20) or None

    class StepClock(transformers.TrainerCallback):
        """CPU seconds of each training step (process time: less sensitive to other processes than wall time)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self._start = time.process_time()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.seconds.append(time.process_time() - self._start)

    clock = StepClock()

    cfg = LlamaConfig(**config, max_position_embeddings=max(128, seq_len), tie_word_embeddings=False, use_cache=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in trainable)
    grad_bytes = [p.numel() * p.element_size() for p in trainable]
    dataset = TokenDataset(n=batch * steps, seq_len=seq_len, vocab_size=config["vocab_size"])
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = dict(output_dir=tmp, optim=name, max_steps=steps, per_device_train_batch_size=batch,
                      learning_rate=1e-4, max_grad_norm=0.0, save_strategy="no", logging_strategy="no",
                      report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
        if name.startswith("galore"):
            kwargs["optim_target_modules"] = TARGET_MODULES
        if side == "stock":
            trainer: Any = transformers.Trainer(model=model, args=transformers.TrainingArguments(**kwargs),
                                                train_dataset=dataset, callbacks=[clock])
        else:
            trainer = optim_registry.OptimTrainer(model=model, args=optim_registry.TrainingArguments(**kwargs),
                                                  train_dataset=dataset, callbacks=[clock])
        rss_before = _rss_bytes()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with C.Timer() as t, contextlib.redirect_stdout(io.StringIO()), C.quiet():
            out = trainer.train()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "side": side, "optim": name, "params": n_params, "optimizer": type(trainer.optimizer).__name__,
        "rss_before_train_bytes": rss_before, "peak_before_train_bytes": peak_before, "peak_rss_bytes": peak,
        "train_seconds": t.seconds, "training_loss": float(out.training_loss),
        # The first step builds the optimizer state: left out.
        "step_cpu_ms": statistics.median(clock.seconds[1:] or clock.seconds) * 1e3,
        # Layer-wise stepping frees every gradient as soon as it is used: all but the largest can be saved.
        "gradient_bytes": sum(grad_bytes), "saveable_bytes": sum(grad_bytes) - max(grad_bytes),
    }


def spawn(side: str, name: str, config: dict[str, Any], steps: int, seq_len: int, batch: int,
          trim_mib: float | None = None) -> subprocess.Popen:
    spec = json.dumps({"side": side, "name": name, "config": config, "steps": steps, "seq_len": seq_len,
                       "batch": batch, "trim_mib": trim_mib})
    return subprocess.Popen([sys.executable, __file__, "--worker", spec], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(C.REPO), env=C.worker_env())


def collect(proc: subprocess.Popen, side: str) -> dict[str, Any]:
    stdout, stderr = proc.communicate(timeout=1800)
    result = C.read_result(stdout)
    if proc.returncode != 0 or result is None:
        lines = stderr.strip().splitlines() or [""]
        return {"side": side, "error": f"exit {proc.returncode}: {lines[-1][:300]}", "stderr_tail": lines[-15:]}
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median peak RSS (all peaks kept), or the first failure."""
    ok = sorted((r for r in runs if "peak_rss_bytes" in r), key=lambda r: r["peak_rss_bytes"])
    if len(ok) < len(runs) or not ok:
        return next(r for r in runs if "peak_rss_bytes" not in r)
    chosen = dict(ok[(len(ok) - 1) // 2])
    chosen["peak_rss_samples_bytes"] = [r["peak_rss_bytes"] for r in runs]
    return chosen


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        job = json.loads(sys.argv[2])
        result = worker(job["side"], job["name"], job["config"], job["steps"], job["seq_len"], job["batch"],
                        job.get("trim_mib"))
        C.emit(result)
        return result

    p = C.parser("layerwise_memory", __doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="training steps per run")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="fresh processes per run (median peak reported)")
    p.add_argument("--parallel", action="store_true",
                   help="run the processes of a repeat at once (peak RSS is per process; uses more RAM at once)")
    p.add_argument("--names", default=None,
                   help="only the runs of these optim names, comma-separated (default: all five runs)")
    p.add_argument("--trim-every-mib", type=float, default=None,
                   help="set optim_registry.engines.layerwise.engine.TRIM_EVERY_BYTES in every run (0: never hand freed gradient "
                        "memory back; default: the engine's own setting), to measure what the hand-back costs")
    a = p.parse_args(argv)
    runs = [run for run in RUNS if a.names is None or run[1] in {n.strip() for n in a.names.split(",")}]
    if not runs:
        p.error(f"--names {a.names!r} selects none of {sorted({name for _, name in RUNS})}")
    config = dict(CONFIG)
    if a.quick:
        config, a.steps, a.seq_len, a.batch, a.parallel, a.repeat = dict(QUICK_CONFIG), 2, 16, 2, True, 1
    before = C.machine()

    samples: dict[tuple[str, str], list[dict[str, Any]]] = {run: [] for run in runs}
    for rep in range(a.repeat):
        order = runs if rep % 2 == 0 else runs[::-1]
        if a.parallel:
            procs = {run: spawn(*run, config, a.steps, a.seq_len, a.batch, a.trim_every_mib) for run in order}
            for run, proc in procs.items():
                samples[run].append(collect(proc, run[0]))
        else:
            for run in order:
                samples[run].append(collect(spawn(*run, config, a.steps, a.seq_len, a.batch, a.trim_every_mib),
                                            run[0]))
                last = samples[run][-1]
                print(f"{run[0]} {run[1]}: peak RSS {last['peak_rss_bytes'] / 2**20:.0f} MiB"
                      if "peak_rss_bytes" in last else f"{run[0]} {run[1]}: {last.get('error')}", flush=True)
    results = {run: median_run(runs) for run, runs in samples.items()}

    mib = 2**20
    rows = []
    for side, name in runs:
        r = results[(side, name)]
        row: dict[str, Any] = {"run": side, "optim": name, "error": r.get("error")}
        if r.get("stderr_tail"):
            row["stderr_tail"] = r["stderr_tail"]
        if "peak_rss_bytes" in r:
            row.update(
                trainer="transformers.Trainer" if side == "stock" else "OptimTrainer",
                optimizer=r["optimizer"],
                params=r["params"],
                peak_rss_mib=r["peak_rss_bytes"] / mib,
                rss_before_train_mib=r["rss_before_train_bytes"] / mib,
                train_increment_mib=(r["peak_rss_bytes"] - r["rss_before_train_bytes"]) / mib,
                train_seconds=r["train_seconds"],
                step_cpu_ms=r["step_cpu_ms"],
                training_loss=r["training_loss"],
                peak_rss_samples_mib=[b / mib for b in r["peak_rss_samples_bytes"]],
                gradient_mib=r["gradient_bytes"] / mib,
                saveable_mib=r["saveable_bytes"] / mib,
            )
        rows.append(row)
    by = {(r["run"], r["optim"]): r for r in rows}

    def rat(a_: tuple[str, str], b_: tuple[str, str], key: str) -> float | None:
        return C.ratio(by.get(a_, {}).get(key), by.get(b_, {}).get(key))

    params = next((r["params"] for r in rows if r.get("params")), None)
    pairs = []
    for whole, layerwise in PAIRS:
        if whole not in samples or layerwise not in samples:
            continue
        # Paired by repeat (the two ran back to back), so a busy minute shifts both.
        saved = [(w["peak_rss_bytes"] - lw["peak_rss_bytes"]) / mib
                 for w, lw in zip(samples[whole], samples[layerwise], strict=True)
                 if "peak_rss_bytes" in w and "peak_rss_bytes" in lw]
        saveable = by[whole].get("saveable_mib")
        median_saved = C.median(saved) if saved else None
        pairs.append({
            "whole": whole[1], "layerwise": layerwise[1], "saveable_mib": saveable,
            "saved_mib": median_saved, "saved_mib_samples": saved,
            "saved_fraction": C.ratio(median_saved, saveable),
            "layerwise_over_whole_peak": rat(layerwise, whole, "peak_rss_mib"),
            "layerwise_over_whole_increment": rat(layerwise, whole, "train_increment_mib"),
        })
    summary = {
        "pairs": pairs,
        "ours_over_stock_peak": rat(("ours", "adamw_torch"), ("stock", "adamw_torch"), "peak_rss_mib"),
        "gradient_mib": next((r["gradient_mib"] for r in rows if r.get("gradient_mib")), None),
    }
    print(C.table(rows, [
        ("run", "run", ""),
        ("optim", "optim", ""),
        ("peak_rss_mib", "peak RSS MiB", ".0f"),
        ("rss_before_train_mib", "RSS before train MiB", ".0f"),
        ("train_increment_mib", "training adds MiB", ".0f"),
        ("train_seconds", "train s", ".1f"),
        ("step_cpu_ms", "CPU ms/step", ".0f"),
        ("error", "error", ""),
    ]))
    print()
    for pair in pairs:
        spread = pair["saved_mib_samples"]
        print(f"{pair['layerwise']}: saved / could be saved {C.fmt(pair['saved_mib'], '.0f')} / "
              f"{C.fmt(pair['saveable_mib'], '.0f')} MiB = {C.fmt(pair['saved_fraction'], '.0%')} "
              f"(median of {len(spread)}, saved {min(spread, default=0):.0f} to {max(spread, default=0):.0f} MiB); "
              f"peak RSS {C.fmt(pair['layerwise_over_whole_peak'], '.3f')} x {pair['whole']}'s")
    print(f"fp32 gradients of the model: {C.fmt(summary['gradient_mib'], '.0f')} MiB, all but the largest can be "
          f"saved; OptimTrainer / Trainer (adamw_torch) peak RSS: {C.fmt(summary['ours_over_stock_peak'], '.3f')}"
          + ("" if a.trim_every_mib is None else f"; TRIM_EVERY_BYTES set to {a.trim_every_mib:g} MiB (0: off)"))
    notes = [f"{params:,} parameters, {a.steps} steps, batch {a.batch} x {a.seq_len} tokens, fp32, one fresh process "
             f"per run, {a.repeat} run(s) each (median peak; saved = paired difference per repeat, median)"
             if params else "no run succeeded"]
    return C.finish(
        "layerwise_memory", a.out, machine_before=before, rows=rows, notes=notes, summary=summary, timing=False,
        settings={"config": config, "repeat": a.repeat, "steps": a.steps, "seq_len": a.seq_len, "batch": a.batch,
                  "parallel": a.parallel, "names": [name for _, name in runs], "trim_every_mib": a.trim_every_mib,
                  "quick": a.quick},
    )


if __name__ == "__main__":
    main()
