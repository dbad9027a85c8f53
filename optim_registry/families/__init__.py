"""Every built-in optimizer family, one folder each: where an ``optim=`` name comes from.

``families/<family>/records.py`` holds the family's records (data only, sorted by name; importing it imports no
torch and no optimizer package: listing reads it), its page's ``TITLE`` and ``ABOUT``, its cross-field checks and
the evidence behind its distributed claims (``Distributed.fsdp2_run`` / ``zero_run``, beside the claims). The code
the records name by dotted path (builders, post-construction hooks, subclasses, the family's own implementation)
lives in the same folder and is imported only when a name is resolved. ``FAMILIES`` is the one list of families;
the registry and docgen read it.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..spec import OptimizerSpec

#: The built-in families, in the order their records are loaded (each a folder beside this file).
FAMILIES = (
    "torch",
    "bitsandbytes",
    "low_rank",
    "lomo",
    "schedulefree",
    "misc",
    "torchao",
    "optimi",
    "beyond",
    "flashoptim",
    "pytorch_optimizer",
)


@dataclass(frozen=True)
class Family:
    """One family: its name (the records' ``family``), the title and first paragraph of its page, its records."""

    name: str
    title: str
    about: str
    records: tuple[OptimizerSpec, ...]


@cache
def family(name: str) -> Family:
    """The built-in family ``name`` (``ValueError`` naming the families when there is none)."""
    if name not in FAMILIES:
        raise ValueError(f"no built-in optimizer family {name!r}; the families are {', '.join(FAMILIES)}")
    module: Any = importlib.import_module(f"{__name__}.{name}.records")
    records = tuple(getattr(module, "RECORDS", ()))
    generated = getattr(module, "generated_records", None)  # pytorch_optimizer: from its shipped catalogue
    if generated is not None:
        records += tuple(generated())
    return Family(name=name, title=module.TITLE, about=module.ABOUT, records=records)


def family_records() -> list[OptimizerSpec]:
    """Every hand-written (or, for pytorch_optimizer, generated) record of every family."""
    return [record for name in FAMILIES for record in family(name).records]


def all_records() -> list[OptimizerSpec]:
    """What the registry loads: every family's records plus a ``_layerwise`` twin of every one that supports it,
    with FSDP2 refused where the owner-rank path cannot reach the optimizer's math (``distributed.fsdp2_verdict``)."""
    from ..distributed import fsdp2_verdict
    from ..engines.layerwise.twins import twins

    records = family_records()
    twice = sorted(name for name, count in Counter(r.name for r in records).items() if count > 1)
    if twice:
        raise RuntimeError(f"built-in optimizer names declared twice: {twice}")
    return [fsdp2_verdict(r) for r in records + twins(records)]
