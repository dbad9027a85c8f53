"""Which parameter is what, decided once per model: the one place parameters are selected.

``label_parameters(model, ...)`` returns a ``ParamTable``: every parameter's name (and the other names of a
tied tensor) with its labels: trainable or not; its kind (``embedding``, ``head``, ``router``, ``norm``,
``bias``, ``expert_stack``, ``matrix``, ``other``); whether it gets weight decay; whether ``optim_target_modules``
picks it; its LoRA factor (``lora_A``, ``lora_B`` ...) and whether it belongs to a LoRA embedding layer;
whether a routing ``exclude`` pattern matches it; which ``optim_groups`` rules cover it; its layer (for
``layer_decay``). The weight-decay split, target modules, Muon/Dion routing, ``optim_groups``, the layer-wise
engine (through the groups), the checkpoint's group layout and ``optim-registry groups`` all read the table
(optax's ``multi_transform`` labels: selection is data, apart from the algorithms). No other module matches
parameter names; ``tests/test_labels.py`` checks that.

Example::

    table = label_parameters(model, target_patterns=["self_attn", "mlp"], subject="optim='galore_adamw'")
    [row.name for row in table if row.kind == "matrix" and row.target]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .optim_args import shorten

#: What a parameter is, in the order the first that applies wins (``ParamLabels.kind``).
KINDS = ("embedding", "head", "router", "norm", "bias", "expert_stack", "matrix", "other")

#: The stock Trainer's name patterns for parameters that get no weight decay.
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
_NO_DECAY_RE = re.compile("|".join(NO_DECAY_PATTERNS))

#: Named parameter sets an ``optim_groups`` selector may use.
NAMED_SETS = ("@embeddings", "@head", "@norms", "@biases", "@no_decay")


@dataclass(frozen=True)
class ParamLabels:
    """One parameter's labels (a row of the table)."""

    name: str
    #: Every name of the tensor (a tied output head has two); ``name`` is the first.
    aliases: tuple[str, ...]
    trainable: bool
    ndim: int
    numel: int
    #: The input embedding, an ``nn.Embedding`` weight, or a head tied to the input embedding.
    embedding: bool
    #: A parameter of the output embeddings (``get_output_embeddings()``), tied or not.
    head: bool
    #: A MoE router (``mlp.gate``, ``block_sparse_moe.router``): beside the experts, one row per expert.
    router: bool
    #: A parameter of a normalisation layer.
    norm: bool
    #: Its own name ends with ``bias``.
    bias: bool
    #: A 3-D stack of expert matrices (``experts.gate_up_proj``).
    expert_stack: bool
    #: Gets weight decay (the Trainer's ``get_decay_parameter_names``, else the stock split).
    decay: bool
    #: Picked by ``optim_target_modules`` (an ``nn.Linear`` weight).
    target: bool = False
    #: The LoRA (or other PEFT ``lora_*``) name part it belongs to (``lora_A``, ``lora_B``,
    #: ``lora_embedding_A`` ...), else ``None``.
    lora: str | None = None
    #: A factor of a PEFT LoRA ``Embedding`` layer (LoRA+ gives these their own rate).
    lora_embedding: bool = False
    #: A routing ``exclude`` pattern matches its last two name parts.
    excluded: bool = False
    #: Indices of the ``optim_groups`` selector rules that cover it.
    rules: tuple[int, ...] = ()
    #: timm's layer id (embeddings 0, block k is k, after the blocks L + 1), when a ``layer_decay`` rule asks.
    layer: int | None = None

    @property
    def kind(self) -> str:
        """The first of ``KINDS`` that applies."""
        for kind in KINDS[:-2]:
            if getattr(self, kind):
                return kind
        return "matrix" if self.ndim == 2 else "other"


class ParamTable:
    """The labelled parameters of one model, in the model's order; rows of trainable ones by default."""

    def __init__(self, rows: Sequence[ParamLabels], params: Mapping[str, Any], num_blocks: int | None = None) -> None:
        #: How many stacked blocks ``layer`` counts (set when a ``layer_decay`` rule asked for layers).
        self.num_blocks = num_blocks
        self.all_rows = tuple(rows)
        self.rows = tuple(r for r in self.all_rows if r.trainable)
        self._params = dict(params)
        self._by_name = {r.name: r for r in self.all_rows}
        self._by_id = {id(p): self._by_name[n] for n, p in self._params.items()}

    def __iter__(self) -> Iterator[ParamLabels]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> ParamLabels:
        return self._by_name[name]

    def param(self, name: str) -> Any:
        return self._params[name]

    def row_of(self, param: Any) -> ParamLabels | None:
        """The row of a parameter tensor (found by identity), or ``None`` for a tensor of another model."""
        return self._by_id.get(id(param))

    def name_of(self, param: Any, default: str = "?") -> str:
        row = self.row_of(param)
        return default if row is None else row.name

    def named(self, rows: Iterable[ParamLabels] | None = None) -> list[tuple[str, Any]]:
        """``(name, tensor)`` of ``rows`` (default: every trainable parameter)."""
        return [(r.name, self._params[r.name]) for r in (self.rows if rows is None else rows)]

    def names(self, **labels: Any) -> list[str]:
        """Names of the trainable parameters whose labels equal ``labels`` (``table.names(target=True)``)."""
        return [r.name for r in self.rows if all(getattr(r, k) == v for k, v in labels.items())]

    def examples(self, n: int = 6) -> str:
        """A few trainable names, one per distinct ending (layer numbers folded), for messages."""
        return examples([r.name for r in self.rows], n)


# ------------------------------------------------------------------------------------------ the table


def label_parameters(
    model: Any,
    *,
    decay_names: Iterable[str] | None = None,
    target_patterns: Any = None,
    subject: str = "this optimizer",
    rules: Sequence[Any] = (),
    exclude: str | None = None,
) -> ParamTable:
    """The labelled parameters of ``model``. Nothing in the model changes.

    ``decay_names``: the Trainer's weight-decay names (default: the stock split). ``target_patterns``:
    ``optim_target_modules`` (``ValueError`` naming the patterns and a few modules that exist when they match
    no trainable ``nn.Linear``). ``rules``: parsed ``optim_groups`` rules (``ValueError`` naming a rule that
    covers no trainable parameter). ``exclude``: a routing pattern searched in each name's last two parts.
    """
    modules = dict(model.named_modules())
    aliases: dict[int, list[str]] = {}
    params: dict[str, Any] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in aliases:
            params[name] = p
        aliases.setdefault(id(p), []).append(name)
    decay = set(decay_parameter_names(model) if decay_names is None else decay_names)
    embeddings, heads = _embedding_ids(model, modules)
    routers, stacks = _moe_ids(modules)
    norms = {id(p) for m in modules.values() if is_norm_module(m) for p in m.parameters(recurse=False)}
    lora_embedding_cls = _peft_lora_embedding()
    pattern = re.compile(exclude) if exclude else None
    rows = []
    for name, p in params.items():
        parts = name.split(".")
        lora = next((part for part in parts if part.startswith("lora_")), None)
        tuner = modules.get(".".join(parts[:-2])) if len(parts) > 2 else None
        rows.append(ParamLabels(
            name=name, aliases=tuple(aliases[id(p)]), trainable=bool(p.requires_grad), ndim=p.ndim,
            numel=p.numel(), embedding=id(p) in embeddings, head=id(p) in heads, router=id(p) in routers,
            norm=id(p) in norms, bias=parts[-1].endswith("bias"), expert_stack=id(p) in stacks and p.ndim == 3,
            decay=name in decay, lora=lora,
            lora_embedding=lora_embedding_cls is not None and isinstance(tuner, lora_embedding_cls),
            excluded=pattern is not None and any(pattern.search(part) for part in parts[-2:]),
        ))
    table = ParamTable(rows, params)
    if target_patterns is not None:
        targets = set(target_linear_weights(model, target_patterns, subject=subject))
        table = ParamTable([replace(r, target=r.name in targets) for r in table.all_rows], params)
    if rules:
        table = _cover(model, table, rules)
    return table


def _embedding_ids(model: Any, modules: Mapping[str, Any]) -> tuple[set[int], set[int]]:
    """``(embedding ids, head ids)``: the input embedding and every ``nn.Embedding`` weight; the output head's
    parameters. A head tied to the input embedding is the same tensor, so it is both; a separate head that
    happens to be an ``nn.Embedding`` subclass is a head only."""
    from torch import nn

    inputs = _io_params(model, "get_input_embeddings", weight_only=True)
    heads = _io_params(model, "get_output_embeddings")
    embeddings = inputs | {id(m.weight) for m in modules.values() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    return embeddings - (heads - inputs), heads


def _io_params(model: Any, getter: str, *, weight_only: bool = False) -> set[int]:
    fn = getattr(model, getter, None)
    try:
        module = fn() if callable(fn) else None
    except (NotImplementedError, AttributeError):  # transformers' base classes raise these without the layer
        module = None
    if module is None:
        return set()
    if weight_only:
        weight = getattr(module, "weight", None)
        return {id(weight)} if weight is not None else set()
    return {id(p) for p in module.parameters(recurse=False)}


def _moe_ids(modules: Mapping[str, Any]) -> tuple[set[int], set[int]]:
    """``(router ids, expert-stack ids)``, from the model's structure.

    An experts module is one named ``experts`` (transformers' MoE blocks: 3-D stacks ``(experts, out, in)``, or
    a ``ModuleList`` of expert MLPs in older layouts). Its number of experts E is the stacks' first dimension
    (or the list's length). A router is a sibling module beside it whose own 2-D weight has E rows: Qwen3-MoE
    / Mixtral / OLMoE / DeepSeek-V3 ``mlp.gate``, GPT-OSS ``mlp.router``, Granite ``block_sparse_moe.router``
    (a shared expert's gate has one row, a shared expert's own layers are not direct siblings).
    """
    from torch import nn

    routers: set[int] = set()
    stacks: set[int] = set()
    for path, module in modules.items():
        if path.rpartition(".")[2] != "experts":
            continue
        own = list(module.parameters(recurse=False))
        stacks |= {id(p) for p in own if p.ndim == 3}
        counts = {p.shape[0] for p in own if p.ndim == 3}
        if isinstance(module, nn.ModuleList):
            counts.add(len(module))
        parent = path.rpartition(".")[0]
        siblings = [m for n, m in modules.items() if n.rpartition(".")[0] == parent and n and n != path]
        for sibling in siblings:
            weights = list(sibling.parameters(recurse=False))
            if any(p.ndim == 2 and p.shape[0] in counts for p in weights):
                routers |= {id(p) for p in weights}
    return routers, stacks


def is_norm_module(module: Any) -> bool:
    """Normalisation layers: torch's norm classes and anything named like one (LlamaRMSNorm, T5LayerNorm)."""
    from torch import nn

    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)
    return isinstance(module, norm_types) or "norm" in type(module).__name__.lower()


def _peft_lora_embedding() -> Any:
    try:
        from peft.tuners.lora.layer import Embedding
    except ImportError:  # without peft there are no LoRA embedding layers
        return None
    return Embedding


def decay_parameter_names(model: Any) -> set[str]:
    """Names of the parameters that get weight decay, as ``Trainer.get_decay_parameter_names``.

    Parameters inside ``nn.LayerNorm`` and names matching bias / norm patterns are excluded.
    """
    from torch import nn

    excluded_modules = {name for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    names = set()
    for name, _ in model.named_parameters():
        owner = name.rpartition(".")[0]
        if _inside(owner, excluded_modules) or _NO_DECAY_RE.search(name.lower()):
            continue
        names.add(name)
    return names


def _inside(module_name: str, modules: set[str]) -> bool:
    while module_name:
        if module_name in modules:
            return True
        module_name = module_name.rpartition(".")[0]
    return False


def peft_modules(model: Any) -> list[str]:
    """Names of the model's modules that come from PEFT (adapters, tuner layers, the ``PeftModel`` itself)."""
    return [n or "(the model)" for n, m in model.named_modules() if type(m).__module__.startswith("peft.")]


def parameter_names(model: Any) -> dict[int, tuple[str, ...]]:
    """Every name of each parameter tensor, by identity (the first is the one ``named_parameters`` gives)."""
    names: dict[int, list[str]] = {}
    if model is not None and callable(getattr(model, "named_parameters", None)):
        for n, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(n)
    return {k: tuple(v) for k, v in names.items()}


# ------------------------------------------------------------------------------------------ target modules


def is_all_linear(patterns: Any) -> bool:
    return isinstance(patterns, str) and patterns.replace("_", "-").lower() == "all-linear"


def module_matches(patterns: str | Sequence[str], module_name: str) -> bool:
    """transformers' rule: a string is a full-match regex; a list matches by exact name, then
    substring, then full-match regex."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, module_name) is not None
    if module_name in patterns:
        return True
    if any(p in module_name for p in patterns):
        return True
    return any(re.fullmatch(p, module_name) is not None for p in patterns)


def check_target_patterns(patterns: Any) -> None:
    """``ValueError`` for target patterns that are malformed whatever the model: not strings, an empty
    pattern (as a substring it would target every Linear, the output head included), an invalid regex."""
    if not isinstance(patterns, (str, list, tuple)) or (
        not isinstance(patterns, str) and not all(isinstance(p, str) for p in patterns)
    ):
        raise ValueError(
            f"`optim_target_modules` must be a regex string, a list of strings or 'all-linear', not "
            f"{shorten(patterns)}"
        )
    if isinstance(patterns, str):
        if is_all_linear(patterns):
            return
        items = [patterns]
    else:
        items = list(patterns)
        if not items:
            raise ValueError(
                "`optim_target_modules` is an empty list: name the modules to target, e.g. "
                "[r'.*attn.*', r'.*mlp.*'], or 'all-linear'"
            )
    for item in items:
        if not item.strip():
            raise ValueError(
                f"`optim_target_modules` {shorten(patterns)} contains an empty pattern {item!r}: as a substring it "
                "matches every nn.Linear, the output head included. Remove it, or use 'all-linear' for every "
                "Linear except the head."
            )
        try:
            re.compile(item)
        except (re.error, RecursionError, OverflowError) as exc:  # nesting too deep is no regex either
            raise ValueError(
                f"`optim_target_modules` pattern {shorten(item)} is not a valid regular expression "
                f"({shorten(str(exc) or type(exc).__name__)}); fix it, or match the name literally with "
                f"re.escape({shorten(item)}) = {shorten(re.escape(item))}"
            ) from None


def target_linear_weights(model: Any, patterns: str | Sequence[str] | None, *, subject: str) -> list[str]:
    """Names of the ``nn.Linear`` weights picked by ``optim_target_modules``.

    ``"all-linear"`` picks every Linear except the output head. Raises ``ValueError`` naming the
    patterns and a few module names that exist when nothing matches or no patterns were given.
    """
    from torch import nn

    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]
    if patterns is None:
        raise ValueError(
            f"{subject} needs `optim_target_modules` (e.g. [r'.*attn.*', r'.*mlp.*'] or 'all-linear'); "
            f"Linear modules in this model include: {_module_examples(linear)}"
        )
    check_target_patterns(patterns)
    if is_all_linear(patterns):
        getter = getattr(model, "get_output_embeddings", None)
        try:
            head = getter() if callable(getter) else None
        except (NotImplementedError, AttributeError):
            head = None
        chosen = [n for n, m in linear if m is not head]
    else:
        chosen = [n for n, _ in linear if module_matches(patterns, n)]
    if not chosen:
        raise ValueError(
            f"`optim_target_modules` {shorten(patterns)} matches no nn.Linear module of this model ({subject}). "
            f"Modules that exist include: {_module_examples(linear)}"
        )
    modules = dict(linear)
    trainable = [n for n in chosen if modules[n].weight.requires_grad]
    if not trainable:
        others = [(n, m) for n, m in linear if m.weight.requires_grad]
        raise ValueError(
            f"`optim_target_modules` {shorten(patterns)} matches only frozen weights (requires_grad=False: "
            f"{', '.join(chosen[:4])}{' ...' if len(chosen) > 4 else ''}), so {subject} would project nothing. "
            "Target trainable modules"
            + (f" (trainable nn.Linear modules include: {_module_examples(others)})" if others else "")
            + ", or unfreeze these."
        )
    return [f"{n}.weight" for n in chosen]


def _module_examples(named: list[tuple[str, Any]], n: int = 6) -> str:
    names = [name for name, _ in named]
    # one of each distinct suffix reads better than six copies of layer 0
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.rpartition(".")[2], name)
    picked = list(seen.values())[:n] or names[:n]
    return ", ".join(picked) if picked else "(no nn.Linear modules)"


def examples(names: Sequence[str], n: int = 6) -> str:
    """A few names, one per distinct ending (layer numbers folded), for messages."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(re.sub(r"\.\d+\.", ".N.", name), name)
    picked = list(seen.values())[:n]
    return ", ".join(picked) if picked else "(none: the model has no trainable parameters)"


# ------------------------------------------------------------------------------------------ optim_groups


def selected(table: ParamTable, selector: tuple[str, ...] | None) -> set[str]:
    """Names (of trainable parameters) a rule's selector covers: regexes searched in the full name, or named
    sets."""
    if selector is None:
        return {r.name for r in table}
    out: set[str] = set()
    for pattern in selector:
        if pattern.startswith("@"):
            out |= {r.name for r in table if _in_named_set(r, pattern)}
        else:
            compiled = re.compile(pattern)
            out |= {r.name for r in table if compiled.search(r.name)}
    return out


def _in_named_set(row: ParamLabels, set_name: str) -> bool:
    if set_name == "@embeddings":
        return row.embedding
    if set_name == "@head":
        return row.head
    if set_name == "@norms":
        return row.norm
    if set_name == "@biases":
        return row.bias
    if set_name == "@no_decay":
        return not row.decay
    raise ValueError(f"unknown named set {set_name!r}")  # pragma: no cover - parse_rules refuses it


def loraplus_sets(table: ParamTable) -> tuple[set[str], set[str]]:
    """``(scaled, embedding)`` names as ``peft.optimizers.create_loraplus_optimizer`` splits them: a factor of a
    LoRA ``Embedding`` layer gets the embedding rate; else a ``lora_B`` parameter or any 1-D one gets
    ratio x lr."""
    embedding = {r.name for r in table if r.lora_embedding}
    scaled = {r.name for r in table if r.name not in embedding and (r.lora == "lora_B" or r.ndim == 1)}
    return scaled, embedding


def _cover(model: Any, table: ParamTable, rules: Sequence[Any]) -> ParamTable:
    """The table with each row's covering selector rules (and layers, when a ``layer_decay`` rule asks)."""
    covering: dict[str, list[int]] = {r.name: [] for r in table.all_rows}
    for rule in rules:
        if rule.shorthand == "loraplus_lr_ratio":
            if not any(r.lora is not None for r in table):
                raise ValueError(
                    f"{rule.describe()}: no trainable LoRA parameter (lora_B, lora_embedding_*) in this model; "
                    f"LoRA+ needs a PEFT LoRA model. Trainable parameters include: {table.examples()}"
                )
            continue
        if rule.shorthand is not None:
            continue
        covered = selected(table, rule.selector)
        if not covered:
            raise ValueError(
                f"{rule.describe()} matches no trainable parameter of this model. Trainable parameters "
                f"include: {table.examples()}"
            )
        for name in covered:
            covering[name].append(rule.index)
    layers: dict[str, int] = {}
    num_blocks = None
    if any(rule.shorthand == "layer_decay" for rule in rules):
        _, num_blocks, layers = block_layers(model, [r.name for r in table])
    rows = [replace(r, rules=tuple(covering[r.name]), layer=layers.get(r.name)) for r in table.all_rows]
    return ParamTable(rows, table._params, num_blocks)


def block_layers(model: Any, names: Sequence[str]) -> tuple[str, int, dict[str, int]]:
    """timm's layer ids: ``(blocks' module name, L, name -> layer)``.

    The stacked blocks are the ``nn.ModuleList`` holding the most parameters (a decoder's ``layers``, a
    ViT's ``blocks``). Parameters named before the first block are layer 0 (the embeddings), the k-th
    block (from 1) is layer k, everything after the last block is layer L + 1.
    """
    from torch import nn

    best, best_size = None, 0
    for mname, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = mname, size
    if best is None:
        raise ValueError(
            "optim_groups {'layer_decay': ...}: this model has no stack of blocks (no nn.ModuleList of layers) "
            "to count layers in"
        )
    num_blocks = len(dict(model.named_modules())[best])
    prefix = re.compile(rf"(?:^|\.){re.escape(best)}\.(\d+)\." if best else r"^(\d+)\.")
    layers: dict[str, int] = {}
    seen_block = False
    for name in names:
        match = prefix.search(name) if best else re.match(r"^(\d+)\.", name)
        if match:
            seen_block = True
            layers[name] = int(match.group(1)) + 1
        else:
            layers[name] = num_blocks + 1 if seen_block else 0
    return best, num_blocks, layers


# ------------------------------------------------------------------------------------------ group layout


def group_layout(param_groups: Iterable[Mapping[str, Any]], model: Any) -> list[dict[str, Any]]:
    """Each param group as plain, JSON-able data: parameter names, elements, starting rate, weight decay, options.

    Deterministic for a given model and arguments: what a checkpoint records to refuse resuming into another
    layout, and what ``optim-registry groups`` prints. ``names`` holds each tensor's first name, ``aliases``
    all of them (a tied head has two). The rate is the schedule's starting rate (``initial_lr``) when a
    scheduler has run.
    """
    names = parameter_names(model)
    layout = []
    for group in param_groups:
        lr = group.get("initial_lr", group.get("lr"))
        options = {
            k: _plain_value(v) for k, v in group.items()
            if k not in ("params", "lr", "initial_lr", "weight_decay", "param_names")
        }
        aliases = [names.get(id(p), (f"<unnamed parameter {i}>",)) for i, p in enumerate(group["params"])]
        layout.append({
            "names": [a[0] for a in aliases],
            "aliases": [list(a) for a in aliases],
            "elements": sum(p.numel() for p in group["params"]),
            "lr": None if lr is None else float(lr),
            "weight_decay": None if group.get("weight_decay") is None else float(group["weight_decay"]),
            "options": options,
        })
    return layout


def _plain_value(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1:
        return value.item()
    return repr(value)
