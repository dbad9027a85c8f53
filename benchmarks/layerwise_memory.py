"""Peak resident memory of a layer-wise run against the whole-model run of the same optimizer.

A ~134M-parameter Llama built from a config (random weights, fp32) trains a few steps three times, each
in a fresh Python process that reports its peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and
its RSS just before training:

- ``stock``: ``transformers.Trainer``, ``optim="adamw_torch"`` (reference: the registry should add nothing)
- ``ours``: ``OptimTrainer``, ``optim="adamw_torch"``
- ``ours_layerwise``: ``OptimTrainer``, ``optim="adamw_torch_layerwise"`` (each parameter stepped in
  backward and its gradient freed, so the whole model's gradients never exist at once)

Same arguments everywhere (``max_grad_norm=0``, which layer-wise stepping requires). The saving to expect
is about one gradient per parameter (4 bytes each in fp32) minus the largest single gradient.

    python benchmarks/layerwise_memory.py            # ~134M parameters, 3 steps, a few minutes
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
RUNS = (("stock", "adamw_torch"), ("ours", "adamw_torch"), ("ours_layerwise", "adamw_torch_layerwise"))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(side: str, name: str, config: dict[str, Any], steps: int, seq_len: int, batch: int) -> dict[str, Any]:
    """One training run in this (fresh) process; returns its memory figures."""
    import contextlib
    import io
    import resource
    import tempfile

    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    import optim_registry
    from optim_registry.testing import TokenDataset

    cfg = LlamaConfig(**config, max_position_embeddings=max(128, seq_len), tie_word_embeddings=False, use_cache=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dataset = TokenDataset(n=batch * steps, seq_len=seq_len, vocab_size=config["vocab_size"])
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = dict(output_dir=tmp, optim=name, max_steps=steps, per_device_train_batch_size=batch,
                      learning_rate=1e-4, max_grad_norm=0.0, save_strategy="no", logging_strategy="no",
                      report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
        if side == "stock":
            trainer: Any = transformers.Trainer(model=model, args=transformers.TrainingArguments(**kwargs),
                                                train_dataset=dataset)
        else:
            trainer = optim_registry.OptimTrainer(model=model, args=optim_registry.TrainingArguments(**kwargs),
                                                  train_dataset=dataset)
        rss_before = _rss_bytes()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with C.Timer() as t, contextlib.redirect_stdout(io.StringIO()), C.quiet():
            out = trainer.train()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "side": side, "optim": name, "params": n_params, "optimizer": type(trainer.optimizer).__name__,
        "rss_before_train_bytes": rss_before, "peak_before_train_bytes": peak_before, "peak_rss_bytes": peak,
        "train_seconds": t.seconds, "training_loss": float(out.training_loss),
    }


def spawn(side: str, name: str, config: dict[str, Any], steps: int, seq_len: int, batch: int) -> subprocess.Popen:
    spec = json.dumps({"side": side, "name": name, "config": config, "steps": steps, "seq_len": seq_len,
                       "batch": batch})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(C.REPO), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen([sys.executable, __file__, "--worker", spec], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(C.REPO), env=env)


def collect(proc: subprocess.Popen, side: str) -> dict[str, Any]:
    stdout, stderr = proc.communicate(timeout=1800)
    line = next((x for x in stdout.splitlines() if x.startswith("@@RESULT@@")), None)
    if proc.returncode != 0 or line is None:
        lines = stderr.strip().splitlines() or [""]
        return {"side": side, "error": f"exit {proc.returncode}: {lines[-1][:300]}", "stderr_tail": lines[-15:]}
    return json.loads(line[len("@@RESULT@@"):])


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
        result = worker(job["side"], job["name"], job["config"], job["steps"], job["seq_len"], job["batch"])
        print("@@RESULT@@" + json.dumps(result), flush=True)
        return result

    p = C.parser("layerwise_memory", __doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="training steps per run")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1, help="fresh processes per run (median peak reported)")
    p.add_argument("--parallel", action="store_true",
                   help="run the three processes at once (peak RSS is per process; uses more RAM at once)")
    a = p.parse_args(argv)
    config = dict(CONFIG)
    if a.quick:
        config, a.steps, a.seq_len, a.batch, a.parallel = dict(QUICK_CONFIG), 2, 16, 2, True
    before = C.machine()

    samples: dict[str, list[dict[str, Any]]] = {side: [] for side, _ in RUNS}
    for rep in range(a.repeat):
        order = RUNS if rep % 2 == 0 else RUNS[::-1]
        if a.parallel:
            procs = {side: spawn(side, name, config, a.steps, a.seq_len, a.batch) for side, name in order}
            for side, proc in procs.items():
                samples[side].append(collect(proc, side))
        else:
            for side, name in order:
                samples[side].append(collect(spawn(side, name, config, a.steps, a.seq_len, a.batch), side))
                last = samples[side][-1]
                print(f"{side}: peak RSS {last['peak_rss_bytes'] / 2**20:.0f} MiB" if "peak_rss_bytes" in last
                      else f"{side}: {last.get('error')}", flush=True)
    results = {side: median_run(runs) for side, runs in samples.items()}

    mib = 2**20
    rows = []
    for side, name in RUNS:
        r = results[side]
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
                training_loss=r["training_loss"],
                peak_rss_samples_mib=[b / mib for b in r["peak_rss_samples_bytes"]],
            )
        rows.append(row)
    by = {r["run"]: r for r in rows}

    def rat(a_: str, b_: str, key: str) -> float | None:
        return C.ratio(by[a_].get(key), by[b_].get(key))

    params = next((r["params"] for r in rows if r.get("params")), None)
    summary = {
        "layerwise_over_whole_peak": rat("ours_layerwise", "ours", "peak_rss_mib"),
        "layerwise_over_whole_increment": rat("ours_layerwise", "ours", "train_increment_mib"),
        "ours_over_stock_peak": rat("ours", "stock", "peak_rss_mib"),
        "saved_mib": (by["ours"].get("peak_rss_mib") or 0) - (by["ours_layerwise"].get("peak_rss_mib") or 0)
        if by["ours"].get("peak_rss_mib") and by["ours_layerwise"].get("peak_rss_mib") else None,
        "expected_saving_mib": params * 4 / mib if params else None,
    }
    print(C.table(rows, [
        ("run", "run", ""),
        ("optim", "optim", ""),
        ("peak_rss_mib", "peak RSS MiB", ".0f"),
        ("rss_before_train_mib", "RSS before train MiB", ".0f"),
        ("train_increment_mib", "training adds MiB", ".0f"),
        ("train_seconds", "train s", ".1f"),
        ("error", "error", ""),
    ]))
    print()
    print(f"layer-wise / whole-model peak RSS: {C.fmt(summary['layerwise_over_whole_peak'], '.3f')} "
          f"(saved {C.fmt(summary['saved_mib'], '.0f')} MiB; fp32 gradients of the model: "
          f"{C.fmt(summary['expected_saving_mib'], '.0f')} MiB); OptimTrainer / Trainer (adamw_torch): "
          f"{C.fmt(summary['ours_over_stock_peak'], '.3f')}")
    notes = [f"{params:,} parameters, {a.steps} steps, batch {a.batch} x {a.seq_len} tokens, fp32, one fresh process "
             f"per run, {a.repeat} run(s) each (median peak)" if params else "no run succeeded"]
    return C.finish(
        "layerwise_memory", a.out, machine_before=before, rows=rows, notes=notes, summary=summary, timing=False,
        settings={"config": config, "repeat": a.repeat, "steps": a.steps, "seq_len": a.seq_len, "batch": a.batch, "parallel": a.parallel,
                  "quick": a.quick},
    )


if __name__ == "__main__":
    main()
