"""Option types read from a constructor's signature: one inferer for plugins, schedulers and catalogues.

``signature_options`` types the options of an optimizer or scheduler plugin (string annotations included,
so it never evaluates them); ``catalog_option`` types one parameter of pytorch_optimizer's classes as plain
literals for the shipped catalogue (``Literal`` choices, ``IntEnum`` values, dtypes) and is also used when
the installed library is not the version the catalogue was generated from. Both read an evaluated
annotation through ``annotation_type``.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from dataclasses import replace
from typing import Any

from .spec import Option

_RATE = re.compile(r"(^|_)lr($|_)")
_EPS = re.compile(r"(^|_)eps(_?\d+)?$")
_DECAY = re.compile(r"(^|_)weight_decay($|_)")
_BETA = re.compile(r"^betas?\d*$|_beta\d*$")


def with_guessed_range(option: Option) -> Option:
    """``option`` with the obvious range its name implies, for options typed from a signature.

    Rates (``lr``, ``*_lr``), epsilons, weight decays, betas and momentum cannot be negative; a tuple
    default fixes the tuple's length. A default that already breaks the guess (a negative ``lr_power``)
    means the name misleads, and the option is left as it is.
    """
    numeric = ("int", "float", "floats", "ints", "float_or_floats", "any")
    if option.type not in numeric or option.low is not None or option.high is not None:
        return option
    changes: dict[str, Any] = {}
    defaults = option.default if isinstance(option.default, (tuple, list)) else (option.default,)
    numbers = [d for d in defaults if isinstance(d, (int, float)) and not isinstance(d, bool)]
    named = any(p.search(option.name) for p in (_RATE, _EPS, _DECAY, _BETA)) or option.name == "momentum"
    if named and all(n >= 0 for n in numbers):
        changes["low"] = 0.0
    if option.type in ("floats", "ints") and isinstance(option.default, (tuple, list)) and option.length is None:
        changes["length"] = len(option.default)
    return replace(option, **changes) if changes else option


def signature_options(cls: Any, skip: set[str], *, ranges: bool = False) -> tuple[Option, ...]:
    """Options typed from a constructor's signature defaults (used for plugins and catalogues).

    ``ranges=True`` (optimizer plugins) adds the range an option's name makes obvious (rates, eps,
    weight decay, betas, momentum cannot be negative) and marks arguments without a default required.
    """
    out = []
    try:
        params = inspect.signature(cls.__init__ if isinstance(cls, type) else cls).parameters
    except (TypeError, ValueError):
        return ()
    for pname, p in params.items():
        if pname in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or pname in ("self", "params"):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        option = Option(pname, _type_of(default, p.annotation), default, nullable=default is None)
        if ranges:
            option = with_guessed_range(replace(option, required=p.default is inspect.Parameter.empty))
        out.append(option)
    return tuple(out)


def _type_of(default: Any, annotation: Any = inspect.Parameter.empty) -> str:
    """An option type from the annotation when it says one clearly, else from the default's type."""
    if annotation is not inspect.Parameter.empty and not isinstance(annotation, str):
        kind = annotation_type(annotation)
        if kind != "any":
            return kind
    if annotation is not inspect.Parameter.empty:
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        text = text.replace("typing.", "").replace(" ", "")
        words = set(text.replace("|", ",").replace("[", ",").replace("]", ",").split(","))
        words.discard("None")
        words.discard("Optional")
        if text.startswith(("Callable", "collections.abc.Callable", "Optional[Callable")):
            return "callable"
        if text.startswith(("tuple", "Tuple")) and "float" in text:
            return "floats"
        if words & {"float", "Tensor", "torch.Tensor"} and not words & {"str", "bool", "tuple", "Tuple", "list"}:
            return "float"
        for kind in ("bool", "int", "str"):
            if words == {kind}:
                return kind
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (tuple, list)) and default and all(isinstance(v, (int, float)) for v in default):
        return "ints" if all(isinstance(v, int) and not isinstance(v, bool) for v in default) else "floats"
    if type(default).__name__ == "dtype":
        return "dtype"
    if callable(default):  # a function as the default: a string can never stand for one
        return "callable"
    return "any"


def docstring_args(doc: str) -> dict[str, str]:
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


def union_members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation, else None."""
    members = [a for a in union_members(annotation) if a is not type(None)]
    if members and all(typing.get_origin(a) is typing.Literal for a in members):
        return tuple(v for a in members for v in typing.get_args(a))
    return None


def annotation_type(annotation: Any) -> str:
    import torch

    members = [a for a in union_members(annotation) if a is not type(None)]
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
    if members and all(_is_callable_annotation(a) for a in members):
        return "callable"
    if members and typing.get_origin(members[0]) is tuple:
        inner = typing.get_args(members[0])
        return "ints" if inner and all(a is int for a in inner if a is not Ellipsis) else "floats"
    return "any"


def _is_callable_annotation(annotation: Any) -> bool:
    import collections.abc

    return annotation in (collections.abc.Callable, typing.Callable) or typing.get_origin(annotation) in (
        collections.abc.Callable, typing.Callable,
    )


def catalog_option(pname: str, param: inspect.Parameter, help_text: str) -> tuple[Any, ...]:
    """``(name, type, default, help, choices, nullable, send)``: plain literals only, so the catalogue is data.

    ``send`` marks an option always passed: an ``IntEnum`` default is replaced by its integer, which the
    classes accept, because an enum in the param groups makes ``torch.load(weights_only=True)`` refuse the
    checkpoint.
    """
    import torch

    annotation, default = param.annotation, param.default
    send = False
    required = default is inspect.Parameter.empty
    nullable = type(None) in union_members(annotation) or default is None
    choices = literal_choices(annotation)
    if isinstance(default, enum.Enum):
        members = list(type(default))
        names = ", ".join(f"{int(m)}={m.name}" for m in members)
        help_text = f"{help_text} ({names})".strip()
        kind, value, choices, send = "int", int(default), tuple(int(m) for m in members), True
    elif isinstance(default, bool):
        kind, value = "bool", default
    elif isinstance(default, int):
        kind, value = ("float" if annotation_type(annotation) == "float" else "int"), default
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
        kind, value = annotation_type(annotation), None
        if kind == "any":  # a process group, a set of tensors, a dict of settings: no string can say one
            kind = "object"
    else:  # a callable or an object: not expressible in optim_args strings; the library's default stays
        kind = "callable" if callable(default) or _is_callable_annotation(annotation) else "object"
        value, nullable = None, True
        shown = getattr(default, "__name__", None) or repr(default)
        help_text = f"{help_text} (library default: {shown}; pass a Python object in a dict optim_args)".strip()
    if choices is not None and kind not in ("str", "int"):
        choices = None
    return (pname, kind, value, help_text, choices, bool(nullable), send)
