"""Bytes of optimizer state per trainable parameter, for every registered name that runs here.

Each name trains one real step through ``OptimTrainer`` (the conformance harness's ``testing.run``) on a
small fp32 Llama; then the tensors of ``optimizer.state_dict()["state"]`` are summed (each storage once,
tensor subclasses such as torchao's quantised state through their inner tensors, projector objects
through their attributes) and divided by the number of trainable parameters. State the optimizer keeps
but does not save (``optimizer.state`` only) is measured too and the larger figure is reported, with
where it came from. Layer-wise twins (``*_layerwise``) are not run: their state is their base's.

Figures depend on the model's shapes for factored (Adafactor), low-rank (GaLore, APOLLO) and block-
quantised (8-bit) state: the settings block names the model. Not a timing benchmark: load does not matter.
Names run in a worker process under a memory limit, restarted if it dies, so one runaway optimizer fails
only its own row.

    python benchmarks/state_memory.py                       # every runnable name (a few minutes)
    python benchmarks/state_memory.py --names 'adamw*,sgd'   # a subset (fnmatch patterns)
    python benchmarks/state_memory.py --update-records       # also print record values that differ
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import io
import logging
import math
import re
import tempfile
import traceback
from pathlib import Path
from typing import Any

import _common as C

#: Model for the full run: every 2-D weight has >= 4096 elements, so 8-bit optimizers quantise them
#: (bitsandbytes keeps smaller tensors in 32 bits), and the input embedding is ~2.4% of the parameters
#: as in Llama-7B (~2%): bitsandbytes 8-bit names keep it in 32 bits, which adds ~0.14 B/param here.
MODEL = {"vocab_size": 128, "hidden": 256, "layers": 2}
QUICK_MODEL = {"vocab_size": 32, "hidden": 16, "layers": 1}
QUICK_NAMES = "sgd,adamw_torch,adamw_torch_layerwise"

#: Whose state is sized by a rank or by the matrices' shapes (GaLore / APOLLO rank, Dion's rank_fraction).
SHAPE_DEPENDENT_FAMILIES = frozenset({"low_rank"})
SHAPE_DEPENDENT_NAMES = frozenset({"dion"})

#: Relative (and absolute floor) difference from the record that ``--update-records`` reports.
REL_TOL, ABS_TOL = 0.02, 0.01


def build_model(vocab_size: int, hidden: int, layers: int) -> Any:
    from optim_registry.testing import tiny_model

    return tiny_model(vocab_size=vocab_size, hidden=hidden, layers=layers)


# -- counting -----------------------------------------------------------------------------------
def state_bytes(obj: Any, *, exclude: set[int], storages: set[tuple[int, int]], seen: set[int], depth: int = 0) -> int:
    """Bytes of the tensors reachable from ``obj`` (dicts, sequences, tensor subclasses, plain objects).

    ``exclude`` holds ids of the parameters (never counted); ``storages`` dedups shared storage.
    """
    import torch

    if depth > 8 or id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if id(obj) in exclude or obj.device.type == "meta":
            return 0
        flatten = getattr(type(obj), "__tensor_flatten__", None)
        if flatten is not None and type(obj) is not torch.Tensor and not isinstance(obj, torch.nn.Parameter):
            inner_names, _ = obj.__tensor_flatten__()
            return sum(state_bytes(getattr(obj, n), exclude=exclude, storages=storages, seen=seen, depth=depth + 1)
                       for n in inner_names)
        try:
            storage = obj.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
        except (RuntimeError, NotImplementedError, TypeError):
            return obj.numel() * obj.element_size()
        if key[0] == 0:  # empty or storage-less: its own size
            return obj.numel() * obj.element_size()
        if key in storages:
            return 0
        storages.add(key)
        return key[1]
    if isinstance(obj, dict) or (hasattr(obj, "items") and callable(obj.items) and not isinstance(obj, type)):
        try:
            values = list(obj.values())
        except Exception:  # noqa: BLE001
            return 0
        return sum(state_bytes(v, exclude=exclude, storages=storages, seen=seen, depth=depth + 1) for v in values)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(state_bytes(v, exclude=exclude, storages=storages, seen=seen, depth=depth + 1) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module, torch.optim.Optimizer)):
        return state_bytes(vars(obj), exclude=exclude, storages=storages, seen=seen, depth=depth + 1)
    return 0


def measure_optimizer(optimizer: Any) -> dict[str, int]:
    from optim_registry.trainer import unwrap_optimizer

    optimizer = unwrap_optimizer(optimizer)
    params = {id(p) for g in getattr(optimizer, "param_groups", []) for p in g["params"]}
    saved = state_bytes(optimizer.state_dict().get("state", {}), exclude=params, storages=set(), seen=set())
    live = state_bytes(dict(getattr(optimizer, "state", {}) or {}), exclude=params, storages=set(), seen=set())
    return {"state_dict_bytes": saved, "live_state_bytes": live}


# -- selection ----------------------------------------------------------------------------------
def select(patterns: list[str] | None) -> tuple[list[Any], dict[str, str]]:
    """Records to run, and the reason each other registered name is not run."""
    from optim_registry.listing import list_optimizers
    from optim_registry.registry import optimizers
    from optim_registry.runnable import can_run

    chosen, skipped = [], {}
    for info in list_optimizers():
        if patterns and not any(fnmatch.fnmatch(info.name, p) for p in patterns):
            continue
        ok, reason = can_run(info)
        if not ok:
            skipped[info.name] = reason
        else:
            try:
                chosen.append(optimizers.get(info.name))
            except Exception as exc:  # noqa: BLE001
                skipped[info.name] = f"cannot resolve: {exc}"
    return chosen, skipped


def run_one(spec: Any, model_kw: dict[str, int], tmp: str) -> dict[str, Any]:
    from optim_registry import testing

    model = build_model(**model_kw)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dataset = testing.TokenDataset(n=8, seq_len=16, vocab_size=model_kw["vocab_size"])
    with C.Timer() as t, contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its metrics
        trainer = testing.run(spec.name, tmp, model=model, dataset=dataset, max_steps=1,
                              per_device_train_batch_size=4, logging_strategy="no")
        sizes = measure_optimizer(trainer.optimizer)
    best = max(sizes["state_dict_bytes"], sizes["live_state_bytes"])
    source = "state_dict" if sizes["state_dict_bytes"] >= sizes["live_state_bytes"] else "optimizer.state only"
    del trainer
    return {
        **sizes,
        "trainable_params": trainable,
        "bytes_per_param": best / trainable,
        "source": source,
        "seconds": t.seconds,
    }


# -- records ------------------------------------------------------------------------------------
def differs(measured: float | None, record: float | None) -> bool:
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        return False
    if record is None:
        return True
    return abs(measured - record) > max(ABS_TOL, REL_TOL * abs(record))


def rounded(x: float) -> float:
    return round(x, 2) if x >= 0.1 or x == 0 else float(f"{x:.2g}")


def record_file(name: str, family: str) -> str:
    """Which family's records module declares ``name`` (best effort, for the lead's edit)."""
    root = C.REPO / "optim_registry" / "families"
    texts = {path: path.read_text(encoding="utf-8", errors="replace") for path in sorted(root.glob("*/records.py"))}
    quoted = rf"""["']{re.escape(name)}["']"""
    # A record's own `name="..."` first; a bare mention (another family's catalogue) only as a fallback.
    for pattern in (re.compile(rf"\bname\s*=\s*{quoted}"), re.compile(quoted)):
        for path, text in texts.items():
            if pattern.search(text):
                return str(path.relative_to(C.REPO))
    return f"(generated or built by a helper; family {family!r})"


def shape_dependent(row: dict[str, Any]) -> bool:
    """Low-rank state scales with rank / matrix shape: this model's figure says little about a real one."""
    return row.get("family") in SHAPE_DEPENDENT_FAMILIES or row["optim"] in SHAPE_DEPENDENT_NAMES


def update_lines(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """``state_bytes=`` lines that differ from the records: (to consider, shape-dependent)."""
    lines: tuple[list[str], list[str]] = ([], [])
    for r in rows:
        if r.get("same_as") or r.get("error") or r.get("not_run") or not differs(r.get("bytes_per_param"), r.get("record")):
            continue
        line = (f"{r['file']}: {r['optim']}: state_bytes={rounded(r['bytes_per_param'])!r}  "
                f"# record {r.get('record')!r}, measured {r['bytes_per_param']:.4g}")
        lines[shape_dependent(r)].append(line)
    return lines


def measure_name(name: str, model_kw: dict[str, int], tmp: str) -> dict[str, Any]:
    """One name's row: measured, refused by the registry (``not_run``) or failed (``error``)."""
    from optim_registry.registry import optimizers

    spec = optimizers.get(name)
    row: dict[str, Any] = {"optim": spec.name, "family": spec.family, "record": spec.state_bytes}
    try:
        row.update(run_one(spec, model_kw, tmp))
    except Exception as exc:  # noqa: BLE001 - a failing name is a finding, not a crash
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(exc, ValueError) and message.startswith(f"optim={spec.name!r}"):
            # The registry refusing this run on purpose, with its reason (needs CUDA for its real state
            # layout, cannot train through the Trainer, ...): not runnable here, not a failure.
            row["not_run"] = message
        else:
            row["error"] = f"{type(exc).__name__}: {message[:300]}"
            row["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
    finally:
        logging.getLogger().setLevel(logging.WARNING)  # grokadamw sets the root logger to INFO
        gc.collect()
    return row


def worker(job: dict[str, Any]) -> None:
    """Measures ``job["names"]`` in turn under a memory limit, one ``@@ROW`` line per name."""
    import json
    import resource

    limit = int(job["memory_limit_gb"] * 2**30)
    if limit > 0:
        # An optimizer that allocates without bound must fail here, not wake the OOM killer on a shared machine.
        for which in (resource.RLIMIT_DATA, resource.RLIMIT_AS):
            soft, hard = resource.getrlimit(which)
            if hard == resource.RLIM_INFINITY or hard > limit:
                resource.setrlimit(which, (limit if which == resource.RLIMIT_DATA else 4 * limit, hard))
    with C.quiet(), tempfile.TemporaryDirectory() as tmp:
        for name in job["names"]:
            print(f"@@START {name}", flush=True)
            row = measure_name(name, job["model"], str(Path(tmp) / name))
            print("@@ROW " + json.dumps(row, default=str), flush=True)


def run_in_workers(names: list[str], model_kw: dict[str, int], memory_limit_gb: float) -> dict[str, dict[str, Any]]:
    """Every name measured in worker processes; a worker that dies costs only the name it was running."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(C.REPO), *filter(None, [env.get("PYTHONPATH")])])
    results: dict[str, dict[str, Any]] = {}
    remaining = list(names)
    while remaining:
        job = json.dumps({"names": remaining, "model": model_kw, "memory_limit_gb": memory_limit_gb})
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen([sys.executable, __file__, "--worker", job], stdout=subprocess.PIPE, stderr=err,
                                    text=True, cwd=str(C.REPO), env=env)
            current = None
            for line in proc.stdout:
                if line.startswith("@@START "):
                    current = line.split(" ", 1)[1].strip()
                elif line.startswith("@@ROW "):
                    row = json.loads(line[len("@@ROW "):])
                    results[row["optim"]] = row
                    remaining.remove(row["optim"])
                    current = None
                    report(row)
            code = proc.wait()
            err.seek(0)
            tail = err.read().strip().splitlines()[-5:]
        if current is None and code != 0 and remaining:
            current = remaining[0]  # died between names: blame the next one so the loop always advances
        if current is not None:
            why = f"signal {-code}" if code < 0 else f"exit {code}"
            results[current] = {"optim": current, "error": f"the measuring process died ({why}"
                                + ("; SIGKILL, most likely out of memory)" if code == -9 else ")"),
                                "traceback_tail": tail}
            remaining.remove(current)
            report(results[current])
    return results


def report(row: dict[str, Any]) -> None:
    name = row["optim"]
    if row.get("not_run"):
        print(f"{name:34s} not run: {row['not_run'][:150]}", flush=True)
        return
    mark = "" if row.get("error") else (" *" if differs(row.get("bytes_per_param"), row.get("record")) else "")
    print(f"{name:34s} {C.fmt(row.get('bytes_per_param'), '.4g'):>8s} B/param  "
          f"(record {C.fmt(row.get('record'), 'g')}){mark}" + (f"  FAILED {row['error']}" if row.get("error") else ""),
          flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import json
    import sys

    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
        return {}
    with C.quiet():
        return _main(argv)


def _main(argv: list[str] | None) -> dict[str, Any]:
    p = C.parser("state_memory", __doc__.splitlines()[0])
    p.add_argument("--names", default=None, help="comma-separated fnmatch patterns (default: every name)")
    p.add_argument("--update-records", action="store_true",
                   help="print the state_bytes= values that differ from the records (nothing is changed)")
    p.add_argument("--memory-limit-gb", type=float, default=8.0,
                   help="data-size limit of the measuring process (address space: 4x), 0 for none; a name "
                        "exceeding it fails its own row instead of running the machine out of memory")
    a = p.parse_args(argv)
    model_kw = dict(MODEL)
    if a.quick:
        model_kw = dict(QUICK_MODEL)
        a.names = a.names or QUICK_NAMES
    before = C.machine()

    patterns = [x.strip() for x in a.names.split(",")] if a.names else None
    specs, skipped = select(patterns)
    by_name = {s.name: s for s in specs}
    to_run = [s.name for s in specs if not (s.layerwise and s.base)]
    results = run_in_workers(to_run, model_kw, a.memory_limit_gb)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        row: dict[str, Any] = {"optim": spec.name, "family": spec.family, "record": spec.state_bytes,
                               "file": record_file(spec.base or spec.name, spec.family)}
        if spec.layerwise and spec.base:
            row.update(same_as=spec.base, note=f"layer-wise twin: same state as {spec.base}")
        else:
            row.update(results[spec.name])
        rows.append(row)
    for row in rows:
        base = row.get("same_as")
        if base:
            twin = next((r for r in rows if r["optim"] == base), None)
            row["bytes_per_param"] = twin.get("bytes_per_param") if twin else None
            if base not in by_name:
                row["note"] += " (base not measured in this run)"

    print()
    print(C.table([r for r in rows if not r.get("same_as") and not r.get("not_run")], [
        ("optim", "optim", ""),
        ("family", "family", ""),
        ("bytes_per_param", "B/param", ".4g"),
        ("record", "record", "g"),
        ("source", "counted from", ""),
        ("error", "error", ""),
    ]))
    failed = {r["optim"]: r["error"] for r in rows if r.get("error")}
    for r in rows:
        if r.get("not_run"):
            skipped[r["optim"]] = r["not_run"]
    measured = [r for r in rows if r.get("bytes_per_param") is not None]
    notes = [f"{len(measured)} names measured ({sum(1 for r in measured if r.get('same_as'))} layer-wise twins "
             f"reported as their base), {len(failed)} failed, {len(skipped)} not runnable here"]
    notes += [f"not run {n}: {why}" for n, why in sorted(skipped.items())]
    n_params = sum(p.numel() for p in build_model(**model_kw).parameters() if p.requires_grad)
    updates, shaped = update_lines(rows)
    if a.update_records:
        print()
        if updates:
            print(f"# state_bytes values that differ from the records (|diff| > max({ABS_TOL}, {REL_TOL:.0%})); "
                  "not applied:")
            print("\n".join(updates))
        else:
            print("# every measured state_bytes matches its record")
        if shaped:
            print(f"# shape-dependent (rank / matrix size; figures for this {n_params:,}-parameter model only):")
            print("\n".join(shaped))
    return C.finish(
        "state_memory", a.out, machine_before=before, rows=rows, notes=notes, skipped=skipped,
        failed=failed, record_updates=updates, record_updates_shape_dependent=shaped, timing=False,
        settings={"model": {"builder": "optim_registry.testing.tiny_model", **model_kw, "trainable_params": n_params,
                            "dtype": "float32"},
                  "steps": 1, "names": patterns, "quick": a.quick, "memory_limit_gb": a.memory_limit_gb,
                  "tolerance": {"relative": REL_TOL, "absolute": ABS_TOL}},
    )


if __name__ == "__main__":
    main()
