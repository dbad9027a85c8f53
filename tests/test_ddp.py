"""Two real processes with DDP (gloo, CPU): every rank ends with identical parameters that moved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchrun import torchrun

WORKER = Path(__file__).with_name("ddp_worker.py")

# One torchrun launch for all names keeps the process start-up cost paid once.
NAMES = ["adamw_torch", "sgd:momentum=0.9"]
# Families whose records may be absent in a slim install; each is checked when registered.
FAMILY_NAMES = [
    "adamw_torch_layerwise",
    "adamw_8bit",
    "galore_adamw:rank=4,update_proj_gap=2",
    "muon",
    "schedule_free_adamw",
]


def _available(names: list[str]) -> list[str]:
    from optim_registry.registry import optimizers

    return [n for n in names if n.partition(":")[0] in optimizers]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    names = _available(NAMES + FAMILY_NAMES)
    torchrun(WORKER, [str(out), *names], scratch=out)
    return out, names


def test_ranks_agree_exactly_and_parameters_moved(ddp_run):
    out, names = ddp_run
    checked = 0
    for item in names:
        name = item.partition(":")[0]
        folder = out / name
        assert not (folder / "refused0.json").exists(), (folder / "refused0.json").read_text()
        r0 = torch.load(folder / "rank0.pt", weights_only=True)
        r1 = torch.load(folder / "rank1.pt", weights_only=True)
        assert r0["world"] == 2
        for n in r0["final"]:
            assert torch.equal(r0["final"][n], r1["final"][n]), f"{name}: ranks disagree on {n}"
            assert not torch.equal(r0["final"][n], r0["start"][n]), f"{name}: {n} did not move"
        checked += 1
    # every family this test names is registered in a full install: all of them ran
    assert checked == len(NAMES) + len(FAMILY_NAMES), names


def test_layerwise_trains_under_ddp(ddp_run):
    """Stepped from DDP's communication hook on averaged gradients (tests/test_fsdp2.py compares it exactly)."""
    out, names = ddp_run
    folder = out / "adamw_torch_layerwise"
    assert not (folder / "refused0.json").exists()
    assert (folder / "rank0.pt").exists() and (folder / "rank1.pt").exists()
