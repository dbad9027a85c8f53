"""``optim_groups``: per-parameter rates, weight decay and options by rule. Pure functions over labels.

A rule is a selection plus settings (``{"params": "lora_B", "lr_scale": 16}``); the groups fall out of
applying the rules in order to every trainable parameter (optax's ``multi_transform`` labels, timm's
``param_groups_layer_decay``). Parsing needs only the arguments (so mistakes are refused when
``TrainingArguments`` is created); which parameters a rule covers is a label of the parameter table
(``labels.label_parameters(model, rules=rules)``), and applying the settings changes nothing in the model.

Example::

    rules = parse_rules([{"loraplus_lr_ratio": 16}, {"params": "@embeddings", "lr": 1e-5}])
    table = label_parameters(model, rules=rules)
    groups = compose(table, groups, rules, default_lr=2e-4)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .labels import NAMED_SETS, ParamTable, loraplus_sets
from .optim_args import closest, coerce, shorten
from .spec import Option

#: Keys every rule may carry, whatever the optimizer.
BASE_KEYS = ("params", "lr", "lr_scale", "weight_decay")
#: Shorthand rules and the keys each accepts.
SHORTHANDS: dict[str, tuple[str, ...]] = {
    "loraplus_lr_ratio": ("loraplus_lr_ratio", "loraplus_lr_embedding"),
    "layer_decay": ("layer_decay",),
}
#: peft's default rate for LoRA parameters of embedding layers under LoRA+.
LORAPLUS_LR_EMBEDDING = 1e-6

_NUMBER_OPTIONS = {
    "lr": Option("lr", "float", 0.0, "absolute learning rate", low=0.0),
    "lr_scale": Option("lr_scale", "float", 1.0, "factor on the rate", low=0.0),
    "weight_decay": Option("weight_decay", "float", 0.0, "weight decay", low=0.0),
    "loraplus_lr_ratio": Option("loraplus_lr_ratio", "float", 16.0, "LoRA+ ratio lr_B / lr_A", low=0.0,
                                low_open=True),
    "loraplus_lr_embedding": Option("loraplus_lr_embedding", "float", LORAPLUS_LR_EMBEDDING,
                                    "rate of LoRA embedding parameters", low=0.0),
    "layer_decay": Option("layer_decay", "float", 0.75, "per-layer rate decay", low=0.0, low_open=True),
}


@dataclass(frozen=True)
class Rule:
    """One parsed rule: what it selects, what it sets (typed), or which shorthand it is."""

    index: int
    raw: Mapping[str, Any]
    selector: tuple[str, ...] | None = None  # regexes and named sets; None: every trainable parameter
    settings: Mapping[str, Any] = field(default_factory=dict)
    shorthand: str | None = None  # "loraplus_lr_ratio" / "layer_decay"

    def describe(self) -> str:
        return f"optim_groups rule {self.index} {shorten(dict(self.raw), 120)}"


def accepted_keys(group_options: Iterable[str] = ()) -> list[str]:
    """Every key a rule may carry: the base keys, the optimizer's per-group options, the shorthands."""
    keys = list(BASE_KEYS) + [k for k in group_options if k not in BASE_KEYS]
    for shorthand_keys in SHORTHANDS.values():
        keys += [k for k in shorthand_keys if k not in keys]
    return keys


def load_rules(raw: Any) -> list[Any]:
    """The rules as a list (a JSON string is decoded); ``ValueError`` for anything else."""
    if raw is None:
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"optim_groups {shorten(raw)} is a string but not JSON ({exc}); give a JSON list of rules, "
                'e.g. \'[{"params": "lora_B", "lr_scale": 16}]\''
            ) from None
    if isinstance(raw, Mapping):
        raise ValueError(
            f"optim_groups must be a list of rules, not one mapping {shorten(raw)}: wrap it in a list"
        )
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"optim_groups must be a list of rules (or its JSON string), not {type(raw).__name__}")
    return list(raw)


def parse_rules(
    raw: Any, group_options: Mapping[str, Option] | None = None, *, subject: str = "this optimizer"
) -> tuple[Rule, ...]:
    """Parsed, typed rules; every mistake is one ``ValueError`` naming the rule and the way out.

    ``group_options`` are the per-group options the chosen optimizer reads (its record's
    ``group_options``), typed by their declared ``Option``.
    """
    group_options = dict(group_options or {})
    keys = accepted_keys(group_options)
    rules = []
    for index, item in enumerate(load_rules(raw)):
        where = f"optim_groups rule {index} {shorten(item, 120)}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a mapping such as {{\"params\": \"lora_B\", \"lr_scale\": 16}}")
        if not item:
            raise ValueError(f"{where} is empty: give it at least one of {', '.join(keys)}")
        for key in item:
            if not isinstance(key, str) or key not in keys:
                near = closest(str(key), keys)
                hint = f" Did you mean {near[0]!r}?" if near else ""
                raise ValueError(
                    f"{where}: key {key!r} is not accepted for {subject}.{hint} Accepted keys: {', '.join(keys)}"
                )
        shorthand = next((s for s in SHORTHANDS if s in item), None)
        if shorthand is not None:
            rules.append(_parse_shorthand(index, item, shorthand, where))
            continue
        stray = [k for k in item if any(k in ks for ks in SHORTHANDS.values())]
        if stray:
            raise ValueError(f"{where}: {stray[0]!r} belongs to a {{'loraplus_lr_ratio': R}} rule")
        selector = _parse_selector(item.get("params"), where) if "params" in item else None
        settings: dict[str, Any] = {}
        for key, value in item.items():
            if key == "params":
                continue
            option = _NUMBER_OPTIONS.get(key) or group_options[key]
            settings[key] = _typed(option, value, where)
        if not settings:
            raise ValueError(
                f"{where} selects parameters but sets nothing: add lr, lr_scale, weight_decay or one of "
                f"{', '.join(k for k in keys if k not in BASE_KEYS) or '(no per-group options)'}"
            )
        rules.append(Rule(index, dict(item), selector, settings))
    return tuple(rules)


def _typed(option: Option, value: Any, where: str) -> Any:
    if option.type in ("float", "int") and isinstance(value, bool):
        raise ValueError(f"{where}: key {option.name!r} takes a number, not {value!r}")
    typed = coerce(option, value, where=where)
    if isinstance(typed, float) and not math.isfinite(typed):  # pragma: no cover - coerce refuses these
        raise ValueError(f"{where}: key {option.name!r} must be finite, got {value!r}")
    return typed


def _parse_shorthand(index: int, item: Mapping[str, Any], shorthand: str, where: str) -> Rule:
    allowed = SHORTHANDS[shorthand]
    extra = [k for k in item if k not in allowed]
    if extra:
        raise ValueError(
            f"{where}: {shorthand!r} is a rule of its own and takes only {', '.join(allowed)}; move "
            f"{', '.join(repr(k) for k in extra)} into another rule"
        )
    settings = {k: _typed(_NUMBER_OPTIONS[k], item[k], where) for k in allowed if k in item}
    return Rule(index, dict(item), None, settings, shorthand)


def _parse_selector(value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError(
            f"{where}: 'params' must be a regex string, a non-empty list of them, or one of {', '.join(NAMED_SETS)}"
        )
    for pattern in items:
        if pattern.startswith("@"):
            if pattern not in NAMED_SETS:
                near = closest(pattern, NAMED_SETS)
                hint = f" Did you mean {near[0]!r}?" if near else ""
                raise ValueError(f"{where}: unknown named set {pattern!r}.{hint} Named sets: {', '.join(NAMED_SETS)}")
            continue
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{where}: 'params' {pattern!r} is not a valid regex: {exc}") from None
    return tuple(items)


# ------------------------------------------------------------------------------------ application


def apply_rules(
    table: ParamTable, rules: Sequence[Rule], base: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Final settings per parameter name: ``base`` (what it gets without rules, with its ``lr``) refined.

    ``table`` carries which rules cover each parameter (``label_parameters(model, rules=rules)``). The rate is
    the last ``lr`` among the rules covering a parameter (else its base rate) times every ``lr_scale``
    covering it; any other key: the last rule wins.
    """
    names = [name for name in base]
    absolute: dict[str, float] = {}
    scale = dict.fromkeys(names, 1.0)
    other: dict[str, dict[str, Any]] = {n: {} for n in names}
    for rule in rules:
        if rule.shorthand == "loraplus_lr_ratio":
            scaled, embedding = loraplus_sets(table)
            ratio = rule.settings["loraplus_lr_ratio"]
            for n in scaled & scale.keys():
                scale[n] *= ratio
            rate = rule.settings.get("loraplus_lr_embedding", LORAPLUS_LR_EMBEDDING)
            for n in embedding & scale.keys():
                absolute[n] = rate
                scale[n] = 1.0  # peft gives these the embedding rate outright
            continue
        if rule.shorthand == "layer_decay":
            decay = rule.settings["layer_decay"]
            num_blocks = table.num_blocks or 0
            for n in names:
                scale[n] *= decay ** (num_blocks + 1 - (table[n].layer or 0))
            continue
        for n in names:
            if rule.index not in table[n].rules:
                continue
            for key, value in rule.settings.items():
                if key == "lr":
                    absolute[n] = value
                elif key == "lr_scale":
                    scale[n] *= value
                else:
                    other[n][key] = value
    out: dict[str, dict[str, Any]] = {}
    for n in names:
        settings = {**base[n], **other[n]}
        settings["lr"] = absolute.get(n, base[n]["lr"]) * scale[n]
        out[n] = settings
    return out


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def regroup(
    groups: Sequence[Mapping[str, Any]], planned: Mapping[int, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Parameters with equal final settings share one group, in first-seen order (deterministic).

    ``groups`` are the groups without rules (their parameter order is kept); ``planned`` maps a
    parameter's ``id`` to its final settings.
    """
    out: dict[Any, dict[str, Any]] = {}
    for group in groups:
        for p in group["params"]:
            settings = planned[id(p)]
            key = tuple(sorted((k, _frozen(v)) for k, v in settings.items()))
            if key not in out:
                out[key] = {**settings, "params": []}
            out[key]["params"].append(p)
    return [{"params": g.pop("params"), **g} for g in out.values()]


def compose(
    table: ParamTable,
    groups: Sequence[Mapping[str, Any]],
    rules: Sequence[Rule],
    *,
    default_lr: float,
) -> list[dict[str, Any]]:
    """The groups refined by the rules; each gets its own ``lr`` so every scheduler sees it.

    A group's settings (its weight decay, projection options, routing flag and rate) are each of its
    parameters' base; the rules then apply per parameter and equal results merge.
    """
    base_by_id: dict[int, dict[str, Any]] = {}
    for group in groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        settings.setdefault("lr", default_lr)
        for p in group["params"]:
            base_by_id[id(p)] = settings
    # The model's order (the table's): layer ids count blocks in the order the model names them.
    named = [(n, p) for n, p in table.named() if id(p) in base_by_id]
    final = apply_rules(table, rules, {n: base_by_id[id(p)] for n, p in named})
    planned = {id(p): final[n] for n, p in named}
    return regroup(groups, planned)
