"""Which parameters get what: weight-decay split, target-module matching, group assembly. Pure functions.

Everything here is linear in the number of parameter tensors (sets and dicts, never list
membership), and none of it changes the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

#: The stock Trainer's name patterns for parameters that get no weight decay.
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
_NO_DECAY_RE = re.compile("|".join(NO_DECAY_PATTERNS))


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get weight decay, as ``Trainer.get_decay_parameter_names``.

    Parameters inside ``nn.LayerNorm`` and names matching bias / norm patterns are excluded.
    """
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
            f"{_short(patterns)}"
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
                f"`optim_target_modules` {_short(patterns)} contains an empty pattern {item!r}: as a substring it "
                "matches every nn.Linear, the output head included. Remove it, or use 'all-linear' for every "
                "Linear except the head."
            )
        try:
            re.compile(item)
        except (re.error, RecursionError, OverflowError) as exc:  # nesting too deep is no regex either
            raise ValueError(
                f"`optim_target_modules` pattern {_short(item)} is not a valid regular expression "
                f"({_short(str(exc) or type(exc).__name__)}); fix it, or match the name literally with "
                f"re.escape({_short(item)}) = {_short(re.escape(item))}"
            ) from None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


def target_linear_weights(
    model: nn.Module, patterns: str | Sequence[str] | None, *, subject: str
) -> list[str]:
    """Names of the ``nn.Linear`` weights picked by ``optim_target_modules``.

    ``"all-linear"`` picks every Linear except the output head. Raises ``ValueError`` naming the
    patterns and a few module names that exist when nothing matches or no patterns were given.
    """
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]
    if patterns is None:
        raise ValueError(
            f"{subject} needs `optim_target_modules` (e.g. [r'.*attn.*', r'.*mlp.*'] or 'all-linear'); "
            f"Linear modules in this model include: {_examples(linear)}"
        )
    check_target_patterns(patterns)
    if is_all_linear(patterns):
        head = _output_head(model)
        chosen = [n for n, m in linear if m is not head]
    else:
        chosen = [n for n, _ in linear if module_matches(patterns, n)]
    if not chosen:
        raise ValueError(
            f"`optim_target_modules` {_short(patterns)} matches no nn.Linear module of this model ({subject}). "
            f"Modules that exist include: {_examples(linear)}"
        )
    modules = dict(linear)
    trainable = [n for n in chosen if modules[n].weight.requires_grad]
    if not trainable:
        others = [(n, m) for n, m in linear if m.weight.requires_grad]
        raise ValueError(
            f"`optim_target_modules` {_short(patterns)} matches only frozen weights (requires_grad=False: "
            f"{', '.join(chosen[:4])}{' ...' if len(chosen) > 4 else ''}), so {subject} would project nothing. "
            "Target trainable modules"
            + (f" (trainable nn.Linear modules include: {_examples(others)})" if others else "")
            + ", or unfreeze these."
        )
    return [f"{n}.weight" for n in chosen]


def _output_head(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    try:
        return getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        return None


def _examples(named: list[tuple[str, nn.Module]], n: int = 6) -> str:
    names = [name for name, _ in named]
    # one of each distinct suffix reads better than six copies of layer 0
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.rpartition(".")[2], name)
    picked = list(seen.values())[:n] or names[:n]
    return ", ".join(picked) if picked else "(no nn.Linear modules)"


def build_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    decay_names: Iterable[str] | None = None,
    targets: Iterable[str] = (),
    target_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Trainable parameters as param groups: (other, targeted) x (decay, no decay), empties dropped.

    Targeted groups carry ``target_options`` (GaLore's ``rank`` ...). The decay split is kept inside
    the targeted groups too (transformers drops it there).
    """
    decay = set(decay_parameter_names(model) if decay_names is None else decay_names)
    target_set = set(targets)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (False, True): [], (False, False): [], (True, True): [], (True, False): [],
    }
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        buckets[(name in target_set, name in decay)].append(p)
    groups = []
    for (targeted, decayed), params in buckets.items():
        if not params:
            continue
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
        if targeted:
            group.update(target_options or {})
        groups.append(group)
    return groups


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------ matrix routing

#: Name parts (the owning module's and the parameter's own) that keep a 2-D weight off the matrix side.
DEFAULT_MATRIX_EXCLUDE = r"embed|lm_head|wte|wpe|output"

#: Why a parameter went where it went (``optim-registry show muon`` / ``groups`` print these).
ROUTES = {
    "matrix": "hidden 2-D weight -> matrix side",
    "experts": "3-D expert stack (experts.gate_up_proj / down_proj) -> matrix side, one matrix per expert",
    "embedding": "nn.Embedding or the input/output embedding -> AdamW",
    "excluded": "name matches the exclude pattern -> AdamW",
    "lora": "LoRA factor (lora_A / lora_B) -> AdamW (lora_to_adamw=false puts it on the matrix side)",
    "other": "norm, bias, scalar or other non-matrix tensor -> AdamW",
}


def _is_expert_stack(name: str, p: Any) -> bool:
    # transformers' MoE layers keep every expert in one 3-D parameter: (experts, out, in).
    return p.ndim == 3 and ".experts." in f".{name}"


def route_matrices(
    model: nn.Module,
    *,
    exclude: str | None = DEFAULT_MATRIX_EXCLUDE,
    lora_to_adamw: bool = True,
    experts: bool = False,
) -> dict[str, str]:
    """Each trainable parameter's route (a key of ``ROUTES``); only ``matrix`` / ``experts`` take the matrix side.

    A 2-D weight takes the matrix side unless it belongs to an ``nn.Embedding``, is the input or output
    embedding (by identity, which catches a tied head), has ``exclude`` searched in its last two name
    parts (``lm_head`` / ``weight`` of ``lm_head.weight``: the full path would catch BERT's
    ``attention.output.dense``), or is a LoRA factor while ``lora_to_adamw``. With ``experts``, a 3-D
    tensor under ``.experts.`` takes it too (each expert's matrix is orthogonalised on its own).
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        try:
            module = fn() if callable(fn) else None
        except (NotImplementedError, AttributeError):
            module = None
        weight = getattr(module, "weight", None)
        if weight is not None:
            embedding_ids.add(id(weight))
    pattern = re.compile(exclude) if exclude else None
    routes: dict[str, str] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        parts = name.split(".")
        if lora_to_adamw and any(part.startswith("lora_") for part in parts):
            routes[name] = "lora"
        elif id(p) in embedding_ids:
            routes[name] = "embedding"
        elif p.ndim not in (2, 3) or (p.ndim == 3 and not (experts and _is_expert_stack(name, p))):
            routes[name] = "other"
        elif pattern is not None and any(pattern.search(part) for part in parts[-2:]):
            routes[name] = "excluded"
        else:
            routes[name] = "experts" if p.ndim == 3 else "matrix"
    return routes


def split_matrix_groups(
    groups: Iterable[dict[str, Any]],
    names: dict[int, str],
    routes: dict[str, str],
    *,
    flag: str,
    matrix_lr: float,
    other_lr: float,
    matrix_weight_decay: float | None = None,
    other_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Each group split into its matrix-side part (``flag=True``, first) and the rest (``flag=False``).

    Every part carries its own ``lr`` (a scheduler scales each from its own start); a decayed
    part takes ``matrix_weight_decay`` / ``other_weight_decay`` when given.
    """
    matrices: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for group in groups:
        for is_matrix, out in ((True, matrices), (False, others)):
            params = [p for p in group["params"] if (routes.get(names[id(p)]) in ("matrix", "experts")) == is_matrix]
            if not params:
                continue
            part = {k: v for k, v in group.items() if k != "params"}
            part.update({"lr": matrix_lr if is_matrix else other_lr, flag: is_matrix})
            decay = matrix_weight_decay if is_matrix else other_weight_decay
            if decay is not None and part.get("weight_decay", 0.0) > 0:
                part["weight_decay"] = decay
            out.append({"params": params, **part})
    return matrices + others


def split_by_dtype(groups: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each group split so that every part holds parameters of one dtype (FlashOptim needs that)."""
    out: list[dict[str, Any]] = []
    for group in groups:
        by_dtype: dict[Any, list[Any]] = {}
        for p in group["params"]:
            by_dtype.setdefault(p.dtype, []).append(p)
        out.extend({**group, "params": params} for params in by_dtype.values())
    return out


def group_layout(param_groups: Iterable[dict[str, Any]], model: nn.Module) -> list[dict[str, Any]]:
    """Each param group as plain, JSON-able data: parameter names, starting rate, weight decay, options.

    Deterministic for a given model and arguments (what a checkpoint can record to refuse resuming into
    another layout, and what ``optim-registry groups`` prints). The rate is the schedule's starting rate
    (``initial_lr``) when a scheduler has run.
    """
    names: dict[int, str] = {}
    for n, p in model.named_parameters():
        names.setdefault(id(p), n)
    layout = []
    for group in param_groups:
        lr = group.get("initial_lr", group.get("lr"))
        options = {
            k: _plain_value(v) for k, v in group.items()
            if k not in ("params", "lr", "initial_lr", "weight_decay", "param_names")
        }
        layout.append({
            "names": [names.get(id(p), "?") for p in group["params"]],
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
