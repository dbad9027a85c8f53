"""Exact resume for every registered name that trains on CPU here, through OptimTrainer and a real
checkpoint directory (issue: a resumed run ends exactly where an uninterrupted one ends).

The list is generated from the registry, so a new family is covered the day it is added. Names that
cannot run here are listed with the reason in ``not_runnable`` and reported by the summary test.
"""

from __future__ import annotations

import os

import pytest

from optim_registry.listing import list_optimizers
from optim_registry.registry import optimizers
from optim_registry.runnable import can_run
from optim_registry.testing import check_optimizer

#: optim_args that make a name meaningful on the tiny model (hidden size 16, 4 steps, save at 2).
TINY_ARGS = {
    "galore": "rank=4,update_proj_gap=2",
    "apollo": "rank=4,update_proj_gap=2",
    "q_galore": "rank=4,update_proj_gap=2,proj_group_size=4",
    "schedule_free_radam": "silent_sgd_phase=false",
    "flash_": "quantize=false",
}

#: Families with their own, deeper resume tests; the sweep still runs one representative of each.
SAMPLED_FAMILIES = {"pytorch_optimizer": 12}

#: OPTIM_REGISTRY_FULL_SWEEP=1 checks every runnable name (about 10 minutes here), no sampling.
FULL = os.environ.get("OPTIM_REGISTRY_FULL_SWEEP", "") in ("1", "true", "yes")

#: Names the tiny fp32 model cannot exercise, and where they are checked instead.
ELSEWHERE = {
    "q_galore_adamw8bit": "needs bf16 weights: resumed exactly on a bf16 model in tests/test_family_low_rank.py",
}

#: Layer-wise twins share one engine (tests/test_layerwise_engine.py, tests/test_layerwise_trainer.py);
#: the sweep resumes the first twin of each family and every twin of these bases.
LAYERWISE_BASES = {"adamw_torch", "galore_adamw", "apollo_adamw", "adafactor", "schedule_free_adamw", "lion_8bit"}


def tiny_args(name: str) -> str | None:
    base = optimizers.get(name).base or name  # a layer-wise twin takes its base record's arguments
    for prefix, args in TINY_ARGS.items():
        if base.startswith(prefix) or base == prefix:
            return args
    return None


def not_runnable(info) -> str | None:
    base = info.base or info.name
    if base in ELSEWHERE:
        return ELSEWHERE[base]
    ok, reason = can_run(info)
    if not ok:
        return reason
    if info.source != "builtin":
        return "plugin (covered by tests/test_plugins.py)"
    return None


def _selected() -> tuple[list[str], dict[str, str]]:
    runnable, skipped = [], {}
    per_family: dict[str, int] = {}
    twin_families: set[str] = set()
    for info in list_optimizers():
        reason = not_runnable(info)
        if reason is None:
            try:
                optimizers.get(info.name)
            except Exception as exc:  # noqa: BLE001 - reported, not hidden
                reason = f"cannot resolve: {exc}"
        if reason is not None:
            skipped[info.name] = reason
            continue
        if not FULL and info.layerwise and info.base not in LAYERWISE_BASES:
            if info.family in twin_families:
                skipped[info.name] = f"{info.family}: layer-wise twins sampled (one per family)"
                continue
            twin_families.add(info.family)
        limit = None if FULL else SAMPLED_FAMILIES.get(info.family)
        if limit is not None:
            per_family[info.family] = per_family.get(info.family, 0) + 1
            if per_family[info.family] > limit:
                skipped[info.name] = f"{info.family}: sampled ({limit} names here; all in its own tests)"
                continue
        runnable.append(info.name)
    return runnable, skipped


RUNNABLE, SKIPPED = _selected()


@pytest.mark.parametrize("name", RUNNABLE)
def test_exact_resume(name, tmp_path):
    report = check_optimizer(name, tiny_args(name), workdir=str(tmp_path))
    assert report.checks.get("exact_resume"), report.failures
    assert report.ok, report.failures


def test_summary_names_every_exclusion(capsys):
    with capsys.disabled():
        print(f"\nresume sweep: {len(RUNNABLE)} names checked, {len(SKIPPED)} excluded")
        for name, reason in sorted(SKIPPED.items()):
            if "sampled" not in reason:
                print(f"  excluded {name}: {reason}")
    assert RUNNABLE
