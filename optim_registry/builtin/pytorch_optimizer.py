"""Every optimizer of pytorch_optimizer's registry as ``po_<name>``, built from shipped catalogue data.

The names, classes and typed options live in ``pytorch_optimizer_catalog.py`` (generated from the library by
``tools/gen_pytorch_optimizer_catalog.py``), so listing them never imports pytorch_optimizer. A name whose
measured status is not "ok" stays listed, with that status as its ``unsupported`` reason.

TrainingArguments' ``adam_beta1/adam_beta2`` and ``adam_epsilon`` feed ``betas`` / ``eps`` only where the
library's own default is Adam's (0.9, 0.999) / 1e-8; elsewhere (Lion's 0.99, AdaBelief's 1e-16, Adan's three
betas) they are ``optim_args`` keys keeping the library default, so the arguments cannot silently change them.
"""

from __future__ import annotations

from typing import Any

from ..spec import Distributed, MatrixRouting, OptimizerSpec, Option, Requirement, with_guessed_range

PREFIX = "po_"
FAMILY = "pytorch_optimizer"
REQUIRES = (Requirement("pytorch-optimizer", "pytorch_optimizer", "4.1", extra="pytorch-optimizer"),)
_BUILDERS = "optim_registry.families.pytorch_optimizer"

#: Names the generic path cannot build, and the builder that can (see families/pytorch_optimizer.py).
BUILDERS = {
    "a2grad": "lr_in_groups",
    "adammini": "adam_mini",
    "ranger21": "ranger21",
}

#: Muon-family classes: the interpreter routes hidden matrices (use_muon) and the AdamW side takes the
#: class's adamw_lr / adamw_wd, so optim_groups rules refine both sides; the generic path then builds them.
_MUON_ROUTING = MatrixRouting("use_muon", None, other_lr_option="adamw_lr", other_weight_decay_option="adamw_wd")

#: Record fields beyond what the catalogue entry says, by name.
FIELDS: dict[str, dict[str, Any]] = {
    **{name: {"routing": _MUON_ROUTING} for name in ("adago", "adamuon", "distributedmuon", "muon", "muonclip",
                                                     "normuon")},
    # Adam-mini is built with the model (its block layout comes from model.config).
    "adammini": {"needs_model": True, "weight_decay_kwarg": True},
}
#: ``optim-registry compare``'s rates on the tiny model (see OptimizerSpec.demo_lr): sign-based updates
#: (Lion, signSGD) want smaller rates than Adam, plain SGD a larger one.
_DEMO_LR = {
    "accsgd": 0.5, "adafactor": 5e-3, "asgd": 0.5, "dadaptadagrad": 3e-2, "dadaptlion": 4e-3, "dadaptsgd": 0.5,
    "lion": 4e-3, "lomo": 0.5, "schedulefreesgd": 0.5, "sgd": 0.5, "sgdp": 0.5, "sgdsai": 0.5, "sgdw": 0.5,
    "signsgd": 1e-3, "vsgd": 0.5,
}
for _name, _lr in _DEMO_LR.items():
    FIELDS[_name] = {**FIELDS.get(_name, {}), "demo_lr": _lr}

#: No ``_layerwise`` twin: stepping one parameter at a time would change the algorithm.
CROSS_PARAMETER = {
    # one distance estimate d shared by every parameter
    "dadaptadagrad", "dadaptadam", "dadaptadan", "dadaptlion", "dadaptsgd", "prodigy",
    # clip or scale by the global gradient norm
    "adagc", "adan", "asgd", "lamb",
    # route matrices and the rest to different rules, or need the whole model
    "adago", "adammini", "adamuon", "distributedmuon", "muon", "muonclip", "normuon",
    # pair LoRA factors across tensors
    "lorarite",
    # driven by the loss, not by one parameter's gradient
    "emofact", "emolynx", "emonavi",
}

#: What a user of the Trainer should know, added to the library's one-line description.
NOTES = {
    "a2grad": "It sets its own step sizes: learning_rate and the schedule have no effect.",
    "dadaptadagrad": "Estimates the step size: set learning_rate=1.0.",
    "dadaptadam": "Estimates the step size: set learning_rate=1.0.",
    "dadaptadan": "Estimates the step size: set learning_rate=1.0.",
    "dadaptlion": "Estimates the step size: set learning_rate=1.0.",
    "dadaptsgd": "Estimates the step size: set learning_rate=1.0.",
    "emofact": "Its loss-driven scaling needs step(closure); under the Trainer it sees no loss and stays neutral.",
    "emolynx": "Its loss-driven scaling needs step(closure); under the Trainer it sees no loss and stays neutral.",
    "emonavi": "Its loss-driven scaling needs step(closure); under the Trainer it sees no loss and stays neutral.",
    "prodigy": "Estimates the step size: set learning_rate=1.0.",
    "ranger21": "Warms up and down over num_iterations, by default the run's optimizer steps.",
    "sara": "Trains only the weights below `threshold` in magnitude; the rest (norm weights included) stay fixed.",
    "sgdsai": "Scales each tensor by its first gradient's signal-to-noise ratio: 1-D tensors barely move.",
}

#: Training protocols other than a plain ``step()``.
PROTOCOL = {"adalomo": "fused_backward", "lomo": "fused_backward"}


def supports_layerwise(name: str) -> bool:
    """Whether a per-parameter twin makes sense for ``name`` (before measuring it)."""
    return name not in CROSS_PARAMETER and name not in PROTOCOL


def _options(entry: dict[str, Any], key: str = "options") -> tuple[Option, ...]:
    out = []
    for name, kind, default, help_text, choices, nullable, send in entry[key]:
        if name in entry["required"] and name == "num_iterations":
            help_text = f"{help_text} (default: the run's total optimizer steps)".strip()
        if key == "group_options":
            help_text = f"{help_text} (set on the optim_target_modules weights)"
        # rates, eps, weight decay, betas and momentum by name cannot be negative; tuples keep their length
        out.append(with_guessed_range(
            Option(name, kind, default, help_text, choices=choices, nullable=nullable, send=send)
        ))
    return tuple(out)


def _distributed(sharding: str | None) -> Distributed:
    """DDP runs the whole step on every rank; sharded back-ends only suit an elementwise update."""
    if sharding == "ok":
        return Distributed()
    why = sharding or "not measured under sharded optimizer state"
    # FSDP2 runs each whole tensor on one owner rank, which is exact for per-parameter updates; these
    # names were not audited for sums over all parameters (global norms, D-Adaptation / Prodigy
    # estimates) that an owner, holding only its share, would compute differently.
    fsdp2 = (f"{why}; and not checked for reductions across parameters (global norms, step-size "
             "estimates) that FSDP2's per-rank share of the parameters would change")
    return Distributed(fsdp=why, zero1=why, zero2=why, zero3=why, fsdp2=fsdp2)


def record(
    name: str, entry: dict[str, Any], status: str = "ok", layerwise_status: str | None = None,
    sharding: str | None = None,
) -> OptimizerSpec:
    """The record of ``po_<name>`` from its catalogue entry and its measured outcomes.

    A status other than "ok" becomes the record's ``unsupported`` reason: the name stays listed and
    ``TrainingArguments`` refuses it with that reason.
    """
    builder = BUILDERS.get(name)
    group_options = _options(entry, "group_options")
    fields: dict[str, Any] = {"needs_model": entry["takes"] == "model", **FIELDS.get(name, {})}
    return OptimizerSpec(
        name=PREFIX + name,
        target=entry["target"],
        family=FAMILY,
        description=" ".join(filter(None, [entry["description"], NOTES.get(name, "")])),
        requires=REQUIRES,
        options=_options(entry) + group_options,
        # GaLore-style classes project only the groups carrying rank & co: the target-module weights.
        target_modules=bool(group_options),
        target_options=frozenset(o.name for o in group_options),
        hparams=frozenset(entry["hparams"]) or frozenset({"lr"}),
        builder=f"{_BUILDERS}:{builder}" if builder else None,
        supports_layerwise=supports_layerwise(name) and status == "ok" and layerwise_status == "ok",
        protocol=PROTOCOL.get(name, "step"),
        unsupported=None if status == "ok" else status,
        paper=entry["paper"],
        distributed=_distributed(sharding),
        **fields,
    )


def generated_records() -> list[OptimizerSpec]:
    """One record per catalogue name, sorted; ``_layerwise`` twins are derived by ``builtin.all_records``."""
    from .pytorch_optimizer_catalog import CATALOG, LAYERWISE, SHARDING, STATUS

    return [
        record(n, e, STATUS.get(n, "not surveyed"), LAYERWISE.get(n), SHARDING.get(n))
        for n, e in sorted(CATALOG.items())
    ]
