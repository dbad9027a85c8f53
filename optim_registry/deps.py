"""Requirement -> availability (find_spec + version, cached) and the one missing-package error."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from functools import cache
from typing import Any

from .spec import Requirement


class MissingDependencyError(ImportError):
    """An optimizer's package is not installed (or too old); the message carries the pip line."""


def importable(module: str) -> bool:
    """Whether ``module`` (its top-level package) can be imported, without importing it.

    ``find_spec`` raises ``ValueError`` for a module already in ``sys.modules`` whose ``__spec__`` is
    ``None`` or missing (stubs made by test suites or by ``types.ModuleType``, some C extensions,
    modules run as ``__main__``); such a module is importable, since ``import`` returns it.
    """
    top = module.split(".")[0]
    loaded = sys.modules.get(top, _ABSENT)
    if loaded is None:  # ``sys.modules[name] = None`` is Python's way to block an import
        return False
    if loaded is not _ABSENT and getattr(loaded, "__spec__", None) is None:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


_ABSENT = object()


@cache
def _installed_version(module: str, pip: str) -> str | None:
    if not importable(module):
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
