"""Generate ``optim_registry/families/pytorch_optimizer/catalog.py`` from the installed pytorch_optimizer.

The catalogue is data the registry ships so that listing names never imports pytorch_optimizer. Two parts:

- ``CATALOG`` is introspected: every name of the library's registry, its class, the constructor's options
  typed from the signature (defaults, ``Literal`` choices, ``IntEnum`` values, help from the docstring's
  ``Args:``), which TrainingArguments hyperparameters it takes, its description and paper.
  ``tests/test_family_pytorch_optimizer.py`` checks it equals ``introspect()`` on the installed library.
- ``STATUS`` / ``LAYERWISE`` / ``SHARDING`` are measured: ``--survey`` runs ``optim_registry.testing.check_optimizer``
  through ``OptimTrainer`` on CPU for every name (and every layer-wise twin), in batches of fresh processes, and
  records "ok" or why the name cannot train under the Trainer's step protocol; ``shard_safe`` then checks
  whether each trainable name's update survives being split into flat shards (ZeRO / FSDP).

Usage::

    python tools/gen_pytorch_optimizer_catalog.py            # re-introspect, keep the measured outcomes
    python tools/gen_pytorch_optimizer_catalog.py --survey   # ... and measure every name again (15-40 min)
    python tools/gen_pytorch_optimizer_catalog.py --sharding  # ... and probe sharded updates again (seconds)
    python tools/gen_pytorch_optimizer_catalog.py --survey-one po_soap   # one name, prints JSON
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optim_registry.families.pytorch_optimizer.records import (  # noqa: E402  (after the checkout is on the path)
    FROZEN_BY_DESIGN,
    PROTOCOL_LIMITS,
    SHARDING_LIMITS,
    SHARDING_REASON,
    describe,
)

OUT = ROOT / "optim_registry" / "families" / "pytorch_optimizer" / "catalog.py"

#: Steps of the second survey run for names whose weights did not all move in the first four.
LONG_RUN = 32

# -- introspection ------------------------------------------------------------------------------------
def introspect() -> dict[str, dict[str, Any]]:
    """``name -> entry`` for every name of the installed pytorch_optimizer's registry, sorted."""
    from pytorch_optimizer import get_supported_optimizers, load_optimizer

    return {name: describe(name, load_optimizer(name)) for name in sorted(get_supported_optimizers())}


def library_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("pytorch_optimizer")


# -- survey -------------------------------------------------------------------------------------------
def survey_one(name: str) -> dict[str, Any]:
    """Run the conformance harness on ``name`` (``po_x`` or ``po_x_layerwise``), whatever its status."""
    import os
    import tempfile

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from optim_registry.engines.layerwise.twins import layerwise_variant
    from optim_registry.families.pytorch_optimizer.catalog import CATALOG
    from optim_registry.families.pytorch_optimizer.records import PREFIX, record
    from optim_registry.registry import register_optimizer
    from optim_registry.testing import check_optimizer

    layerwise = name.endswith("_layerwise")
    base = name.removeprefix(PREFIX).removesuffix("_layerwise")
    spec = record(base, CATALOG[base], status="ok", layerwise_status="ok")
    if layerwise:
        spec = layerwise_variant(spec)
    probe = f"survey_{name}"
    register_optimizer(probe, spec.variant(name=probe), replace=True)
    lr = CATALOG[base]["lr_default"] or 1e-2
    start = time.perf_counter()
    try:
        report = check_optimizer(probe, learning_rate=lr, workdir=tempfile.gettempdir())
        if [f.split(":")[0] for f in report.failures] == ["all_params_moved"]:
            # RAdam-style warm-ups, D-adaptation's tiny first steps and SGDW's 1e-4 leave some fp32 weights
            # bit-identical for a while: give them a longer run at a usable rate before calling them stuck.
            lr = max(lr, 1e-2)
            report = check_optimizer(probe, learning_rate=lr, workdir=tempfile.gettempdir(), steps=LONG_RUN)
            report.figures.update(steps=LONG_RUN, learning_rate=lr)
        failures = list(report.failures)
        figures = dict(report.figures)
    except Exception as exc:  # the message is the finding
        failures = [f"error: {_summary(exc)}"[:300]]
        figures = {}
    return {"name": name, "failures": failures, "figures": figures, "seconds": time.perf_counter() - start}


def _summary(exc: BaseException) -> str:
    """One informative line for an exception (torch's weights_only refusals hide it mid-message)."""
    text = str(exc).strip()
    found = re.search(r"(Unsupported global: GLOBAL \S+)", text) or re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    if found:
        what = found.group(1).rstrip(".").removeprefix("Unsupported global: GLOBAL ")
        return (f"keeps {what} objects in its state, which torch.load(weights_only=True) refuses: a checkpoint "
                "cannot be resumed")
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"


def _run_batch(names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Survey ``names`` in one fresh process (imports are slow); a name that kills it is retried alone."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--survey-one", ",".join(names)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * len(names), cwd=ROOT)
        stdout, stderr = done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = f"timeout: no result within {timeout:.0f}s"
    results = {}
    for line in stdout.splitlines():
        if line.startswith('{"name"'):
            res = json.loads(line)
            results[res["name"]] = res
    missing = [n for n in names if n not in results]
    if missing and len(names) == 1:
        tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
        return {names[0]: {"name": names[0], "failures": [f"crash: {tail}"[:300]], "figures": {}}}
    for name in missing:
        results.update(_run_batch([name], timeout))
    return results


def _survey_names(todo: list[str], jobs: int, timeout: float, chunk: int = 8) -> dict[str, dict[str, Any]]:
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    results: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(jobs) as pool:
        for batch in pool.map(lambda c: _run_batch(c, timeout), chunks):
            for res in batch.values():
                print(f"{res['name']:32s} {res.get('seconds', 0):6.1f}s {res['failures'] or 'ok'}", flush=True)
            results.update(batch)
    return results


def _reason(base: str, result: dict[str, Any]) -> str:
    if not result["failures"]:
        return "ok"
    if base in FROZEN_BY_DESIGN and [f.split(":")[0] for f in result["failures"]] == ["all_params_moved"]:
        return "ok"
    if base in PROTOCOL_LIMITS:
        return PROTOCOL_LIMITS[base]
    first = result["failures"][0]
    if first.startswith("error: "):
        return first.removeprefix("error: ")
    check, _, detail = first.partition(": ")
    words = {
        "exact_resume": "resume not exact",
        "finite_loss": "loss not finite",
        "all_params_moved": "some parameters never move",
        "state_round_trip": "state does not round-trip",
    }
    return f"{words[check]}: {detail}" if check in words else first


def outcomes(results: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """``(status, layerwise)`` for every base name (and twin) present in raw survey ``results``."""
    from optim_registry.families.pytorch_optimizer.records import PREFIX

    status, layerwise = {}, {}
    for key, result in results.items():
        base = key.removeprefix(PREFIX).removesuffix("_layerwise")
        if key.endswith("_layerwise"):
            layerwise[base] = _reason(base, result)
        else:
            status[base] = _reason(base, result)
    return status, layerwise


def survey(names: list[str], jobs: int, timeout: float) -> dict[str, Any]:
    """Raw results for ``po_<name>`` of every name, then for the layer-wise twins of those that passed."""
    from optim_registry.families.pytorch_optimizer.records import PREFIX, supports_layerwise

    results = _survey_names([PREFIX + n for n in names], jobs, timeout)
    status, _ = outcomes(results)
    twins = [PREFIX + n + "_layerwise" for n in names if status[n] == "ok" and supports_layerwise(n)]
    results.update(_survey_names(twins, jobs, timeout))
    return results


def shard_safe(name: str, entry: dict[str, Any], steps: int = 12) -> str:
    """"ok" when stepping flat shards separately equals stepping the whole parameters together.

    That is what ZeRO-1/2/3 and FSDP do: each process runs the optimizer over its own flat slice of the
    parameters. A weight matrix and a bias are stepped jointly, then again as three separate optimizers
    over a 1-D split of the matrix and the bias; both must end equal. Global norms, per-tensor trust
    ratios, factored moments, shape routing and random draws all break that equality.
    """
    import torch
    from pytorch_optimizer import load_optimizer

    from optim_registry.families.pytorch_optimizer.records import FIELDS

    if name in SHARDING_LIMITS:
        return SHARDING_LIMITS[name]
    if "routing" in FIELDS.get(name, {}):
        return "routes 2-D matrices to Newton-Schulz orthogonalisation, which needs each whole matrix"
    cls = load_optimizer(name)
    lr = entry["lr_default"] or 1e-2
    extra = {"num_iterations": 10} if "num_iterations" in entry["required"] else {}
    for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        try:
            return _probe_shards(cls, lr, extra, steps, dtype, tolerance)
        except Exception as exc:  # float64 unsupported by some classes: try float32; then it is the finding
            failure = exc
    return f"{SHARDING_REASON} ({type(failure).__name__} on a flat shard)"


def _probe_shards(cls: type, lr: float, extra: dict[str, Any], steps: int, dtype: Any, tolerance: float) -> str:
    import torch

    gen = torch.Generator().manual_seed(0)
    w0, b0 = torch.randn(8, 6, generator=gen, dtype=dtype), torch.randn(6, generator=gen, dtype=dtype)
    # Shards with different gradient scales, shrinking over the steps: norm-triggered branches (rescaling
    # when the norm falls, trust ratios, global means) then give each shard a different answer.
    scale_w = torch.ones(8, 6, dtype=dtype)
    scale_w[:3] = 10.0
    grads = [
        (torch.randn(8, 6, generator=gen, dtype=dtype) * scale_w / (t + 1),
         torch.randn(6, generator=gen, dtype=dtype) * 0.1 / (t + 1))
        for t in range(steps)
    ]

    def run(split: bool) -> torch.Tensor:
        w = torch.nn.Parameter(w0.clone())
        b = torch.nn.Parameter(b0.clone())
        if split:
            flat = w.detach().reshape(-1)
            pieces = [torch.nn.Parameter(flat[:20].clone()), torch.nn.Parameter(flat[20:].clone())]
            owned = [[pieces[0]], [pieces[1]], [b]]
        else:
            owned = [[w, b]]
        opts = [cls(params, lr=lr, **extra) for params in owned]
        for gw, gb in grads:
            if split:
                flat_g = gw.reshape(-1)
                pieces[0].grad, pieces[1].grad, b.grad = flat_g[:20].clone(), flat_g[20:].clone(), gb.clone()
            else:
                w.grad, b.grad = gw.clone(), gb.clone()
            for opt in opts:
                torch.manual_seed(0)
                opt.step()
        weight = torch.cat([pieces[0].detach(), pieces[1].detach()]) if split else w.detach().reshape(-1)
        return torch.cat([weight, b.detach()])

    whole, sharded = run(False), run(True)
    start = torch.cat([w0.reshape(-1), b0])
    update = (whole - start).abs().max().item()
    diff = (whole - sharded).abs().max().item()
    # Relative to the update, not the weight: D-adaptation's first steps are a millionth of a weight.
    return "ok" if update > 0 and diff <= tolerance * update else SHARDING_REASON


# -- writing ------------------------------------------------------------------------------------------
def _literal(value: Any) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def render(catalog: dict[str, dict[str, Any]], status: dict[str, str], layerwise: dict[str, str],
           sharding: dict[str, str], version: str) -> str:
    out = [
        '"""pytorch_optimizer\'s optimizers as data. Generated by tools/gen_pytorch_optimizer_catalog.py: do not edit.',
        "",
        f"CATALOG is introspected from pytorch_optimizer {version}; STATUS and LAYERWISE were measured by running",
        "optim_registry.testing.check_optimizer through OptimTrainer on CPU (--survey), SHARDING by stepping flat",
        "shards apart (--sharding). Importing this module imports no optimizer package.",
        '"""',
        "",
        "from math import inf",
        "",
        f"LIBRARY_VERSION = {version!r}",
        "",
        "#: name -> target (module:Class), first constructor argument, description, paper, hyperparameters taken",
        "#: from TrainingArguments, the signature's lr default, required arguments, and options as",
        "#: (name, type, default, help, choices, nullable, send); group_options go into the optim_target_modules group.",
        "CATALOG = {",
    ]
    for name, entry in catalog.items():
        out.append(f"    {name!r}: {{")
        for key in ("target", "takes", "description", "paper", "hparams", "lr_default", "required"):
            out.append(f"        {key!r}: {_literal(entry[key])},")
        for key in ("options", "group_options"):
            out.append(f"        {key!r}: (")
            for option in entry[key]:
                out.append(f"            {_literal(tuple(option))},")
            out.append("        ),")
        out.append("    },")
    out.append("}")
    out += ["", "#: name -> 'ok' (trains, state round-trips, resumes exactly through OptimTrainer) or why it cannot.",
            "STATUS = {"]
    out += [f"    {n!r}: {status.get(n, 'not surveyed')!r}," for n in catalog]
    out += ["}", "", "#: name -> outcome of the '<name>_layerwise' twin, for names whose twin was surveyed.",
            "LAYERWISE = {"]
    out += [f"    {n!r}: {layerwise[n]!r}," for n in catalog if n in layerwise]
    out += ["}", "", "#: name -> 'ok' when stepping flat shards apart equals stepping the whole model (ZeRO, FSDP), or why not.",
            "SHARDING = {"]
    out += [f"    {n!r}: {sharding[n]!r}," for n in catalog if n in sharding]
    out += ["}", ""]
    return "\n".join(out)


def _existing() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    try:
        sys.path.insert(0, str(ROOT))
        from optim_registry.families.pytorch_optimizer import catalog as old

        return dict(old.STATUS), dict(old.LAYERWISE), dict(getattr(old, "SHARDING", {}))
    except Exception:  # first run
        return {}, {}, {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survey", action="store_true", help="measure every name through OptimTrainer")
    parser.add_argument("--only", default="", help="comma-separated names to survey (others keep their status)")
    parser.add_argument("--survey-one", metavar="NAME", help="survey these registry names (comma-separated) in this process, print JSON lines")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds allowed per name")
    parser.add_argument("--report", type=Path, help="write the raw survey results (JSON) here")
    parser.add_argument("--from-report", type=Path, help="take the outcomes from raw survey results saved earlier")
    parser.add_argument("--sharding", action="store_true", help="probe every ok name's update on flat shards (fast)")
    ns = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if ns.survey_one:
        for name in ns.survey_one.split(","):
            print(json.dumps(survey_one(name)), flush=True)
        return 0
    catalog = introspect()
    status, layerwise, sharding = _existing()
    status = {n: s for n, s in status.items() if n in catalog}
    version = library_version()
    results: dict[str, Any] | None = None
    if ns.from_report:
        results = json.loads(ns.from_report.read_text())
    elif ns.survey or ns.only:
        # Write the introspected part first: the survey builds its records from it.
        OUT.write_text(render(catalog, status, layerwise, sharding, version))
        names = [n.strip() for n in ns.only.split(",") if n.strip()] or list(catalog)
        started = time.perf_counter()
        results = survey(names, ns.jobs, ns.timeout)
        print(f"survey: {len(names)} names in {time.perf_counter() - started:.0f}s", flush=True)
        if ns.report:
            ns.report.write_text(json.dumps(results, indent=1, sort_keys=True))
    if results is not None:
        new_status, new_layerwise = outcomes(results)
        status.update(new_status)
        for n in new_status:
            layerwise.pop(n, None)
        layerwise.update(new_layerwise)
    if results is not None or ns.sharding:
        sharding = {n: shard_safe(n, catalog[n]) for n in catalog if status.get(n) == "ok"}
    OUT.write_text(render(catalog, status, layerwise, sharding, version))
    ok = sum(1 for n in catalog if status.get(n) == "ok")
    safe = sum(1 for n in catalog if sharding.get(n) == "ok")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(catalog)} names, {ok} ok, {safe} shard-safe")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
