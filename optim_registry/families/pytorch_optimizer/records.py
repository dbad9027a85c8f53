"""Every optimizer of pytorch_optimizer's registry as ``po_<name>``, and all the registry knows about the library.

Hand-curated here: which builder (builders.py) each name the generic path cannot build needs, notes,
training-protocol and sharding limits, the names without a layer-wise twin, and the introspection (``describe``)
that types a class's options, used by the generator and by ``current`` when another library version is installed.

The names, classes and typed options live in ``pytorch_optimizer_catalog.py`` (generated from the library by
``tools/gen_pytorch_optimizer_catalog.py``), so listing them never imports pytorch_optimizer. A name whose
measured status is not "ok" stays listed, with that status as its ``unsupported`` reason.

TrainingArguments' ``adam_beta1/adam_beta2`` and ``adam_epsilon`` feed ``betas`` / ``eps`` only where the
library's own default is Adam's (0.9, 0.999) / 1e-8; elsewhere (Lion's 0.99, AdaBelief's 1e-16, Adan's three
betas) they are ``optim_args`` keys keeping the library default, so the arguments cannot silently change them.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import warnings
from typing import Any

from ...signature import catalog_option, docstring_args, with_guessed_range
from ...spec import Distributed, MatrixRouting, OptimizerSpec, Option, Requirement, Run

#: The family page's title and first paragraph (docs/optimizers/pytorch_optimizer.md, `optim-registry show`).
TITLE = "pytorch_optimizer (`po_*` names)"
ABOUT = (
    "The optimizers of the pytorch_optimizer library that pass the registry's conformance harness, "
    "under `po_<name>`. Their options are typed from the version the shipped catalogue was generated from; "
    "with another version installed, a name's options are read from the installed class when the name is "
    "resolved, and a `CatalogueVersionWarning` says so once."
)

PREFIX = "po_"
FAMILY = "pytorch_optimizer"
REQUIRES = (Requirement("pytorch-optimizer", "pytorch_optimizer", "4.1", extra="pytorch-optimizer"),)
_BUILDERS = "optim_registry.families.pytorch_optimizer.builders"

#: Names the generic path cannot build, and the builder that can (see builders.py).
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
    # GaLore-style projections sized for the tiny model optim-registry compare trains (rank 128 would project
    # nothing away on a 64-wide model).
    **{name: {"demo_options": {"rank": 16}} for name in ("apollo", "fira", "galore")},
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


#: TrainingArguments' defaults: a constructor whose own default equals one takes that value from the arguments.
HF_DEFAULTS = {"betas": (0.9, 0.999), "eps": 1e-8}

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
        # What the library's signature leaves to its names: rates, eps, weight decay, betas and momentum cannot be
        # negative, tuples keep their length, a `*_lr` is a learning rate, a projection's `rank` is the rank.
        role = "rate" if name.endswith("_lr") and not name.startswith("decouple") else None
        role = "rank" if key == "group_options" and name == "rank" else role
        out.append(with_guessed_range(
            Option(name, kind, default, help_text, choices=choices, nullable=nullable, send=send, role=role)
        ))
    return tuple(out)


#: Names trained and checkpointed under FSDP2 here (``Distributed.fsdp2_run``), with the ``optim_args`` of the run.
FSDP2_RUNS = {
    "adamw": Run(),
    "madgrad": Run(),  # keeps a step count in state, keyed by no parameter (checkpointed in the first group)
}


def _distributed(sharding: str | None, fsdp2_run: Run | None = None) -> Distributed:
    """DDP runs the whole step on every rank; sharded back-ends only suit an elementwise update."""
    if sharding == "ok":
        return Distributed(fsdp2_run=fsdp2_run)
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
        distributed=_distributed(sharding, FSDP2_RUNS.get(name)),
        **fields,
        refresh=f"{__name__}:current",
    )


def generated_records() -> list[OptimizerSpec]:
    """One record per catalogue name, sorted; ``_layerwise`` twins are derived by ``families.all_records``."""
    from .catalog import CATALOG, LAYERWISE, SHARDING, STATUS

    return [
        record(n, e, STATUS.get(n, "not surveyed"), LAYERWISE.get(n), SHARDING.get(n))
        for n, e in sorted(CATALOG.items())
    ]


# -- introspection: the catalogue entry of a class (the generator's, and the live one) --------------
def _first_line(doc: str | None, fallback: str) -> str:
    lines = [ln.strip() for ln in (doc or "").strip().splitlines() if ln.strip()]
    return lines[0] if lines else fallback


def _paper(doc: str | None) -> str:
    found = re.search(r"(https?://arxiv\.org/(?:abs|pdf)/(\d{4}\.\d{4,5})|arXiv:\s*(\d{4}\.\d{4,5}))", doc or "")
    if found:
        return f"arXiv:{found.group(2) or found.group(3)}"
    url = re.search(r"https?://[^\s)>]+", doc or "")
    return url.group(0).rstrip(".,") if url else ""


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
    helps = docstring_args(GaLoreProjector.__doc__ or "")
    out = []
    for pname, param in projector.parameters.items():
        if pname in read and pname not in signature.parameters and param.kind is param.POSITIONAL_OR_KEYWORD:
            option = catalog_option(pname, param, helps.get(pname, ""))
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
    helps = docstring_args(cls.__doc__ or "")
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
        options.append(catalog_option(p.name, p, helps.get(p.name, "")))
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


# -- the installed library against the catalogue -------------------------------------------------------
class CatalogueVersionWarning(UserWarning):
    """The installed pytorch_optimizer is not the version the ``po_*`` catalogue was generated from.

    Said once per process by Python's default warnings filter (its location is fixed inside the package).
    """


#: ``(name, installed version) -> record`` with options read from the installed class (a cache).
_LIVE: dict[tuple[str, str], OptimizerSpec] = {}


def installed_version() -> str | None:
    """The installed pytorch_optimizer's version (metadata only: nothing is imported), or None."""
    try:
        return importlib.metadata.version("pytorch_optimizer")
    except importlib.metadata.PackageNotFoundError:
        return None


def current(spec: OptimizerSpec) -> OptimizerSpec:
    """``spec`` as the installed pytorch_optimizer has it (the records' ``refresh`` hook).

    The shipped catalogue types every option from one library version. With another installed, its
    tables would refuse new keys and pass removed ones on; so the options (and the hyperparameters the
    arguments feed) are read from the installed class, which is imported at this point anyway, with the
    same inferer as the catalogue, and a ``CatalogueVersionWarning`` says so once per process. The
    measured statuses (layer-wise, sharding) stay those of the catalogue's version.
    """
    from .catalog import CATALOG, LIBRARY_VERSION

    installed = installed_version()
    if installed is None or installed == LIBRARY_VERSION:
        return spec
    key = (spec.name, installed)
    if key in _LIVE:
        return _LIVE[key]
    base = (spec.base or spec.name).removeprefix(PREFIX)
    pinned = CATALOG.get(base)
    try:
        from ...deps import import_object

        cls = import_object(spec.target) if isinstance(spec.target, str) else spec.target
    except Exception:  # noqa: BLE001 - the build reports the failed import with its install line
        return spec
    entry = describe(base, cls)
    warnings.warn(
        f"pytorch_optimizer {installed} is installed, but the po_* catalogue was generated from "
        f"{LIBRARY_VERSION}: the options of po_* names are read from the installed classes (their measured "
        "statuses may be stale; regenerate with tools/gen_pytorch_optimizer_catalog.py)",
        CatalogueVersionWarning, stacklevel=1,  # a fixed location: the default filter says it once per process
    )
    ours = {o[0] for o in (pinned or {}).get("options", ()) + (pinned or {}).get("group_options", ())}
    kept = tuple(o for o in spec.options if o.name not in ours)  # a twin's clip options
    group_options = _options(entry, "group_options")
    live = spec.variant(
        options=_options(entry) + group_options + kept,
        target_options=frozenset(o.name for o in group_options),
        hparams=frozenset(entry["hparams"]) or frozenset({"lr"}),
    )
    _LIVE[key] = live
    return live
