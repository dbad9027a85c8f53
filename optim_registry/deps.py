"""Requirement -> availability (find_spec + version, cached) and the one missing-package error."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from functools import cache
from typing import Any

from .spec import Requirement


class MissingDependencyError(ImportError):
    """An optimizer's package is not installed (or too old); the message carries the pip line."""


@cache
def _installed_version(module: str, pip: str) -> str | None:
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return None
    for dist in (pip, pip.replace("-", "_"), module.split(".")[0]):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "0"  # importable but without metadata (e.g. a local checkout)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def is_available(req: Requirement) -> bool:
    """Whether ``req`` is installed at a good enough version, without importing it."""
    version = _installed_version(req.module, req.pip)
    if version is None:
        return False
    return not req.min_version or _version_tuple(version) >= _version_tuple(req.min_version)


def missing(requires: tuple[Requirement, ...]) -> list[Requirement]:
    return [r for r in requires if not is_available(r)]


def check(name: str, requires: tuple[Requirement, ...]) -> None:
    """Raise ``MissingDependencyError`` naming the optimizer and the exact pip line."""
    absent = missing(requires)
    if not absent:
        return
    lines = " && ".join(r.pip_line for r in absent)
    extras = sorted({r.extra for r in absent if r.extra})
    hint = f" (or: pip install 'optim-registry[{','.join(extras)}]')" if extras else ""
    what = ", ".join(
        f"{r.pip}>={r.min_version}" if r.min_version and _installed_version(r.module, r.pip) else r.pip
        for r in absent
    )
    raise MissingDependencyError(f"optim={name!r} needs {what}, which is not installed: {lines}{hint}")


def import_object(path: str) -> Any:
    """Import ``"package.module:attr.sub"``."""
    module_name, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj
