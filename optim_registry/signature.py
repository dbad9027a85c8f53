"""Option types read from a constructor's signature: one inferer for plugins, schedulers and catalogues."""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

from .spec import Option, with_guessed_range


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
    if annotation is not inspect.Parameter.empty:
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        text = text.replace("typing.", "").replace(" ", "")
        words = set(text.replace("|", ",").replace("[", ",").replace("]", ",").split(","))
        words.discard("None")
        words.discard("Optional")
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
    return "any"
