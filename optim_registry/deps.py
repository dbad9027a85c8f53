"""Requirement -> availability (find_spec + version, cached) and the one missing-package error."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from functools import cache
from typing import Any

from .spec import Requirement


class MissingDependencyError(ImportError, ValueError):
    """An optimizer's package is not installed (or too old); the message carries the pip line.

    Also a ``ValueError``: transformers raises ``ValueError`` for some missing packages (torchdistx, apex), and
    code written against the stock Trainer that catches it keeps working.
    """


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


def _installed_version(module: str, pip: str) -> str | None:
    top = module.split(".")[0]
    loaded = sys.modules.get(top, _ABSENT)
    if loaded is None or (loaded is not _ABSENT and getattr(loaded, "__spec__", None) is None):
        # Blocked, or a stand-in put there by a test or a mock: true only while it is there, so never cached.
        return None if loaded is None else _metadata_version(module, pip)
    return _cached_version(module, pip)


@cache
def _cached_version(module: str, pip: str) -> str | None:
    if not importable(module):
        return None
    return _metadata_version(module, pip)


def _metadata_version(module: str, pip: str) -> str:
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
    problem = missing_text(name, requires)
    if problem is not None:
        raise MissingDependencyError(problem)


class MissingDependencyWarning(UserWarning):
    """Arguments name an optimizer whose package is not installed here; building it will fail."""


def warn_missing(name: str, requires: tuple[Requirement, ...]) -> None:
    """A ``MissingDependencyWarning`` with ``check``'s message: arguments may be written on a machine that
    lacks the package (a login node, a config generator) and trained on one that has it, as the stock class
    allows; the build refuses."""
    problem = missing_text(name, requires)
    if problem is not None:
        import warnings

        warnings.warn(f"{problem}. Building the optimizer will fail here.", MissingDependencyWarning, stacklevel=4)


def missing_text(name: str, requires: tuple[Requirement, ...]) -> str | None:
    """``check``'s message when a requirement is missing, else ``None``."""
    absent = missing(requires)
    if not absent:
        return None
    lines = " && ".join(r.pip_line for r in absent)
    extras = sorted({r.extra for r in absent if r.extra})
    hint = f" (or: pip install 'optim-registry[{','.join(extras)}]')" if extras else ""
    what = ", ".join(
        f"{r.pip}>={r.min_version}" if r.min_version and _installed_version(r.module, r.pip) else r.pip
        for r in absent
    )
    return f"optim={name!r} needs {what}, which is not installed: {lines}{hint}"


def import_target(name: str, path: str, requires: tuple[Requirement, ...]) -> Any:
    """``import_object(path)`` for optimizer ``name``; a failed import is one `MissingDependencyError`."""
    try:
        return import_object(path)
    except ImportError as exc:
        if isinstance(exc, MissingDependencyError):
            raise
        lines = " && ".join(r.pip_line for r in requires) or "install the package that provides it"
        raise MissingDependencyError(
            f"optim={name!r} cannot import {path.partition(':')[0]!r} ({exc}); reinstall what it needs: {lines}"
        ) from exc


def import_object(path: str) -> Any:
    """Import ``"package.module:attr.sub"``."""
    module_name, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj
