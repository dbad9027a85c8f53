"""Parse and type ``optim_args`` / scheduler kwargs against a record's declared options, in one place.

Accepted input: ``None``, a ``"k=v,k=v"`` string, a JSON object string, or a dict. Values are typed by
the option's declared type: ints, floats (``1e-3``), booleans (``true/false/1/0/yes/no``, any case),
tuples (``(0.9,0.95)``), ``none``, dtype names. Every mistake is a ``ValueError`` naming the token.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .spec import Option

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NONE = {"none", "null"}
_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64", "double": "float64",
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2",
}


def closest(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to ``word``, best first (then the rest in order, for listing)."""
    candidates = list(candidates)
    best = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    if not best:
        lower = word.lower()
        best = [c for c in candidates if lower in c.lower() or c.lower() in lower][:n]
    return best


def ordered_by_closeness(word: str, candidates: Iterable[str]) -> list[str]:
    """All candidates, the closest to ``word`` first."""
    candidates = list(candidates)
    return sorted(candidates, key=lambda c: -difflib.SequenceMatcher(None, word, c).ratio())


def split_pairs(text: str, where: str = "optim_args") -> list[tuple[str, str]]:
    """Split ``"a=1, b=(0.9,0.95),"`` into ``[("a", "1"), ("b", "(0.9,0.95)")]``.

    Commas inside brackets belong to the value; a trailing comma and spaces around tokens are
    tolerated; spaces inside a value are kept.
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            loaded = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} {text!r} looks like JSON but does not parse: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{where} {text!r}: a JSON value must be an object")
        return [(str(k), v) for k, v in loaded.items()]
    tokens: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(stripped):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{where} {text!r}: unbalanced {ch!r} at position {i}")
        elif ch == "," and depth == 0:
            tokens.append(stripped[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"{where} {text!r}: unbalanced brackets")
    tokens.append(stripped[start:])
    pairs = []
    for token in tokens:
        if not token.strip():
            continue
        if "=" not in token:
            raise ValueError(
                f"{where} token {token.strip()!r} has no '='; write key=value pairs separated by commas, "
                "and put values that contain commas in brackets, e.g. betas=(0.9,0.95)"
            )
        key, value = token.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"{where} token {token.strip()!r} has an empty key")
        pairs.append((key, value.strip()))
    return pairs


def to_mapping(raw: str | Mapping[str, Any] | None, where: str = "optim_args") -> dict[str, Any]:
    """Raw ``optim_args`` as a dict of (still untyped) values; duplicated keys are an error."""
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str):
        raise ValueError(f"{where} must be a 'k=v,k=v' string or a dict, not {type(raw).__name__}")
    out: dict[str, Any] = {}
    for key, value in split_pairs(raw, where):
        if key in out:
            raise ValueError(f"{where} key {key!r} is given twice")
        out[key] = value
    return out


def _as_str(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) else None


def _seq(value: Any) -> list[Any]:
    text = _as_str(value)
    if text is None:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise TypeError
    if text[:1] in "([" and text[-1:] in ")]":
        text = text[1:-1]
    return [t.strip() for t in text.split(",") if t.strip()]


def coerce(option: Option, value: Any, *, where: str = "optim_args") -> Any:
    """``value`` typed as ``option`` declares, or a ``ValueError`` naming the key and expected type."""
    text = _as_str(value)
    if text is not None and text.lower() in _NONE:
        if option.nullable or option.default is None:
            return None
        raise ValueError(f"{where} key {option.name!r} cannot be none; expected {option.type}")
    if value is None:
        if option.nullable or option.default is None:
            return None
        raise ValueError(f"{where} key {option.name!r} cannot be None; expected {option.type}")
    try:
        result = _coerce(option.type, value, text)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where} key {option.name!r}: {value!r} is not a valid {_TYPE_WORDS[option.type]}"
            + (f" (one of {list(option.choices)})" if option.choices else "")
        ) from None
    if option.choices is not None and result not in option.choices:
        raise ValueError(f"{where} key {option.name!r}: {value!r} is not one of {list(option.choices)}")
    check_range(option, result, where=where)
    return result


def check_range(option: Option, value: Any, *, where: str = "optim_args") -> None:
    """``ValueError`` naming the key, the value and the valid range when a typed number is outside it."""
    if option.type in ("floats", "ints") and option.length is not None and len(value) != option.length:
        raise ValueError(
            f"{where} key {option.name!r}: {shorten(value)} has {len(value)} number(s); it takes exactly "
            f"{option.length}, e.g. {option.name}=({','.join(['0.9'] * option.length)})"
        )
    if option.type not in ("int", "float", "floats", "ints"):
        return
    numbers = value if isinstance(value, tuple) else (value,)
    for number in numbers:
        if option.finite and isinstance(number, float) and not math.isfinite(number):
            bound = option.range_text()
            raise ValueError(
                f"{where} key {option.name!r}: {number!r} is not a finite number"
                + (f"; valid range {bound}" if bound else "")
            )
        if not option.in_range(number):
            raise ValueError(
                f"{where} key {option.name!r}: {shorten(value)} is out of range; valid range {option.range_text()}"
            )


def shorten(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a huge input never floods a message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


_TYPE_WORDS = {
    "int": "integer", "float": "number", "bool": "boolean (true/false/1/0/yes/no)", "str": "string",
    "floats": "tuple of numbers such as (0.9,0.95)", "ints": "tuple of integers such as (100,200)",
    "dtype": "dtype name (float32, bfloat16, float16, ...)", "any": "value",
}


def _coerce(kind: str, value: Any, text: str | None) -> Any:
    if kind == "any":
        return _literal(text) if text is not None else value
    if kind == "str":
        if text is None:
            raise TypeError
        return text
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if text is not None and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError
    if kind == "int":
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int):
            return value
        number = float(text) if text is not None else float(value)
        if not number.is_integer():
            raise ValueError
        return int(number)
    if kind == "float":
        if isinstance(value, bool):
            raise TypeError
        return float(text) if text is not None else float(value)
    if kind == "floats":
        return tuple(_coerce("float", v, _as_str(v)) for v in _seq(value))
    if kind == "ints":
        return tuple(_coerce("int", v, _as_str(v)) for v in _seq(value))
    if kind == "dtype":
        import torch

        if isinstance(value, torch.dtype):
            return value
        name = (text or "").lower().removeprefix("torch.")
        return getattr(torch, _DTYPES[name])
    raise TypeError


def _literal(text: str) -> Any:
    """Best-effort typing for options declared ``any`` (plugin options without a default)."""
    low = text.lower()
    if low in _NONE:
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in ("int", "float"):
        try:
            return _coerce(kind, text, text)
        except (TypeError, ValueError):
            pass
    if text[:1] in "([" and text[-1:] in ")]":
        return tuple(_literal(t) for t in _seq(text))
    return text


def parse_options(
    raw: str | Mapping[str, Any] | None,
    options: Iterable[Option],
    *,
    subject: str,
    where: str = "optim_args",
) -> dict[str, Any]:
    """Typed values for the keys present in ``raw``; an unknown key names the accepted ones.

    ``subject`` names what the options belong to (e.g. ``optim='adamw_torch'``) for the message.
    """
    declared = {o.name: o for o in options}
    typed: dict[str, Any] = {}
    for key, value in to_mapping(raw, where).items():
        option = declared.get(key)
        if option is None:
            accepted = ordered_by_closeness(key, declared)
            hint = f" Did you mean {accepted[0]!r}?" if accepted and closest(key, declared) else ""
            raise ValueError(
                f"{where} key {key!r} is not accepted by {subject}.{hint} "
                f"Accepted keys (closest first): {', '.join(accepted) if accepted else '(none)'}"
            )
        typed[key] = coerce(option, value, where=where)
    return typed
