"""The ``optim-registry`` command line: ``list``, ``show``, ``compare``, ``memory`` and ``groups``.

``list`` and ``show`` read the registry records only: they import no optimizer package (``show`` of a
plugin name imports that plugin, to read its options). ``compare`` trains the bundled tiny Llama with
each optimizer (see ``compare.py``); ``memory`` estimates optimizer-state memory for a model shape
built on the meta device; ``groups`` prints the param groups a name and ``optim_groups`` rules give a
model shape (also on the meta device).

Run it as ``optim-registry ...`` once installed, or ``python -m optim_registry.cli ...`` from a checkout.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

_WIDTH = 100


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = (), width: int | None = None
) -> str:
    """Plain aligned columns; ``right`` lists the columns to right-align (numbers). With ``width``, the
    last column wraps onto continuation lines so each line fits."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    if width is not None and len(header) > 1:
        lead = sum(max(len(r[i]) for r in cells) + 2 for i in range(len(header) - 1))
        room = max(20, width - lead)
        wrapped = [cells[0]]
        for row in cells[1:]:
            pieces = textwrap.wrap(row[-1], room) or [""]
            wrapped.append(row[:-1] + [pieces[0]])
            wrapped += [[""] * (len(row) - 1) + [p] for p in pieces[1:]]
        cells = wrapped
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


# -- list -----------------------------------------------------------------------------------------
def _list_rows(family: str | None, available_only: bool) -> list[dict[str, Any]]:
    from .listing import layerwise_twins, list_optimizers
    from .runnable import can_run

    infos = list_optimizers()
    twins = layerwise_twins(infos)
    rows = []
    for info in infos:
        if family is not None and info.family != family:
            continue
        runnable, _ = can_run(info)
        if available_only and not runnable:
            continue
        record = info.to_dict()
        record["layerwise_twin"] = twins.get(info.name)
        record["runnable_here"] = runnable
        rows.append(record)
    return rows


def cmd_list(ns: argparse.Namespace) -> int:
    rows = _list_rows(ns.family, ns.available)
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        what = f" in family {ns.family!r}" if ns.family else ""
        print(f"no optimizer names{what}{' available here' if ns.available else ''}", file=sys.stderr)
        return 1 if ns.family else 0
    table = []
    for r in rows:
        if r["layerwise"]:
            layerwise = "yes"
        elif r["layerwise_twin"]:
            layerwise = "twin"
        else:
            layerwise = "-"
        table.append((
            r["name"],
            r["family"],
            ", ".join(r["requires"]) or "-",
            "yes" if r["available"] else "no",
            "n/a" if r["unsupported"] else "GPU" if r["needs_gpu"] else "CPU",
            "?" if r["state_bytes"] is None else f"{r['state_bytes']:g}",
            layerwise,
            r["source"],
        ))
    print(format_table(("name", "family", "package", "installed", "needs", "state B/param", "layer-wise", "source"),
                       table, right=(5,)))
    missing = sorted({r["install"] for r in rows if r["install"]})
    print()
    print(f"{len(rows)} names, {sum(r['runnable_here'] for r in rows)} runnable here. "
          "layer-wise: yes = steps each parameter inside backward; twin = NAME_layerwise exists. "
          "state B/param: optimizer-state bytes per fp32 parameter.")
    if any(r["unsupported"] for r in rows):
        print("needs n/a: cannot train through a Trainer (`optim-registry show NAME` says why).")
    for r in rows:
        if r.get("conflict"):
            print(f"conflict: {r['name']}: {r['conflict']}")
    for line in missing:
        print(f"to install: {line}")
    print("`optim-registry show NAME` for the options of one name.")
    return 0


# -- show -----------------------------------------------------------------------------------------
def _resolve(name: str) -> Any:
    """The record for ``name``; prints the registry's message (closest names) and returns None if unknown."""
    from .registry import optimizers

    try:
        optimizers.check_name(name)
        return optimizers.get(name)
    except ValueError as exc:  # unknown name, or a plugin that cannot load (PluginError)
        print(f"error: {exc}", file=sys.stderr)
        return None


def show_dict(spec: Any) -> dict[str, Any]:
    """Everything ``show`` prints, as data (``show --json``)."""
    from . import docgen
    from .listing import info

    i = info(spec)
    return {
        "name": spec.name,
        "family": spec.family,
        "description": " ".join(spec.description.split()),
        "paper": spec.paper,
        "source": spec.source,
        "requires": i.requires,
        "installed": i.available,
        "install": i.install,
        "needs_gpu": spec.needs_gpu,
        "unsupported": spec.unsupported,
        "training_arguments": sorted(spec.hparams),
        "options": {k: {"type": t, "default": d, "meaning": m} for k, t, d, m in docgen.option_rows(spec)},
        "parameter_groups": docgen.grouping_text(spec),
        "optim_groups_keys": _rule_keys(spec),
        "protocol": spec.protocol,
        "protocol_text": docgen.protocol_text(spec),
        "distributed": docgen.distributed_support(spec),
        "fsdp2": {"math": spec.distributed.fsdp2_math,
                  "how": docgen.fsdp2_evidence(spec) if spec.distributed.fsdp2 is True else None,
                  "checkpoint": docgen.fsdp2_checkpoint_evidence(spec) if spec.distributed.fsdp2 is True else None},
        "zero": {"math": spec.distributed.zero_math,
                 "how": docgen.zero_evidence(spec)
                 if any(getattr(spec.distributed, f"zero{n}") is True for n in (1, 2, 3)) else None},
        "state_bytes": spec.state_bytes,
        "resume": spec.resume,
        "notes": docgen.notes(spec),
        "layerwise": spec.layerwise,
        "base": spec.base,
        "snippet": docgen.snippet(spec),
    }


def _rule_keys(spec: Any) -> list[str]:
    """The keys an ``optim_groups`` rule accepts for ``spec`` (none when the name refuses rules)."""
    from .group_rules import accepted_keys
    from .spec import group_option_table

    return [] if spec.needs_model else accepted_keys(group_option_table(spec))


def cmd_show(ns: argparse.Namespace) -> int:
    from . import docgen

    spec = _resolve(ns.name)
    if spec is None:
        return 2
    data = show_dict(spec)
    if ns.json:
        print(json.dumps(data, indent=2, default=str))
        return 0

    def para(label: str, text: str) -> None:
        print(textwrap.fill(text, _WIDTH, initial_indent=f"{label:<13}", subsequent_indent=" " * 13))

    print(f"{spec.name}  ({docgen.family_title(spec.family)}; source: {spec.source})")
    print()
    print(textwrap.fill(data["description"], _WIDTH))
    print()
    para("paper", spec.paper or "-")
    installed = "installed" if data["installed"] else f"NOT installed: {data['install']}"
    para("requires", f"{docgen.requirement_text(spec)} ({installed})" if spec.requires else docgen.requirement_text(spec))
    para("runs on", f"GPU only: {spec.needs_gpu}" if spec.needs_gpu else "CPU and GPU")
    if spec.unsupported:
        para("NOT USABLE", f"cannot train through a Trainer: {spec.unsupported}")
    para("uses", "TrainingArguments " + docgen.hparam_text(spec))
    para("groups", docgen.grouping_text(spec))
    if data["optim_groups_keys"]:
        para("rule keys", "optim_groups rules take " + ", ".join(data["optim_groups_keys"]))
    para("protocol", f"{spec.protocol}: {docgen.protocol_text(spec)}")
    para("state", docgen.state_text(spec))
    para("resume", spec.resume)
    for i, line in enumerate(docgen.distributed_summary(spec)):
        para("distributed" if i == 0 else "", line)
    for note in data["notes"]:
        para("note", note)
    print()
    rows = docgen.option_rows(spec)
    if rows:
        print("optim_args (\"key=value,key=value\" or a dict):")
        print(textwrap.indent(format_table(("key", "type", "default", "meaning"), rows, width=_WIDTH - 2), "  "))
    else:
        print("optim_args: none accepted")
    print()
    print("TrainingArguments:")
    print(textwrap.indent(docgen.snippet(spec), "  "))
    return 0


# -- memory ---------------------------------------------------------------------------------------
def _load_model_config(text: str) -> tuple[str, Any]:
    """A preset name of ``demo.model_presets`` or a path to a config.json (or its folder)."""
    from pathlib import Path

    from . import demo

    if text in demo.model_presets:
        return text, demo.preset_config(text)
    path = Path(text)
    if not path.exists():
        raise ValueError(
            f"--model-config {text!r} is neither a preset ({', '.join(sorted(demo.model_presets))}) nor an existing "
            "path to a config.json"
        )
    from transformers import AutoConfig

    return str(path), AutoConfig.from_pretrained(str(path))


def _meta_model(config: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from . import demo

    if isinstance(config, LlamaConfig):
        return demo.build_meta_model(config)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


#: Optimizer-state bytes per parameter assumed for parameters outside the low-rank targets (AdamW).
_DENSE_BYTES = 8.0


def estimate_state(spec: Any, model: Any, target_modules: Sequence[str]) -> dict[str, Any]:
    """Predicted optimizer-state bytes of ``spec`` on ``model`` (an estimate; see ``memory --help``)."""
    from .labels import label_parameters

    rank_option = next((o for o in spec.options if o.role == "rank"), None) if spec.target_modules else None
    low_rank = rank_option is not None and rank_option.default is not None
    table = label_parameters(model, target_patterns=list(target_modules) if low_rank else None,
                             subject=f"optim={spec.name!r}")
    n_params = sum(row.numel for row in table)
    if low_rank:
        rank = int(rank_option.default)
        total = 0.0
        targets = 0
        for row in table:
            p = table.param(row.name)
            if row.target and row.ndim == 2:
                targets += 1
                big, small = max(p.shape), min(p.shape)
                r = min(rank, small)
                # Adam moments of the rank-r projected gradient (2 x big x r) + the projector (small x r).
                total += 4.0 * r * (2 * big + small)
            else:
                total += _DENSE_BYTES * row.numel
        how = (f"rank {rank} on {targets} target matrices (2 moments of the projected gradient + projector), "
               f"{_DENSE_BYTES:g} B/param elsewhere")
    elif spec.state_bytes is not None:
        total = spec.state_bytes * n_params
        how = f"{spec.state_bytes:g} B/param x {n_params:,} trainable parameters"
    else:
        total, how = float("nan"), "the record has no state_bytes figure"
    return {"name": spec.name, "params": n_params, "bytes": total,
            "bytes_per_param": total / n_params if n_params else float("nan"), "how": how}


def _human(n: float) -> str:
    if n != n:  # nan
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return str(n)


def _count(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def cmd_memory(ns: argparse.Namespace) -> int:
    from . import compare

    names = _split(ns.optim) or list(compare.DEFAULT_OPTIMS)
    try:
        label, config = _load_model_config(ns.model_config)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = _meta_model(config)
    targets = _split(ns.target_modules)
    results, problems = [], []
    for name in names:
        spec = _resolve(name)
        if spec is None:
            problems.append(name)
            continue
        try:
            results.append(estimate_state(spec, model, targets))
        except ValueError as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            problems.append(name)
    n_params = sum(p.numel() for p in model.parameters())
    if ns.json:
        print(json.dumps({"model": label, "parameters": n_params, "estimates": results}, indent=2))
    else:
        print(f"model {label}: {_count(n_params)} parameters ({n_params:,}), built on the meta device")
        rows = [(r["name"], f"{r['bytes_per_param']:.3g}", _human(r["bytes"]), r["how"]) for r in results]
        print(format_table(("optimizer", "B/param", "state", "how"), rows, right=(1, 2)))
        print("\nEstimates of optimizer state only (not weights, gradients or activations), for fp32 weights, "
              "from each record's measured bytes per parameter; low-rank names from their default rank.")
    return 2 if problems else 0


# -- groups ---------------------------------------------------------------------------------------
def parse_lora(text: str) -> dict[str, Any]:
    """``r=8,alpha=16,target=q_proj,v_proj`` -> peft ``LoraConfig`` keywords (a bare word after ``target=``
    is one more target module)."""
    out: dict[str, Any] = {"r": 8, "target_modules": []}
    key = None
    for token in _split(text):
        if "=" in token:
            key, _, value = token.partition("=")
            key = key.strip()
        elif key in ("target", "target_modules"):
            value = token
        else:
            raise ValueError(f"--lora token {token!r} is not key=value (keys: r, alpha, dropout, target)")
        value = value.strip()
        if key == "r":
            out["r"] = int(value)
        elif key in ("alpha", "lora_alpha"):
            out["lora_alpha"] = int(value)
        elif key in ("dropout", "lora_dropout"):
            out["lora_dropout"] = float(value)
        elif key in ("target", "target_modules"):
            out["target_modules"].append(value)
        else:
            raise ValueError(f"--lora key {key!r} is not one of r, alpha, dropout, target")
    if not out["target_modules"]:
        out["target_modules"] = "all-linear"
    return out


def _short_names(names: Sequence[str], n: int = 8) -> str:
    """A few names, layer numbers folded (``model.layers.*.self_attn.q_proj.weight``)."""
    import re

    folded: dict[str, None] = {}
    for name in names:
        folded.setdefault(re.sub(r"\.\d+\.", ".*.", name))
    picked = list(folded)[:n]
    more = len(folded) - len(picked)
    return ", ".join(picked) + (f", ... (+{more} more)" if more > 0 else "")


def describe_groups(ns: argparse.Namespace) -> dict[str, Any]:
    """The groups ``--optim`` and the rules give the model (built on the meta device), as data."""
    import tempfile

    from . import build
    from .plan import plan_of
    from .trainer import TrainingArguments

    label, config = _load_model_config(ns.model_config)
    model = _meta_model(config)
    if ns.dtype != "float32":
        import torch

        model = model.to(getattr(torch, ns.dtype))  # Q-GaLore and FlashOptim decide by the weights' dtype
    if ns.lora:
        import torch
        from peft import LoraConfig, get_peft_model

        with torch.device("meta"):
            model = get_peft_model(model, LoraConfig(**parse_lora(ns.lora)))
        label += f" + LoRA ({ns.lora})"
    kwargs: dict[str, Any] = {"optim": ns.optim, "report_to": [], "optim_groups": ns.optim_groups,
                              "optim_args": ns.optim_args}
    if ns.optim_target_modules:
        targets = _split(ns.optim_target_modules)
        kwargs["optim_target_modules"] = targets[0] if len(targets) == 1 and targets[0] == "all-linear" else targets
    if ns.learning_rate is not None:
        kwargs["learning_rate"] = ns.learning_rate
    if ns.weight_decay is not None:
        kwargs["weight_decay"] = ns.weight_decay
    from .registry import optimizers

    if optimizers.get(ns.optim).layerwise:
        kwargs["max_grad_norm"] = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(tmp, **kwargs)
        spec = plan_of(args).spec
        if spec.needs_model:
            raise ValueError(f"optim={ns.optim!r} is built from the whole model: it has no param groups to show")
        _cls, built, ctx = build.resolve(args, model)
    groups = built.get("params") if isinstance(built.get("params"), list) else ctx.groups or []
    from .labels import group_layout

    table = ctx.labels
    routes = build.matrix_routes(ctx) if spec.routing else {}
    rows = []
    for i, (g, entry) in enumerate(zip(groups, group_layout(groups, model))):
        entry.pop("aliases")
        if entry["lr"] is None:
            entry["lr"] = float(args.learning_rate)
        if entry["weight_decay"] is None:
            entry["weight_decay"] = float(args.weight_decay)
        if routes:
            kinds = dict.fromkeys(routes.get(table.name_of(p), "?") for p in g["params"])
            entry["options"]["routes"] = "+".join(kinds)
        kinds = dict.fromkeys(table.row_of(p).kind if table.row_of(p) else "?" for p in g["params"])
        rows.append({"group": i, "tensors": len(entry["names"]), "kinds": "+".join(kinds), **entry})
    return {"model": label, "optim": ns.optim, "optim_groups": ns.optim_groups, "groups": rows}


def cmd_groups(ns: argparse.Namespace) -> int:
    try:
        data = describe_groups(ns)
    except (ValueError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(f"optim={data['optim']} on {data['model']} (meta device)"
          + (f", optim_groups={data['optim_groups']}" if data["optim_groups"] else ""))
    table = []
    for r in data["groups"]:
        options = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        # One wrapped column: the names, then the group's options (projection keys can be long).
        text = _short_names(r["names"]) + (f"  [options: {options}]" if options else "")
        table.append((r["group"], f"{r['tensors']} ({_count(r['elements'])})", f"{float(r['lr']):.4g}",
                      f"{float(r['weight_decay']):g}", text))
    print(format_table(("group", "params", "lr", "wd", "parameters and options"), table, right=(0, 1, 2, 3),
                       width=_WIDTH + 20))
    return 0


# -- compare --------------------------------------------------------------------------------------
def cmd_compare(ns: argparse.Namespace) -> int:
    from . import compare

    try:
        lrs = compare.parse_lr(ns.lr)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = compare.compare(
            _split(ns.optims) or list(compare.DEFAULT_OPTIMS),
            steps=ns.steps,
            out=ns.out,
            lr=lrs,
            batch_size=ns.batch_size,
            seq_len=ns.seq_len,
            seed=ns.seed,
            threads=ns.threads,
            progress=not ns.no_progress,
        )
    except ValueError as exc:  # settings the data or model refuse (failures of one name are reported inside)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return report.exit_code


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


# -- entry point ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import compare

    parser = argparse.ArgumentParser(
        prog="optim-registry",
        description="Every optim=\"...\" string for Hugging Face Trainers: list them, read one, compare them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="every registered optimizer name, with availability and install hint")
    p.add_argument("--family", help="only this family (e.g. torch, bitsandbytes, low_rank)")
    p.add_argument("--available", action="store_true", help="only names that can run here (installed, no GPU needed)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="one name: description, optim_args, groups, protocol, a TrainingArguments snippet")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "compare",
        help="train the bundled tiny Llama with each optimizer; table + loss curves",
        description="Train the bundled tiny Llama on the bundled text with each optimizer (same seed, same "
        "data), then print a table and write results.md, results.json and loss_curves.png into --out.",
    )
    p.add_argument("--optims", help=f"comma-separated names (default: {','.join(compare.DEFAULT_OPTIMS)})")
    p.add_argument("--steps", type=_positive, default=compare.DEFAULT_STEPS, help="optimizer steps per name (default: %(default)s)")
    p.add_argument("--out", default="compare_out", help="output folder (default: %(default)s)")
    p.add_argument("--lr", help="learning rate for every name (3e-3), or per name (adamw_torch=3e-3,sgd=0.5); "
                   "default: a per-family rate tuned for the tiny model")
    p.add_argument("--batch-size", type=_positive, default=compare.DEFAULT_BATCH, help="default: %(default)s")
    p.add_argument("--seq-len", type=_positive, default=compare.DEFAULT_SEQ_LEN, help="characters per sequence (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="model and data seed, the same for every name (default: 0)")
    p.add_argument("--threads", type=_positive, default=1, help="torch threads; 1 is fastest for the tiny model (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "memory",
        help="estimate optimizer-state memory for a model shape (meta device, no weights allocated)",
        description="Estimate optimizer-state memory: the record's measured bytes per parameter x trainable "
        "parameters; for low-rank names (GaLore, APOLLO) the rank-r formula on the target matrices. An estimate.",
    )
    p.add_argument("--optim", help="comma-separated names (default: the compare set)")
    p.add_argument("--model-config", default="llama-7b",
                   help="a preset (tiny, llama-7b, llama-70b) or a path to a config.json (default: %(default)s)")
    p.add_argument("--target-modules", default="self_attn,mlp",
                   help="optim_target_modules for low-rank names (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser(
        "groups",
        help="the param groups a name and optim_groups rules give a model shape (meta device)",
        description="Build the model on the meta device and print the param groups the optimizer would get: "
        "for each group the parameters (count and a few names), its rate, weight decay and options.",
    )
    p.add_argument("--optim", required=True, help="an optimizer name")
    p.add_argument("--optim-groups", help='rules as JSON, e.g. \'[{"loraplus_lr_ratio": 16}]\'')
    p.add_argument("--optim-args", help="optim_args as 'k=v,k=v'")
    p.add_argument("--optim-target-modules", help="comma-separated optim_target_modules, or all-linear")
    p.add_argument("--model-config", default="tiny",
                   help="a preset (tiny, llama-7b, llama-70b) or a path to a config.json (default: %(default)s)")
    p.add_argument("--lora", help="wrap the model in PEFT LoRA first: r=8,alpha=16,target=q_proj,v_proj")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the weights (default: %(default)s)")
    p.add_argument("--learning-rate", type=float, help="TrainingArguments.learning_rate (default: its default)")
    p.add_argument("--weight-decay", type=float, help="TrainingArguments.weight_decay (default: its default)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    ns = build_parser().parse_args(argv)
    try:
        return int(ns.func(ns) or 0)
    except BrokenPipeError:  # `optim-registry list | head`: the reader left; not an error worth a traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
