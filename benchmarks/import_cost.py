"""What importing costs: ``import optim_registry``, resolving a name, and transformers' own imports.

Each case runs in a fresh Python process: an untimed set-up, then the timed statement, measured inside the
process with ``time.perf_counter`` and ``len(sys.modules)`` before and after. The cases run interleaved
(the order rotates each repetition) and the median of ``--repeat`` runs is reported, with which heavy
packages (torch, transformers, every optimizer library) each case pulled in. ``--importtime`` adds, per case,
the slowest modules from one ``python -X importtime`` run.

    python benchmarks/import_cost.py
    python benchmarks/import_cost.py --repeat 15 --importtime
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import _common as C

_NS = ("from types import SimpleNamespace as NS\n"
       "def args(name, **kw):\n"
       "    return NS(optim=name, optim_args=None, learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.999,\n"
       "              adam_epsilon=1e-8, weight_decay=0.0, **kw)\n")
_MODEL = ("import torch\nfrom torch import nn\n"
          "model = nn.ModuleDict({'attn': nn.Linear(8, 8), 'mlp': nn.Linear(8, 8)})\n")

#: (label, untimed set-up, timed statement). Resolving uses a plain namespace for the arguments, so
#: the figure is the registry's own cost, not transformers' TrainingArguments.
CASES: tuple[tuple[str, str, str], ...] = (
    ("import torch", "", "import torch"),
    ("import optim_registry", "", "import optim_registry"),
    ("resolve sgd (torch already imported)", "import torch\n" + _NS,
     "import optim_registry\noptim_registry.get_optimizer_cls_and_kwargs(args('sgd'))"),
    ("resolve galore_adamw (torch already imported)", _MODEL + _NS,
     "import optim_registry\noptim_registry.get_optimizer_cls_and_kwargs("
     "args('galore_adamw', optim_target_modules=['attn', 'mlp']), model)"),
    ("import transformers", "", "import transformers"),
    ("from transformers import Trainer", "", "from transformers import Trainer"),
    ("from optim_registry import OptimTrainer", "", "from optim_registry import OptimTrainer"),
)
QUICK_CASES = ("import optim_registry", "resolve sgd (torch already imported)")

#: (ours, stock) rows compared in the summary.
PAIRS = (
    ("import optim_registry", "import transformers"),
    ("from optim_registry import OptimTrainer", "from transformers import Trainer"),
)

#: Packages whose presence in sys.modules is worth reporting.
HEAVY = ("torch", "transformers", "accelerate", "bitsandbytes", "galore_torch", "apollo_torch", "q_galore_torch",
         "lomo_optim", "schedulefree", "optimi", "torchao", "flashoptim", "pytorch_optimizer", "came_pytorch",
         "grokadamw", "triton", "muon", "matplotlib")

_PROBE = """
import sys, time, json
{setup}
_before = set(sys.modules)
_t0 = time.perf_counter()
{timed}
_t1 = time.perf_counter()
_new = set(sys.modules) - _before
print({marker!r} + json.dumps({{
    "seconds": _t1 - _t0,
    "modules_new": len(_new),
    "modules_total": len(sys.modules),
    "heavy": sorted(h for h in {heavy!r} if h in sys.modules),
    "heavy_new": sorted(h for h in {heavy!r} if h in _new),
}}))
"""


#: Whether the caller's environment forbids writing bytecode (some CI images and containers do).
NO_BYTECODE_ENV = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))


def _env() -> dict[str, str]:
    env = C.worker_env()
    # An installed package has its .pyc files (pip compiles on install), as torch and transformers do here;
    # without them every fresh process recompiles the checkout's sources, which is not what a user pays.
    # The untimed first pass writes them (__pycache__ is ignored by git).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_case(setup: str, timed: str, importtime: bool = False) -> dict[str, Any]:
    code = _PROBE.format(setup=setup, timed=timed, heavy=HEAVY, marker=C.RESULT)
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", code]
    with C.Timer() as t:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(C.REPO), env=_env(), timeout=600)
    result = C.read_result(proc.stdout)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"case failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    result["process_s"] = t.seconds
    if importtime:
        result["slowest_imports"] = slowest_imports(proc.stderr)
    return result


def slowest_imports(stderr: str, n: int = 8) -> list[dict[str, Any]]:
    """Top-level packages by cumulative import time from ``-X importtime`` output."""
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        try:
            _, self_us, cumulative_us, name = (x.strip() for x in line.replace("import time:", "|").split("|"))
        except ValueError:
            continue
        if name.startswith(" ") or "." in name.strip():
            continue
        entries.append({"module": name.strip(), "cumulative_ms": int(cumulative_us) / 1e3})
    entries.sort(key=lambda e: -e["cumulative_ms"])
    return entries[:n]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.parser("import_cost", __doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7, help="fresh processes per case (median reported)")
    p.add_argument("--importtime", action="store_true", help="also list each case's slowest imports")
    a = p.parse_args(argv)
    cases = list(CASES)
    if a.quick:
        a.repeat = 1
        cases = [c for c in CASES if c[0] in QUICK_CASES]
    before = C.machine()

    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in cases}
    errors: dict[str, str] = {}
    if not a.quick:  # untimed first pass: writes .pyc files, and warms the disk cache
        for _, setup, timed in cases:
            try:
                run_case(setup, timed)
            except Exception:  # noqa: BLE001 - reported below
                pass
    for rep in range(a.repeat):
        k = rep % len(cases)
        for label, setup, timed in cases[k:] + cases[:k]:
            if label in errors:
                continue
            try:
                runs[label].append(run_case(setup, timed))
            except Exception as exc:  # noqa: BLE001
                errors[label] = str(exc)
        print(f"repetition {rep + 1}/{a.repeat} done", flush=True)

    rows = []
    for label, setup, timed in cases:
        rs = runs[label]
        row: dict[str, Any] = {
            "case": label,
            "statement": timed,
            "setup": setup,
            "seconds": C.median(r["seconds"] for r in rs) if rs else None,
            "process_s": C.median(r["process_s"] for r in rs) if rs else None,
            "modules_new": rs[-1]["modules_new"] if rs else None,
            "modules_total": rs[-1]["modules_total"] if rs else None,
            "heavy_new": ", ".join(rs[-1]["heavy_new"]) if rs else None,
            "samples_s": [r["seconds"] for r in rs],
            "error": errors.get(label),
        }
        if a.importtime and not errors.get(label):
            row["slowest_imports"] = run_case(setup, timed, importtime=True)["slowest_imports"]
        rows.append(row)

    by_label = {r["case"]: r for r in rows}
    comparisons = []
    for ours, stock in PAIRS:
        if ours in by_label and stock in by_label:
            o, s = by_label[ours]["seconds"], by_label[stock]["seconds"]
            comparisons.append({"ours": ours, "stock": stock, "ours_s": o, "stock_s": s, "ratio": C.ratio(o, s),
                                "extra_s": None if o is None or s is None else o - s})

    print()
    print(C.table(rows, [
        ("case", "case", ""),
        ("seconds", "seconds", ".3f"),
        ("modules_new", "modules imported", "d"),
        ("heavy_new", "heavy packages imported", ""),
        ("process_s", "whole process s", ".2f"),
    ]))
    if comparisons:
        print()
        print(C.table(comparisons, [("ours", "ours", ""), ("stock", "stock", ""), ("ratio", "ratio", ".3f"),
                                    ("extra_s", "extra s", ".3f")]))
    notes = [f"median of {a.repeat} fresh processes per case; 'seconds' is the timed statement alone (after its "
             "set-up), 'whole process s' includes interpreter start and set-up"]
    notes.append("bytecode caching on in the measured processes, as for an installed package"
                 + ("; the calling environment sets PYTHONDONTWRITEBYTECODE, where every process recompiles the "
                    "checkout's sources (resolving a name then costs ~1.5 s more)" if NO_BYTECODE_ENV else ""))
    notes += [f"{label} failed: {err}" for label, err in errors.items()]
    return C.finish(
        "import_cost", a.out, machine_before=before, rows=rows, notes=notes, comparisons=comparisons,
        settings={"repeat": a.repeat, "quick": a.quick, "python": sys.executable, "importtime": a.importtime,
                  "bytecode_cache": True, "caller_env_no_bytecode": NO_BYTECODE_ENV},
    )


if __name__ == "__main__":
    main()
