"""Generate ``optim_registry/builtin/pytorch_optimizer_catalog.py`` from the installed pytorch_optimizer.

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
import enum
import inspect
import json
import math
import re
import subprocess
import sys
import time
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "optim_registry" / "builtin" / "pytorch_optimizer_catalog.py"

#: TrainingArguments' defaults: a constructor whose own default equals one takes that value from the arguments.
HF_DEFAULTS = {"betas": (0.9, 0.999), "eps": 1e-8}

#: Steps of the second survey run for names whose weights did not all move in the first four.
LONG_RUN = 32

#: Optimizers that leave some weights fixed on purpose: for them an unmoved weight is not a failure.
FROZEN_BY_DESIGN = {
    "sara": "updates only the weights below `threshold` in magnitude (sparse fine-tuning)",
    "sgdsai": "scales each tensor by its initial gradient signal-to-noise ratio, about zero for 1-D tensors",
}

#: Why a name cannot train and resume under the Trainer, written out where the survey's raw failure is cryptic
#: or a registry name does the same job.
#: Used only while the survey confirms the failure; a name that starts passing becomes "ok".
PROTOCOL_LIMITS = {
    "adahessian": "needs loss.backward(create_graph=True) for its Hessian-vector products; the Trainer's "
    "backward frees the graph",
    "sophiah": "needs loss.backward(create_graph=True) for its Hessian-vector products; the Trainer's "
    "backward frees the graph",
    "alig": "needs a closure returning the loss at step(closure); the Trainer calls step() without one",
    "lbfgs": "needs a closure re-evaluating the loss at step(closure); the Trainer calls step() without one",
    "bsam": "has a three-stage step (first_step / second_step around two backward passes) and needs the "
    "dataset size num_data; the Trainer calls step() once per backward",
    "galore": "keeps GaLoreProjector objects in its state, which torch.load(weights_only=True) refuses, so a "
    "checkpoint cannot be resumed; use galore_adamw (same method, resumes exactly)",
    "apollo": "keeps GaLoreProjector objects in its state, which torch.load(weights_only=True) refuses, so a "
    "checkpoint cannot be resumed; use apollo_adamw (same method, resumes exactly)",
    "fira": "keeps GaLoreProjector objects in its state, which torch.load(weights_only=True) refuses, so a "
    "checkpoint cannot be resumed; use galore_adamw or apollo_adamw",
    "conda": "keeps GaLoreProjector objects in its state, which torch.load(weights_only=True) refuses, so a "
    "checkpoint cannot be resumed; use galore_adamw or apollo_adamw",
    "scalableshampoo": "keeps PreConditioner objects in its state, which torch.load(weights_only=True) refuses, so "
    "a checkpoint cannot be resumed; use po_shampoo or po_soap",
    "spectralsphere": "only accepts 2-D parameters (ValueError on the model's norm weights and biases); build it "
    "yourself on the weight matrices next to another optimizer",
    "lorarite": "optimises LoRA factor pairs (lora_l_dim / lora_r_dim): a full model's weight matrices are not "
    "LoRA factors",
    "lomo": "updates the weights inside backward (fused_backward(loss, lr)), which accelerate drives only for "
    "lomo_optim's classes; use optim='lomo'",
    "adalomo": "updates the weights inside backward (fused_backward(loss, lr)), which accelerate drives only for "
    "lomo_optim's classes; use optim='adalomo'",
    "demo": "exchanges compressed momentum between processes: it needs an initialised torch.distributed "
    "process group (and the einops package)",
    "distributedmuon": "shards Newton-Schulz work across processes: it needs an initialised torch.distributed "
    "process group; use po_muon (or muon) instead",
}


# -- introspection ------------------------------------------------------------------------------------
def _docstring_args(doc: str) -> dict[str, str]:
    """``{"lr": "Learning rate.", ...}`` from a Google-style ``Args:`` section."""
    out: dict[str, str] = {}
    lines = (doc or "").splitlines()
    inside, current, indent = False, None, None
    for line in lines:
        stripped = line.strip()
        if stripped == "Args:":
            inside = True
            continue
        if not inside:
            continue
        if not stripped:
            current = None
            continue
        lead = len(line) - len(line.lstrip())
        if indent is None:
            indent = lead
        if lead < indent or (lead == indent and stripped.endswith(":") and " " not in stripped):
            break  # the next section (Returns:, Examples:)
        match = re.match(r"^([*\w]+)(?: \([^)]*\))?:\s*(.*)$", stripped)
        if lead == indent and match:
            current = match.group(1).lstrip("*")
            out[current] = match.group(2)
        elif current is not None:
            out[current] = f"{out[current]} {stripped}".strip()
    return out


def _first_line(doc: str | None, fallback: str) -> str:
    lines = [ln.strip() for ln in (doc or "").strip().splitlines() if ln.strip()]
    return lines[0] if lines else fallback


def _paper(doc: str | None) -> str:
    found = re.search(r"(https?://arxiv\.org/(?:abs|pdf)/(\d{4}\.\d{4,5})|arXiv:\s*(\d{4}\.\d{4,5}))", doc or "")
    if found:
        return f"arXiv:{found.group(2) or found.group(3)}"
    url = re.search(r"https?://[^\s)>]+", doc or "")
    return url.group(0).rstrip(".,") if url else ""


def _union_args(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation, else None."""
    members = [a for a in _union_args(annotation) if a is not type(None)]
    if members and all(typing.get_origin(a) is typing.Literal for a in members):
        return tuple(v for a in members for v in typing.get_args(a))
    return None


def _type_from_annotation(annotation: Any) -> str:
    import torch

    members = [a for a in _union_args(annotation) if a is not type(None)]
    for kind, py in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if members and all(a is py or (kind == "float" and a is torch.Tensor) for a in members):
            return kind
    if members and members[0] is float:  # float | Tensor | Callable ...: the number is what a string can say
        return "float"
    if members and all(typing.get_origin(a) is typing.Literal for a in members):
        values = [v for a in members for v in typing.get_args(a)]
        return "str" if all(isinstance(v, str) for v in values) else "any"
    if members and all(a is torch.dtype for a in members):
        return "dtype"
    if members and typing.get_origin(members[0]) is tuple:
        inner = typing.get_args(members[0])
        return "ints" if inner and all(a is int for a in inner if a is not Ellipsis) else "floats"
    return "any"


def _option(pname: str, param: inspect.Parameter, help_text: str) -> tuple[Any, ...]:
    """``(name, type, default, help, choices, nullable, send)``: plain literals only, so the catalogue is data.

    ``send`` marks an option always passed: an ``IntEnum`` default is replaced by its integer, which the
    classes accept, because an enum in the param groups makes ``torch.load(weights_only=True)`` refuse the
    checkpoint.
    """
    import torch

    annotation, default = param.annotation, param.default
    send = False
    required = default is inspect.Parameter.empty
    nullable = type(None) in _union_args(annotation) or default is None
    choices = _literal_choices(annotation)
    if isinstance(default, enum.Enum):
        members = list(type(default))
        names = ", ".join(f"{int(m)}={m.name}" for m in members)
        help_text = f"{help_text} ({names})".strip()
        kind, value, choices, send = "int", int(default), tuple(int(m) for m in members), True
    elif isinstance(default, bool):
        kind, value = "bool", default
    elif isinstance(default, int):
        kind, value = ("float" if _type_from_annotation(annotation) == "float" else "int"), default
    elif isinstance(default, float):
        kind, value = "float", default
    elif isinstance(default, str):
        kind, value = "str", default
    elif isinstance(default, tuple) and default and all(isinstance(v, (int, float)) for v in default):
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in default)
        kind, value = ("ints" if ints else "floats"), tuple(default)
    elif isinstance(default, torch.dtype):
        kind, value = "dtype", str(default).removeprefix("torch.")
    elif default is None or required:
        kind, value = _type_from_annotation(annotation), None
    else:  # a callable or an object: not expressible in optim_args strings; the library's default stays
        kind, value, nullable = "any", None, True
        shown = getattr(default, "__name__", None) or repr(default)
        help_text = f"{help_text} (library default: {shown}; pass a Python object in a dict optim_args)".strip()
    if choices is not None and kind not in ("str", "int"):
        choices = None
    return (pname, kind, value, help_text, choices, bool(nullable), send)


def _group_options(cls: type, signature: inspect.Signature) -> tuple[tuple[Any, ...], ...]:
    """Low-rank projection settings the class reads from each param group (``group['rank']`` ...).

    GaLore, APOLLO and Fira project only the groups that carry ``rank``; without them they are plain AdamW.
    These keys are not constructor arguments, so they are read from the class's source and typed from
    ``GaLoreProjector``'s signature; the registry puts them on the ``optim_target_modules`` weights.
    """
    from pytorch_optimizer.optimizer.utils.galore import GaLoreProjector

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # pragma: no cover - classes without source
        return ()
    read = set(re.findall(r"group\[['\"](\w+)['\"]\]", source))
    read |= set(re.findall(r"['\"](\w+)['\"] (?:not )?in group", source))
    projector = inspect.signature(GaLoreProjector.__init__, eval_str=True)
    helps = _docstring_args(GaLoreProjector.__doc__ or "")
    out = []
    for pname, param in projector.parameters.items():
        if pname in read and pname not in signature.parameters and param.kind is param.POSITIONAL_OR_KEYWORD:
            option = _option(pname, param, helps.get(pname, ""))
            out.append((*option[:6], True))  # always sent: the group needs them to project at all
    return tuple(out)


def describe(name: str, cls: type) -> dict[str, Any]:
    """The catalogue entry of one optimizer class."""
    try:
        signature = inspect.signature(cls.__init__, eval_str=True)
    except (NameError, TypeError):  # pragma: no cover - unresolvable string annotations
        signature = inspect.signature(cls.__init__)
    params = [p for p in signature.parameters.values() if p.name != "self"]
    takes = params[0].name if params else "params"
    helps = _docstring_args(cls.__doc__ or "")
    names = {p.name for p in params}
    hparams = ["lr"] if "lr" in names else []
    if "weight_decay" in names:
        hparams.append("weight_decay")
    for key, hf_default in HF_DEFAULTS.items():
        param = signature.parameters.get(key)
        if param is not None and param.default == hf_default and not isinstance(param.default, bool):
            hparams.append(key)
    options, required = [], []
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in hparams:
            continue
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        options.append(_option(p.name, p, helps.get(p.name, "")))
    lr = signature.parameters.get("lr")
    lr_default = lr.default if lr is not None and isinstance(lr.default, (int, float)) else None
    return {
        "target": f"{cls.__module__}:{cls.__qualname__}",
        "takes": takes,
        "description": _first_line(cls.__doc__, cls.__name__),
        "paper": _paper(cls.__doc__),
        "hparams": tuple(sorted(hparams)),
        "lr_default": float(lr_default) if lr_default is not None else None,
        "required": tuple(required),
        "options": tuple(options),
        "group_options": _group_options(cls, signature),
    }


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
    from optim_registry.builtin import layerwise_variant
    from optim_registry.builtin.pytorch_optimizer import PREFIX, record
    from optim_registry.builtin.pytorch_optimizer_catalog import CATALOG
    from optim_registry.catalog import register_optimizer
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
    from optim_registry.builtin.pytorch_optimizer import PREFIX

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
    from optim_registry.builtin.pytorch_optimizer import PREFIX, supports_layerwise

    results = _survey_names([PREFIX + n for n in names], jobs, timeout)
    status, _ = outcomes(results)
    twins = [PREFIX + n + "_layerwise" for n in names if status[n] == "ok" and supports_layerwise(n)]
    results.update(_survey_names(twins, jobs, timeout))
    return results


# -- sharding probe -----------------------------------------------------------------------------------
#: Why a name's update cannot be split across shards, where the probe cannot build it from a flat list.
SHARDING_LIMITS = {
    "adammini": "partitions the model into blocks by parameter name and shape",
    # Per-tensor or global branches the random probe does not take (read from the library's source).
    "adamp": "projects each whole tensor when its cosine with the gradient is small; sharded state changes that",
    "sgdp": "projects each whole tensor when its cosine with the gradient is small; sharded state changes that",
    "dadaptadagrad": "estimates one step size d from sums over every parameter; shards would each estimate their own",
    "dadaptadan": "estimates one step size d from sums over every parameter; shards would each estimate their own",
    "stableadamw": "clips each tensor's step by the RMS of its whole update; sharded state changes that",
    "swats": "switches to SGD from each whole tensor's projected update; sharded state changes that",
}

SHARDING_REASON = "not elementwise: split into flat shards, its update changes (whole-tensor or global reductions)"


def shard_safe(name: str, entry: dict[str, Any], steps: int = 12) -> str:
    """"ok" when stepping flat shards separately equals stepping the whole parameters together.

    That is what ZeRO-1/2/3 and FSDP do: each process runs the optimizer over its own flat slice of the
    parameters. A weight matrix and a bias are stepped jointly, then again as three separate optimizers
    over a 1-D split of the matrix and the bias; both must end equal. Global norms, per-tensor trust
    ratios, factored moments, shape routing and random draws all break that equality.
    """
    import torch
    from pytorch_optimizer import load_optimizer

    from optim_registry.builtin.pytorch_optimizer import FIELDS

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
        from optim_registry.builtin import pytorch_optimizer_catalog as old

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
