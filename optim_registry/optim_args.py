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

from .spec import OBJECT_TYPES, Option

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
    """The candidates closest to ``word``, best first; letter case is ignored (``LR`` finds ``lr``)."""
    candidates = list(candidates)
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    lower = str(word).lower()
    # the same name in other letters, then names that start with it ("AdamW" -> adamw_torch), then look-alikes
    prefixed = sorted((c for c in by_lower if c.startswith(lower) and c != lower), key=len)
    similar = difflib.get_close_matches(lower, list(by_lower), n=n, cutoff=0.5)
    best = list(dict.fromkeys([*(c for c in (lower,) if c in by_lower), *prefixed[:3], *similar]))[:n]
    if not best:
        best = [c for c in by_lower if lower in c or c in lower][:n]
    return [by_lower[c] for c in best]


def ordered_by_closeness(word: str, candidates: Iterable[str]) -> list[str]:
    """All candidates, the closest to ``word`` first (letter case ignored)."""
    candidates = list(candidates)
    lower = str(word).lower()
    return sorted(candidates, key=lambda c: -difflib.SequenceMatcher(None, lower, c.lower()).ratio())


def _accepted_hint(accepted: Iterable[str] | None) -> str:
    keys = list(accepted or ())
    return f" Accepted keys: {', '.join(keys)}." if keys else ""


def _unique_pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """``object_pairs_hook`` for JSON: a key given twice is refused, as in the ``k=v`` form."""
    out: dict[Any, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    pass


def split_pairs(text: str, where: str = "optim_args", accepted: Iterable[str] | None = None) -> list[tuple[str, Any]]:
    """Split ``"a=1, b=(0.9,0.95),"`` into ``[("a", "1"), ("b", "(0.9,0.95)")]``.

    Commas inside brackets belong to the value; a trailing comma and spaces around tokens are
    tolerated; spaces inside a value are kept. ``accepted`` (the valid keys) goes into the messages.
    """
    stripped = text.strip()
    shown = shorten(text)
    if stripped.startswith("{"):
        try:
            loaded = json.loads(stripped, object_pairs_hook=_unique_pairs)
        except _DuplicateKey as dup:
            raise ValueError(f"{where} key {dup.args[0]!r} is given twice in the JSON object {shown}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{where} {shown} looks like JSON but does not parse ({exc.msg} at character {exc.pos}); write a "
                'JSON object such as {"betas": [0.9, 0.95]}, or key=value pairs such as betas=(0.9,0.95)'
            ) from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{where} {shown}: a JSON value must be an object")
        return list(loaded.items())
    tokens: list[str] = []
    depth, start = 0, 0
    opened: list[int] = []
    for i, ch in enumerate(stripped):
        if ch in "([{":
            depth += 1
            opened.append(i)
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise ValueError(
                    f"{where} {shown}: unbalanced {ch!r} at position {i} closes no bracket; open it before the numbers, e.g. "
                    "betas=(0.9,0.95), or drop it." + _accepted_hint(accepted)
                )
            opened.pop()
        elif ch == "," and depth == 0:
            tokens.append(stripped[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(
            f"{where} {shown}: unbalanced brackets, the one opened at position {opened[-1]} is never closed; close it after the "
            "numbers, e.g. betas=(0.9,0.95)." + _accepted_hint(accepted)
        )
    tokens.append(stripped[start:])
    pairs: list[tuple[str, Any]] = []
    for token in tokens:
        if not token.strip():
            continue
        if "=" not in token:
            raise ValueError(
                f"{where} token {shorten(token.strip())} has no '='; write key=value pairs separated by commas, "
                "and put values that contain commas in brackets, e.g. betas=(0.9,0.95)." + _accepted_hint(accepted)
            )
        key, value = token.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(
                f"{where} token {shorten(token.strip())} has an empty key; write key=value, e.g. "
                f"{next(iter(accepted or ()), 'lr')}={value.strip() or '...'}." + _accepted_hint(accepted)
            )
        pairs.append((key, value.strip()))
    return pairs


def to_mapping(
    raw: str | Mapping[str, Any] | None, where: str = "optim_args", accepted: Iterable[str] | None = None
) -> dict[str, Any]:
    """Raw ``optim_args`` as a dict of (still untyped) values; duplicated or non-string keys are an error."""
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        bad = [k for k in raw if not isinstance(k, str)]
        if bad:
            raise ValueError(
                f"{where} keys must be strings; {shorten(bad[0])} ({type(bad[0]).__name__}) is not."
                + _accepted_hint(accepted)
            )
        empty = [k for k in raw if not k.strip()]
        if empty:
            raise ValueError(f"{where} has an empty key {empty[0]!r}." + _accepted_hint(accepted))
        return dict(raw)
    if not isinstance(raw, str):
        raise ValueError(f"{where} must be a 'k=v,k=v' string or a dict, not {type(raw).__name__}")
    out: dict[str, Any] = {}
    for key, value in split_pairs(raw, where, accepted):
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{where} has an empty key {key!r}." + _accepted_hint(accepted))
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
    if option.type in OBJECT_TYPES:
        return _object(option, value, text, where)
    try:
        result = _coerce(option.type, value, text, option.item_nullable)
    except (TypeError, ValueError, KeyError):
        raise ValueError(
            f"{where} key {option.name!r}: {shorten(value)} is not a valid {_TYPE_WORDS[option.type]}"
            + (f" (one of {list(option.choices)})" if option.choices else "")
        ) from None
    if option.choices is not None and result not in option.choices:
        raise ValueError(f"{where} key {option.name!r}: {shorten(value)} is not one of {list(option.choices)}")
    check_range(option, result, where=where)
    return result


def check_range(option: Option, value: Any, *, where: str = "optim_args") -> None:
    """``ValueError`` naming the key, the value and the valid range when a typed number is outside it."""
    lengths = option.lengths
    if option.type in ("floats", "ints") and lengths is not None and len(value) not in lengths:
        example = option.default if isinstance(option.default, tuple) and len(option.default) in lengths else None
        if example is None:
            example = (0.9, 0.999, 0.9999, 0.9)[: lengths[0]] if option.type == "floats" else range(1, lengths[0] + 1)
        raise ValueError(
            f"{where} key {option.name!r}: {shorten(value)} has {len(value)} number(s); it takes "
            f"{' or '.join(str(n) for n in lengths)} numbers, e.g. "
            f"{option.name}=({','.join(f'{v:g}' for v in example)})"
        )
    if option.type not in ("int", "float", "floats", "ints", "float_or_floats", "any"):
        return
    numbers = value if isinstance(value, tuple) else (value,)
    # an untyped ("any") option is checked on whatever numbers it turned out to hold
    numbers = tuple(n for n in numbers if isinstance(n, (int, float)) and not isinstance(n, bool))  # none items too
    for number in numbers:
        if option.finite and isinstance(number, float) and not math.isfinite(number):
            bound = option.range_text()
            raise ValueError(
                f"{where} {option.name}={_text(value)} is not a finite number (key {option.name!r}"
                + (f", valid range {bound})" if bound else ")")
            )
        if not option.in_range(number):
            raise ValueError(
                f"{where} {option.name}={_text(value)} is out of range (key {option.name!r}, valid range "
                f"{option.range_text()}{', each number' if isinstance(value, tuple) else ''})"
            )


def _text(value: Any) -> str:
    """A typed value as it would be written in optim_args: ``0.9``, ``(0.9,1.0)``."""
    if isinstance(value, tuple):
        return shorten("(" + ",".join(_text(v) for v in value) + ")").strip("'")
    return repr(value)


def shorten(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a huge input never floods a message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


_TYPE_WORDS = {
    "int": "integer", "float": "number", "bool": "boolean (true/false/1/0/yes/no)", "str": "string",
    "floats": "tuple of numbers such as (0.9,0.95)", "ints": "tuple of integers such as (100,200)",
    "dtype": "dtype name (one of " + ", ".join(sorted(_DTYPES)) + ")", "any": "value",
    "float_or_floats": "number, or tuple of numbers (one per param group) such as (1e-5,1e-6)",
    "callable": "Python callable", "object": "Python object",
}


def _object(option: Option, value: Any, text: str | None, where: str) -> Any:
    """A ``callable`` / ``object`` option: a string cannot give one (``'abc'`` would reach the optimizer as text)."""
    what = "function (a callable)" if option.type == "callable" else "Python object"
    if text is not None:
        raise ValueError(
            f"{where} key {option.name!r}: {shorten(value)} is a string, but {option.name!r} takes a {what}, which a "
            f"string cannot give. Pass optim_args as a dict holding it, e.g. optim_args={{{option.name!r}: ...}}, "
            "or leave the key out to keep the library's default"
        )
    if option.type == "callable" and not callable(value):
        raise ValueError(
            f"{where} key {option.name!r}: {shorten(value)} ({type(value).__name__}) is not callable; "
            f"{option.name!r} takes a function"
        )
    return value


def _coerce(kind: str, value: Any, text: str | None, item_nullable: bool = False) -> Any:
    if kind == "float_or_floats":
        listed = isinstance(value, (list, tuple)) or (text is not None and text[:1] in "([")
        return _coerce("floats" if listed else "float", value, text)
    if item_nullable and kind in ("floats", "ints"):
        item = kind[:-1]
        return tuple(None if _is_none(v) else _coerce(item, v, _as_str(v)) for v in _seq(value))
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


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE)


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
    for key, value in to_mapping(raw, where, accepted=declared).items():
        option = declared.get(key)
        if option is None:
            accepted = ordered_by_closeness(key, declared)
            near = closest(key, declared, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ValueError(
                f"{where} key {shorten(key)} is not accepted by {subject}.{hint} "
                f"Accepted keys (closest first): {', '.join(accepted) if accepted else '(none)'}"
            )
        typed[key] = coerce(option, value, where=where)
    return typed
