"""Generate the optimizer reference pages from the registry records, so the docs cannot drift.

``python -m optim_registry.docgen`` writes ``docs/optimizers/<family>.md``, ``docs/optimizers/index.md``
and the generated sections of ``docs/distributed.md`` and ``docs/schedulers.md`` (between
``<!-- BEGIN GENERATED -->`` and ``<!-- END GENERATED -->``). ``--check`` only compares and exits 1
when a file is stale; ``tests/test_docs.py`` does the same.

Only built-in records are documented (installed plugins do not change the pages), and nothing that
depends on this machine (what is installed, whether a GPU exists) is written. The helpers that turn a
record into words (``grouping_text``, ``snippet`` ...) are shared with ``optim-registry show``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .spec import OptimizerSpec, Option

#: Title and one paragraph per family; a family missing here gets its name as title.
FAMILIES: dict[str, tuple[str, str]] = {
    "torch": (
        "PyTorch and transformers built-ins",
        "Optimizers that ship with torch (and transformers' Adafactor). Nothing to install.",
    ),
    "bitsandbytes": (
        "bitsandbytes: 8-bit, paged and 32-bit optimizers",
        "Block-wise quantised optimizer state from bitsandbytes. 8-bit names keep `nn.Embedding` state in "
        "32 bits, as transformers does. All run on CPU with bitsandbytes 0.50; paged names fall back to "
        "non-paged memory there.",
    ),
    "low_rank": (
        "Low-rank projection: GaLore and APOLLO",
        "Gradients of the `optim_target_modules` Linear weights are projected to a low rank, so the "
        "optimizer state of those weights is small. They need `optim_target_modules` "
        "([target_modules.md](../target_modules.md)).",
    ),
    "lomo": (
        "LOMO and AdaLomo: updates fused into backward",
        "The weights change inside backward, so gradients are never stored for the whole model. "
        "No gradient accumulation; built with the model.",
    ),
    "schedulefree": (
        "Schedule-free optimizers",
        "No decaying schedule needed: the optimizer averages its iterates. It must be switched to "
        "`eval()` before evaluating and saving; `OptimTrainer` does that.",
    ),
    "optimi": (
        "torch-optimi",
        "Optimizers from torch-optimi with Kahan summation and fully decoupled weight decay; run on CPU "
        "with `triton=False`, which the registry sets for CPU parameters.",
    ),
    "beyond": (
        "Beyond Adam: Muon, Dion, CAME, ADOPT",
        "Newer optimizers, some with their own parameter split (Muon: 2-D hidden matrices on Muon, the "
        "rest on AdamW).",
    ),
    "flashoptim": ("flashoptim", "flashoptim's optimizers; on CPU only in their unquantised, unfused form."),
    "pytorch_optimizer": (
        "pytorch_optimizer (`po_*` names)",
        "The optimizers of the pytorch_optimizer library that pass the registry's conformance harness, "
        "under `po_<name>`. Their options are typed from the version the shipped catalogue was generated from; "
        "with another version installed, a name's options are read from the installed class when the name is "
        "resolved, and a `CatalogueVersionWarning` says so once.",
    ),
    "torchao": ("torchao low-bit optimizers", "4-bit, 8-bit and FP8 AdamW state from torchao."),
    "misc": ("Other optimizers", "Optimizers that fit no other family."),
}

PROTOCOLS = {
    "step": "the Trainer calls `optimizer.step()` after backward, as usual",
    "train_eval": "`optimizer.train()` before training steps, `optimizer.eval()` before evaluating and saving; "
    "OptimTrainer does both",
    "fused_backward": "the weights are updated inside backward: no gradient accumulation "
    "(`gradient_accumulation_steps=1`)",
}

#: What stepping looks like for a ``_layerwise`` twin, whose record keeps its base's protocol.
LAYERWISE_PROTOCOL = (
    "each parameter is stepped inside backward, by a hook, as soon as its gradient is ready (on the last "
    "micro-batch under gradient accumulation); the Trainer's `optimizer.step()` after backward only completes "
    "the step (gradient norm, the values schedulers read)"
)

#: Where each hyperparameter comes from in ``TrainingArguments``.
HPARAM_SOURCES = {
    "lr": "`learning_rate` → `lr`",
    "betas": "`adam_beta1`, `adam_beta2` → `betas`",
    "eps": "`adam_epsilon` → `eps`",
    "weight_decay": "`weight_decay` → `weight_decay`",
}

#: What ``optim-registry compare`` and the snippets use for ``optim_target_modules``.
DEFAULT_TARGET_MODULES = ("self_attn", "mlp")

_DISTRIBUTED_FIELDS = ("ddp", "fsdp", "fsdp2", "zero1", "zero2", "zero3")
_DISTRIBUTED_TITLES = {"ddp": "DDP", "fsdp": "FSDP1", "fsdp2": "FSDP2", "zero1": "ZeRO-1", "zero2": "ZeRO-2",
                       "zero3": "ZeRO-3"}
_LAYERWISE_DISTRIBUTED = (
    "layer-wise names step each parameter inside backward, before a sharded back-end has reduced its "
    "gradient; use the whole-model name"
)

BEGIN = "<!-- BEGIN GENERATED by `python -m optim_registry.docgen`; do not edit by hand -->"
END = "<!-- END GENERATED -->"
_SECTION_RE = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)


# -- a record in words (shared with `optim-registry show`) ----------------------------------------
def format_value(value: Any) -> str:
    """``value`` written as ``optim_args`` reads it: ``true``, ``(0.9,0.95)``, ``none``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(format_value(v) for v in value) + ")"
    if type(value).__name__ == "dtype":
        return str(value).removeprefix("torch.")
    return str(value)


def option_table(spec: OptimizerSpec) -> list[Option]:
    """The record's ``optim_args`` keys, then the hyperparameters it lets ``optim_args`` override."""
    from .spec import option_table as table

    return table(spec)


def option_rows(spec: OptimizerSpec) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, meaning)`` for every accepted ``optim_args`` key."""
    rows = []
    for o in option_table(spec):
        meaning = o.help or ""
        if o.choices:
            meaning = f"{meaning} (one of {', '.join(format_value(c) for c in o.choices)})".strip()
        if o.describe():
            meaning = f"{meaning} (valid: {o.describe()})".strip()
        default = format_value(o.default) if o.default is not None or o.name not in spec.hparams else "from TrainingArguments"
        rows.append((o.name, o.type, default, meaning))
    return rows


def hparam_text(spec: OptimizerSpec) -> str:
    """Which ``TrainingArguments`` hyperparameters the optimizer receives."""
    used = [HPARAM_SOURCES[h] for h in ("lr", "betas", "eps", "weight_decay") if h in spec.hparams]
    return ", ".join(used) if used else "none (set everything through `optim_args`)"


def grouping_text(spec: OptimizerSpec) -> str:
    """How the parameters are put into groups for this record, and whether ``optim_groups`` applies."""
    if spec.needs_model:
        return _grouping_core(spec) + "; `optim_groups` rules are refused (one rate for every parameter)"
    text = _grouping_core(spec)
    if spec.routing is not None:
        text += ". " + routing_text(spec)
    return text + ". `optim_groups` rules then refine every group (docs/param_groups.md)"


def routing_text(spec: OptimizerSpec) -> str:
    """Where each kind of parameter goes in a hybrid (Muon / Dion) record."""
    routing = spec.routing
    if routing is None:
        return ""
    matrix_lr = f"`{routing.lr_option}`" if routing.lr_option else "the learning rate"
    other_lr = f"`{routing.other_lr_option}`" if routing.other_lr_option else "the learning rate"
    options = spec.option_map
    parts = [f"Routing (`{routing.flag}`): hidden 2-D weights -> matrix side at {matrix_lr}"]
    if routing.experts:
        parts.append("3-D MoE expert stacks (`experts.gate_up_proj`, `experts.down_proj`) -> matrix side, one "
                     "matrix per expert (`expert_matrices`)")
    else:
        parts.append("3-D tensors (MoE expert stacks included) -> AdamW")
    lora = "`lora_to_adamw`" if "lora_to_adamw" in options else "always"
    parts.append(f"LoRA factors (`lora_A`, `lora_B`) -> AdamW ({lora})")
    router = "`router_to_adamw`" if "router_to_adamw" in options else "always"
    parts.append(f"MoE routers (`mlp.gate`, beside the experts) -> AdamW ({router})")
    exclude = "names matching `exclude`" if "exclude" in options else "names like embed/lm_head/wte/wpe/output"
    parts.append(f"nn.Embedding weights, the input/output embedding and {exclude} -> AdamW")
    parts.append(f"norms, biases and other tensors -> AdamW at {other_lr}")
    return "; ".join(parts)


def _grouping_core(spec: OptimizerSpec) -> str:
    if spec.needs_model:
        text = "built from the model itself: the optimizer (or its builder) chooses the parameters"
        if "weight_decay" in spec.hparams:
            text += "; `weight_decay` is applied by the optimizer"
        return text + " (see the description)"
    if spec.target_modules:
        keys = ", ".join(f"`{k}`" for k in sorted(spec.target_options)) or "its projection options"
        return (
            "`optim_target_modules` picks `nn.Linear` weights; those form their own group carrying "
            f"{keys}; all other parameters are updated normally. Inside both, the stock weight-decay split "
            "(no decay for biases and norms) is kept"
        )
    if spec.builder is not None:
        return "the stock weight-decay split (no decay for biases and norms), adapted by the record's builder (see the description)"
    return "the stock weight-decay split: biases and norm weights get no weight decay, everything else does"


def protocol_text(spec: OptimizerSpec) -> str:
    """How the Trainer drives the optimizer; a layer-wise twin says it steps inside backward, not after it."""
    text = PROTOCOLS.get(spec.protocol, spec.protocol)
    if not spec.layerwise:
        return text
    return LAYERWISE_PROTOCOL if spec.protocol == "step" else f"{text}; {LAYERWISE_PROTOCOL}"


def distributed_support(spec: OptimizerSpec) -> dict[str, bool | str]:
    """``{ddp, fsdp, zero1, zero2, zero3}`` -> ``True`` or the reason it does not work."""
    out: dict[str, bool | str] = {}
    for key in _DISTRIBUTED_FIELDS:
        value = getattr(spec.distributed, key)
        if spec.layerwise and value is True and key != "ddp":
            # Sharded back-ends hand the per-parameter hooks unreduced or flattened gradients.
            value = _LAYERWISE_DISTRIBUTED
        out[key] = "not supported" if value is False else value
    return out


def distributed_summary(spec: OptimizerSpec) -> list[str]:
    """The supported back-ends on one line, then one line per unsupported one with its reason.

    When FSDP2 is supported, one more line says how it runs and whether it was run here.
    """
    support = distributed_support(spec)
    yes = [_DISTRIBUTED_TITLES[k] for k, v in support.items() if v is True]
    lines = [f"{', '.join(yes)}: yes"] if yes else []
    lines += [f"{_DISTRIBUTED_TITLES[k]}: no ({v})" for k, v in support.items() if v is not True]
    if support.get("fsdp2") is True:
        lines.append(f"FSDP2: {fsdp2_evidence(spec)}")
        lines.append(f"FSDP2 checkpoints: {fsdp2_checkpoint_evidence(spec)}")
    if any(support.get(f"zero{n}") is True for n in (1, 2, 3)):
        lines.append(f"ZeRO: {zero_evidence(spec)}")
    return lines


def zero_evidence(spec: OptimizerSpec) -> str:
    """How ``spec`` runs under DeepSpeed ZeRO and whether that combination was trained here."""
    from .builtin.zero_runs import MATH, MEASURED, REASONED, REASONED_BY_FAMILY, RUN, RUN_NOTES

    math = spec.distributed.zero_math
    how = MATH[math]
    if spec.name in RUN:
        measured = ", ".join(f"ZeRO-{n} {MEASURED[n][spec.name]:.2g}" for n in sorted(MEASURED))
        note = f"; {RUN_NOTES[spec.name]}" if spec.name in RUN_NOTES else ""
        return f"{how}; run here (2 processes; largest difference to one process after 3 steps: {measured}{note})"
    return f"{how}; {REASONED_BY_FAMILY.get((math, spec.family)) or REASONED[math]}"


def fsdp2_evidence(spec: OptimizerSpec) -> str:
    """How ``spec`` runs under FSDP2 and whether that combination was trained here."""
    from .builtin.fsdp2_runs import MATH, REASONED, RUN

    how = MATH[spec.distributed.fsdp2_math]
    if spec.name in RUN:
        return f"{how}; run here (2 processes, exact vs one process)"
    return f"{how}; {REASONED[spec.distributed.fsdp2_math]}"


def fsdp2_checkpoint_evidence(spec: OptimizerSpec) -> str:
    """Whether ``spec``'s FSDP2 checkpoints resume on any number of ranks, and whether that was run here."""
    from .builtin.fsdp2_runs import CHECKPOINT_REASONED, CHECKPOINT_RUN, RUN

    verdict = spec.distributed.fsdp2_checkpoint
    if verdict is not True:
        return f"no ({verdict}): a resume on another number of ranks is refused"
    if spec.name in RUN:
        return f"any number of ranks; {CHECKPOINT_RUN}"
    return f"any number of ranks; {CHECKPOINT_REASONED[spec.distributed.fsdp2_math]}"


def notes(spec: OptimizerSpec) -> list[str]:
    """Everything else worth knowing before using the name."""
    out = []
    if spec.unsupported:
        out.append(f"**cannot train through a Trainer**: {spec.unsupported}")
    if spec.fixed:
        fixed = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(spec.fixed.items()))
        out.append(f"always passes {fixed}")
    if spec.owns_warmup:
        out.append("warms the rate up itself: the Trainer's schedule gets no warm-up steps")
    if spec.embedding_32bit:
        out.append("`nn.Embedding` state is kept in 32 bits")
    if spec.layerwise:
        base = f" `{spec.base}`" if spec.base else ""
        out.append(
            f"layer-wise form of{base}: each parameter is stepped inside backward; global-norm clipping only "
            "with `optim_args='clip=global'` (one extra backward pass), else `max_grad_norm=0` or "
            "`clip_per_param`; "
            + ("one process, or DDP (each parameter stepped once its gradient bucket is averaged); no sharded "
               "back-end" if distributed_support(spec)["ddp"] is True else "single process only")
        )
    if spec.needs_gpu:
        out.append(f"needs a CUDA GPU: {spec.needs_gpu}")
    return out


def snippet_options(spec: OptimizerSpec) -> str | None:
    """A short ``optim_args`` string worth showing: the projection options and the defaults we send."""
    picked = [o for o in spec.options if o.default is not None and (o.name in spec.target_options or o.send)]
    if not picked:
        return None
    return ",".join(f"{o.name}={format_value(o.default)}" for o in picked[:4])


def snippet(spec: OptimizerSpec, *, indent: str = "    ") -> str:
    """A ready-to-paste ``TrainingArguments(...)`` for this record."""
    lines = ["TrainingArguments(", f'{indent}output_dir="out",', f'{indent}optim="{spec.name}",']
    extra = snippet_options(spec)
    if extra:
        lines.append(f'{indent}optim_args="{extra}",')
    if spec.target_modules:
        lines.append(f"{indent}optim_target_modules={list(DEFAULT_TARGET_MODULES)!r},".replace("'", '"'))
    if spec.layerwise:
        lines.append(f"{indent}max_grad_norm=0.0,  # layer-wise: no clipping (or optim_args='clip=global')")
    if spec.protocol == "fused_backward":
        lines.append(f"{indent}gradient_accumulation_steps=1,  # updates happen inside backward")
    lines.append(")")
    return "\n".join(lines)


def requirement_text(spec: OptimizerSpec) -> str:
    if not spec.requires:
        return "nothing beyond torch and transformers"
    parts = []
    for r in spec.requires:
        version = f">={r.min_version}" if r.min_version else ""
        extra = f" (extra `optim-registry[{r.extra}]`)" if r.extra else ""
        parts.append(f"`{r.pip}{version}`{extra}")
    return ", ".join(parts)


def state_text(spec: OptimizerSpec) -> str:
    if spec.state_bytes is None:
        return "not measured"
    return f"{spec.state_bytes:g} bytes per parameter (measured, fp32 weights)"


def first_sentence(text: str) -> str:
    text = " ".join(text.split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    return match.group(1) if match else text


# -- pages ------------------------------------------------------------------------------------------
def builtin_specs() -> list[OptimizerSpec]:
    """Every built-in record, sorted by name (plugins never reach the committed docs)."""
    from .registry import optimizers

    return [optimizers.builtin()[n] for n in sorted(optimizers.builtin())]


def _is_twin(spec: OptimizerSpec, names: set[str]) -> bool:
    return spec.layerwise and spec.base is not None and spec.base in names


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(str(c)) for c in row) + " |" for row in rows]
    return out


def family_title(family: str) -> str:
    return FAMILIES.get(family, (family, ""))[0]


def render_family(family: str, specs: list[OptimizerSpec], all_names: set[str]) -> str:
    title, blurb = FAMILIES.get(family, (family, ""))
    main = [s for s in specs if not _is_twin(s, all_names)]
    twins = [s for s in specs if _is_twin(s, all_names)]
    lines = [f"# {title}", "", "<!-- Generated by `python -m optim_registry.docgen` from the registry records. -->", ""]
    if blurb:
        lines += [blurb, ""]
    extras = sorted({r.extra for s in specs for r in s.requires if r.extra})
    pips = sorted({r.pip_line for s in specs for r in s.requires})
    if pips:
        lines.append("Install: " + "; ".join(f"`{p}`" for p in pips)
                     + (f" (or `pip install 'optim-registry[{','.join(extras)}]'`)" if extras else "") + ".")
        lines.append("")
    from .listing import layerwise_twins

    twin_of = layerwise_twins(twins)
    rows = []
    for s in main:
        rows.append((
            f"[`{s.name}`](#{s.name})",
            first_sentence(s.description),
            "—" if s.state_bytes is None else f"{s.state_bytes:g}",
            "not via Trainer" if s.unsupported else "GPU" if s.needs_gpu else "CPU, GPU",
            s.protocol,
            f"`{twin_of[s.name]}`" if s.name in twin_of else "—",
        ))
    lines += _table(("name", "what it is", "state B/param", "runs on", "protocol", "layer-wise twin"), rows)
    lines.append("")
    for s in main:
        lines += _render_record(s)
    if twins:
        lines += ["## Layer-wise twins", "",
                  "Each steps the same optimizer parameter by parameter inside backward "
                  "([layerwise.md](../layerwise.md)). Global-norm clipping needs `optim_args='clip=global'` "
                  "(exact, one extra backward pass per step); without it `max_grad_norm` must be 0 or "
                  "transformers' default (then not applied, with a warning); `clip_per_param` clips each "
                  "parameter on its own. Single process only.", ""]
        rows = []
        for t in twins:
            base_keys = {o.name for o in specs_by_name(specs)[t.base].options} if t.base in specs_by_name(specs) else set()
            added = [o.name for o in t.options if o.name not in base_keys]
            rows.append((f"`{t.name}`", f"`{t.base}`", ", ".join(f"`{k}`" for k in added) or "—"))
        lines += _table(("name", "layer-wise form of", "extra optim_args"), rows)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def specs_by_name(specs: Iterable[OptimizerSpec]) -> dict[str, OptimizerSpec]:
    return {s.name: s for s in specs}


def _render_record(s: OptimizerSpec) -> list[str]:
    lines = [f"## {s.name}", "", " ".join(s.description.split()), ""]
    facts = [
        ("Paper", s.paper or "—"),
        ("Requires", requirement_text(s)),
        ("Runs on", f"GPU only ({s.needs_gpu})" if s.needs_gpu else "CPU and GPU"),
        ("TrainingArguments used", hparam_text(s)),
        ("Parameter groups", grouping_text(s)),
        ("Protocol", f"`{s.protocol}`: {protocol_text(s)}"),
        ("Optimizer state", state_text(s)),
        ("Distributed", "; ".join(distributed_summary(s))),
        ("Resume", s.resume),
    ]
    facts += [("Note", n) for n in notes(s)]
    lines += [f"- **{k}**: {v}" for k, v in facts]
    lines.append("")
    rows = option_rows(s)
    if rows:
        lines += _table(("optim_args key", "type", "default", "meaning"), [(f"`{k}`", t, f"`{d}`", m) for k, t, d, m in rows])
        lines.append("")
    lines += ["```python", snippet(s), "```", ""]
    return lines


def render_index(by_family: dict[str, list[OptimizerSpec]], all_names: set[str]) -> str:
    lines = [
        "# Optimizers by family",
        "",
        "<!-- Generated by `python -m optim_registry.docgen` from the registry records. -->",
        "",
        "Every built-in `optim=` name, one page per family. `optim-registry list` shows the same names with "
        "what is installed on your machine; `optim-registry show NAME` shows one of them in full.",
        "",
    ]
    rows = []
    for family, specs in sorted(by_family.items()):
        twins = sum(_is_twin(s, all_names) for s in specs)
        extras = sorted({r.extra for s in specs for r in s.requires if r.extra})
        rows.append((
            f"[{family_title(family)}]({family}.md)",
            f"`{family}`",
            str(len(specs) - twins),
            str(twins),
            ", ".join(f"`[{e}]`" for e in extras) or "—",
        ))
    lines += _table(("family", "key", "names", "layer-wise twins", "extra"), rows)
    lines += ["", "## Every name", ""]
    rows = []
    for family, specs in sorted(by_family.items()):
        for s in specs:
            if _is_twin(s, all_names):
                continue
            rows.append((s.name, f"[`{s.name}`]({family}.md#{s.name})", family, first_sentence(s.description)))
    rows.sort()
    lines += _table(("name", "family", "what it is"), [row[1:] for row in rows])
    return "\n".join(lines).rstrip() + "\n"


def render_distributed(specs: list[OptimizerSpec], all_names: set[str]) -> str:
    """The support matrix: one row per whole-model record, reasons as numbered footnotes."""
    from .builtin import fsdp2_runs, zero_runs

    reasons: dict[str, int] = {}
    rows = []
    for s in specs:
        if _is_twin(s, all_names):
            continue
        cells = []
        support = distributed_support(s)
        for key, value in support.items():
            if value is True and key == "fsdp2":
                cells.append(f"{'RUN' if s.name in fsdp2_runs.RUN else 'yes'} ({s.distributed.fsdp2_math})")
            elif value is True and key.startswith("zero") and s.distributed.zero_math != "local":
                cells.append(f"{'RUN' if s.name in zero_runs.RUN else 'yes'} ({s.distributed.zero_math})")
            elif value is True and key.startswith("zero") and s.name in zero_runs.RUN:
                cells.append("RUN")
            elif value is True:
                cells.append("yes")
            else:
                number = reasons.setdefault(str(value), len(reasons) + 1)
                cells.append(f"no [{number}]")
        checkpoint = s.distributed.fsdp2_checkpoint
        if support["fsdp2"] is not True:
            cells.append("—")
        elif checkpoint is True:
            cells.append("RUN" if s.name in fsdp2_runs.RUN else "yes")
        else:
            cells.append(f"no [{reasons.setdefault(str(checkpoint), len(reasons) + 1)}]")
        rows.append((f"`{s.name}`", s.family, *cells))
    lines = _table(("name", "family", *(_DISTRIBUTED_TITLES[k] for k in _DISTRIBUTED_FIELDS), "FSDP2 checkpoint"),
                   rows)
    lines += [
        "",
        "FSDP2 cells: **RUN** = trained here under FSDP2 (2 CPU processes, gloo, torchrun; `tests/test_fsdp2.py`) "
        "and equal to one process on the same batch; **yes** = supported, not run here, reasoned from how it "
        "runs. In brackets, how it runs: "
        + "; ".join(f"`{k}` = {v}" for k, v in fsdp2_runs.MATH.items()) + ".",
        "",
        "FSDP2 checkpoint cells (the record's `distributed.fsdp2_checkpoint`): **RUN** = "
        + fsdp2_runs.CHECKPOINT_RUN
        + " (`tests/test_fsdp2_checkpoints.py`); **yes** = resumes on any number of ranks, reasoned: "
        + "; ".join(f"`{k}`: {v.removeprefix('not run here; reasoned: ')}"
                    for k, v in fsdp2_runs.CHECKPOINT_REASONED.items())
        + "; **no** = resumes only on the rank count that saved it (another is refused); — = no FSDP2.",
        "",
        "ZeRO cells: **RUN** = trained here under that stage through `OptimTrainer` (2 CPU processes, gloo, "
        "torchrun; `tests/test_zero.py`) against one process on the same batches; **yes** = supported, not run "
        "here, reasoned from how it runs. Without brackets the library's own step runs on ZeRO's flat "
        "partitions (elementwise: equal to one process); in brackets: "
        + "; ".join(f"`{k}` = {v}" for k, v in zero_runs.MATH.items() if k != "local") + ".",
        "",
        "Every `*_layerwise` name: DDP as its whole-model name (each parameter is stepped from DDP's "
        "communication hook once its gradient bucket is averaged; `optim_registry.engines.layerwise.ddp`), no sharded "
        f"back-end ({_LAYERWISE_DISTRIBUTED}).",
        "",
    ]
    lines += [f"{n}. {text}" for text, n in reasons.items()]
    return "\n".join(lines).rstrip() + "\n"


def render_schedulers() -> str:
    from .schedulers import schedulers

    rows = []
    for name in sorted(schedulers.builtin()):
        spec = schedulers.builtin()[name]
        options = ", ".join(
            f"`{o.name}` ({o.type}, default `{format_value(o.default)}`"
            + (f", {o.range_text()}" if o.range_text() else "") + ")"
            for o in spec.options
        )
        rows.append((f"`{name}`", " ".join(spec.description.split()), options or "—",
                     "yes" if spec.needs_eval else "no"))
    return "\n".join(_table(("lr_scheduler_type", "what it does", "lr_scheduler_kwargs", "needs eval"), rows)) + "\n"


def fill_section(text: str, body: str) -> str:
    """Replace the generated section of a hand-written page with ``body``."""
    if not _SECTION_RE.search(text):
        raise ValueError(f"page has no generated section; add the two lines\n{BEGIN}\n{END}")
    return _SECTION_RE.sub(lambda _: f"{BEGIN}\n{body}{END}", text, count=1)


def generate(docs: Path) -> dict[Path, str]:
    """Every generated file under ``docs`` and its text (hand-written pages with sections filled)."""
    specs = builtin_specs()
    names = {s.name for s in specs}
    by_family: dict[str, list[OptimizerSpec]] = {}
    for s in specs:
        by_family.setdefault(s.family, []).append(s)
    out: dict[Path, str] = {docs / "optimizers" / "index.md": render_index(by_family, names)}
    for family, family_specs in by_family.items():
        out[docs / "optimizers" / f"{family}.md"] = render_family(family, family_specs, names)
    for page, body in (("distributed.md", render_distributed(specs, names)), ("schedulers.md", render_schedulers())):
        path = docs / page
        if path.exists():
            out[path] = fill_section(path.read_text(encoding="utf-8"), body)
    return out


def stale(docs: Path) -> list[str]:
    """Files under ``docs`` that differ from what the records say, or generated pages with no record left."""
    wanted = generate(docs)
    problems = [str(p) for p, text in wanted.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    folder = docs / "optimizers"
    if folder.is_dir():
        problems += [f"{p} (no family has this name any more)" for p in sorted(folder.glob("*.md")) if p not in wanted]
    return problems


def write(docs: Path) -> list[Path]:
    """Write every generated file and delete family pages no record uses any more."""
    wanted = generate(docs)
    (docs / "optimizers").mkdir(parents=True, exist_ok=True)
    for path in sorted((docs / "optimizers").glob("*.md")):
        if path not in wanted:
            path.unlink()
    changed = []
    for path, text in wanted.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def default_docs_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "docs"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optim_registry.docgen", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=default_docs_dir(), help="the docs folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    ns = parser.parse_args(argv)
    if ns.check:
        problems = stale(ns.docs)
        for p in problems:
            print(f"stale: {p}")
        if problems:
            print("run `python -m optim_registry.docgen` to regenerate", file=sys.stderr)
        return 1 if problems else 0
    changed = write(ns.docs)
    for p in changed:
        print(f"wrote {p}")
    print(f"{len(changed)} file(s) changed" if changed else "docs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
