"""FSDP2 (fully_shard, DTensor parameters) on 2 CPU processes: every supported name trains as one process does.

One torchrun launch trains every name whose record holds an FSDP2 run (``Distributed.fsdp2_run``; see tests/fsdp2_worker.py)
and a shard-wise Muon as the negative control; the other tests check the decisions without processes.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from torchrun import torchrun

from optim_registry.distributed import check_distributed, detect_backend
from optim_registry.engines.evidence import FSDP2_PATHS, FSDP2_REASONED, runs
from optim_registry.registry import optimizers
from optim_registry.spec import FSDP2_MATH

WORKER = Path(__file__).with_name("fsdp2_worker.py")
#: name -> optim_args of every name run under FSDP2 here: the records' own evidence.
RUN = runs("fsdp2")
#: Names the same launch checks are refused with a ValueError naming FSDP2.
REFUSED = ("adamw_torch_layerwise", "lomo", "po_lamb")
CONTROL = "muon@shardwise"
#: Built through OptimTrainer.create_optimizer on the sharded model instead of create_optimizer.
THROUGH_TRAINER = ["galore_adamw@trainer:rank=4,update_proj_gap=2", "muon@trainer"]
#: Muon's Newton-Schulz forced to each dtype (RUN's ``muon`` takes whatever this CPU is fast at): the owners
#: compute and scatter in that dtype, and the result must still be one process's exactly.
MATMUL_DTYPES = ["muon@fp32:matmul_dtype=float32", "muon@bf16:matmul_dtype=bfloat16"]
#: Names the run covers when their packages are installed (a slim install may lack some).
SPECS = [f"{n}:{a}" if a else n for n, a in RUN.items()] + list(REFUSED)


def _installed(item: str) -> bool:
    from optim_registry import deps

    name = item.partition(":")[0].partition("@")[0]
    if name not in optimizers:
        return False
    return not deps.missing(optimizers.get(name).requires)


def _torchrun(worker: Path, out: Path, items: list[str], nproc: int = 2, scratch: Path | None = None) -> dict:
    """One ``nproc``-process torchrun launch of ``worker`` over ``items``; the JSON results it writes to ``out``."""
    torchrun(worker, [str(out), *items], nproc=nproc, scratch=scratch)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory):
    items = [s for s in SPECS + THROUGH_TRAINER + MATMUL_DTYPES if _installed(s)] + ["galore_adamw@hsdp:rank=4",
                                                                                     CONTROL]
    return _torchrun(WORKER, tmp_path_factory.mktemp("fsdp2") / "results.json", items), items


def test_every_run_name_trains_exactly_as_one_process(fsdp2_run):
    results, items = fsdp2_run
    ran = [i.partition(":")[0] for i in items if i.partition(":")[0] in RUN]
    assert len(ran) >= 10, ran  # a full dev install runs them all
    for name in ran:
        r = results[name]
        assert r["status"] == "ok", (name, r)
        assert r["max_diff"] < 1e-6, (name, r)
        assert r["moved"] == r["params"], (name, r)
        assert r["round_trip"], (name, r["round_trip_error"])  # and the step after loading it was exact


def test_the_trainers_create_optimizer_on_a_sharded_model_trains_exactly(fsdp2_run):
    results, items = fsdp2_run
    for item in THROUGH_TRAINER:
        label = item.partition(":")[0]
        r = results[label]
        assert r["status"] == "ok" and r["max_diff"] < 1e-6 and r["moved"] == r["params"], (label, r)
    assert results["galore_adamw@trainer"]["wrapped"].startswith("FSDP2")


def test_sharded_muon_is_exact_in_either_newton_schulz_dtype(fsdp2_run):
    results, _ = fsdp2_run
    for item in MATMUL_DTYPES:
        label = item.partition(":")[0]
        r = results[label]
        assert r["status"] == "ok" and r["max_diff"] < 1e-6 and r["moved"] == r["params"], (label, r)
        assert r["round_trip"], (label, r["round_trip_error"])


def test_the_comparison_tells_a_shard_wise_muon_apart(fsdp2_run):
    results, _ = fsdp2_run
    assert results[CONTROL]["status"] == "ok"
    # Newton-Schulz on each rank's rows trains silently differently: what the exact check must catch.
    assert results[CONTROL]["max_diff"] > 1e-4, results[CONTROL]


def test_how_each_runs_muon_natively_libraries_on_owner_ranks(fsdp2_run):
    results, _ = fsdp2_run
    assert results["muon"]["wrapped"] == "MuonWithAdamW"  # its own sharded Newton-Schulz, momentum on shards
    assert results["adamw_torch"]["wrapped"] == "AdamW"  # elementwise: shard-local
    for name in ("dion", "galore_adamw", "apollo_adamw", "adafactor", "lion_32bit"):
        if name in results:
            assert results[name]["wrapped"].startswith("FSDP2"), (name, results[name])


def test_unsupported_names_refuse_naming_fsdp2(fsdp2_run):
    results, items = fsdp2_run
    for name in REFUSED:
        if name not in items:
            continue
        r = results[name]
        assert r["status"] == "refused", (name, r)
        assert "FSDP2" in r["error"] and name in r["error"], r


def test_other_dtensor_layouts_refuse_naming_fsdp2(fsdp2_run):
    results, _ = fsdp2_run
    r = results["galore_adamw@hsdp"]
    assert r["status"] == "refused" and "FSDP2's default layout" in r["error"] and "1-D" in r["error"], r


def test_every_record_supporting_fsdp2_was_run_or_is_reasoned():
    """Shard-local and native paths run the optimizer's own code on DTensors: only trusted when run here."""
    unrun: dict[str, list[str]] = {}
    for name in optimizers.names():
        spec = optimizers.get(name)
        d = spec.distributed
        assert d.fsdp2 is True or (isinstance(d.fsdp2, str) and d.fsdp2), name
        if d.fsdp2 is not True or d.fsdp2_run is not None:
            continue
        assert d.fsdp2_math == "owner", f"{name}: FSDP2 path {d.fsdp2_math!r} is claimed but was never run"
        unrun.setdefault(d.fsdp2_math, []).append(name)
    assert set(unrun) <= set(FSDP2_REASONED) and set(FSDP2_PATHS) == set(FSDP2_REASONED) == FSDP2_MATH
    for name in RUN:
        assert optimizers.get(name).distributed.fsdp2 is True, name
    for name in REFUSED:
        assert optimizers.get(name).distributed.fsdp2 is not True, name


def test_show_and_docs_say_run_or_reasoned(capsys):
    from optim_registry.cli import main

    assert main(["show", "muon"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "FSDP2: momentum on each rank's rows" in out and "run here" in out
    assert main(["show", "galore_adamw_8bit"]) == 0
    assert "not run here; reasoned" in " ".join(capsys.readouterr().out.split())
    assert main(["show", "dion", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["distributed"]["fsdp2"] is True and data["fsdp2"]["math"] == "owner"
    assert "run here" in data["fsdp2"]["how"]
    text = (Path(__file__).resolve().parents[1] / "docs" / "distributed.md").read_text()
    assert "| `muon` | beyond | yes | no [" in text and "RUN (native)" in text


# --- the Trainer's decisions (accelerate applies FSDP only on GPUs: checked on the arguments) -----------

def _args(**kw):
    return SimpleNamespace(deepspeed=kw.get("deepspeed"), fsdp=kw.get("fsdp"), fsdp_config=kw.get("fsdp_config"),
                           optim_args=None)


FSDP2 = {"fsdp": "full_shard", "fsdp_config": {"fsdp_version": 2}}


@pytest.mark.parametrize("name", ["muon", "dion", "galore_adamw", "apollo_adamw", "apollo_mini", "adafactor",
                                  "adamw_torch", "lion_32bit"])
def test_fsdp2_is_accepted_and_fsdp1_zero_refuse_pointing_to_fsdp2(name):
    spec = optimizers.get(name)
    assert detect_backend(_args(**FSDP2)).kind == "fsdp2"
    assert check_distributed(spec, _args(**FSDP2)).kind == "fsdp2"
    if name in ("adamw_torch", "lion_32bit"):
        check_distributed(spec, _args(fsdp="full_shard"))  # elementwise: FSDP1's flat shards are fine
        return
    with pytest.raises(ValueError, match=r"does not support FSDP1.*use FSDP2: fsdp_version=2"):
        check_distributed(spec, _args(fsdp="full_shard", fsdp_config={"fsdp_version": 1}))
    if name == "muon":  # handed to DeepSpeed's own Muon under ZeRO (tests/test_zero.py)
        return
    for stage in (1, 2, 3):
        with pytest.raises(ValueError, match=rf"ZeRO stage {stage}.*use FSDP2"):
            check_distributed(spec, _args(deepspeed={"zero_optimization": {"stage": stage}}))


def test_training_arguments_accept_fsdp2_for_muon_and_refuse_fsdp1():
    from optim_registry import TrainingArguments

    with pytest.raises(ValueError, match=r"FSDP1.*use FSDP2"):
        TrainingArguments("x", optim="muon", fsdp=True, fsdp_config={"fsdp_version": 1}, report_to=[], use_cpu=True)
    for config in ({"fsdp_version": 2}, None):  # transformers 5.x trains FSDP2 when no version is named
        args = TrainingArguments("x", optim="muon", fsdp=True, fsdp_config=config, report_to=[], use_cpu=True)
        assert detect_backend(args).kind == "fsdp2"


def test_layerwise_and_lomo_refuse_fsdp2_up_front():
    for name in ("adamw_torch_layerwise", "lomo"):
        with pytest.raises(ValueError, match=rf"optim='{name}' does not support FSDP2"):
            check_distributed(optimizers.get(name), _args(**FSDP2))


def test_owner_assignment_balances_by_global_size():
    import torch

    from optim_registry.engines.fsdp2 import Layout, assign_owners

    shapes = [(64, 16), (16, 16), (16, 16), (32, 16), (32, 16), (16,)]
    layouts = [Layout(torch.Size(s), (0, 0), None, 0) for s in shapes]
    owners = assign_owners(layouts)
    load = [sum(torch.Size(s).numel() for s, o in zip(shapes, owners) if o == r) for r in (0, 1)]
    assert owners[0] == 0 and abs(load[0] - load[1]) <= 16 * 16, (owners, load)
    assert assign_owners(layouts) == owners  # every rank computes the same


# --- layer-wise under DDP: stepped from DDP's communication hook -------------------------------------------

LAYERWISE_WORKER = Path(__file__).with_name("ddp_layerwise_worker.py")
LAYERWISE_BASES = ["adamw_torch", "galore_adamw:rank=4,update_proj_gap=2"]


@pytest.fixture(scope="module")
def layerwise_run(tmp_path_factory):
    bases = [b for b in LAYERWISE_BASES if _installed(b)]
    return _torchrun(LAYERWISE_WORKER, tmp_path_factory.mktemp("ddp_layerwise") / "results.json", bases), bases


def test_layerwise_under_ddp_equals_the_whole_model_run(layerwise_run):
    results, bases = layerwise_run
    assert len(bases) == len(LAYERWISE_BASES)  # a full dev install runs both
    for base in bases:
        for ga in (1, 2):
            r = results[f"{base.partition(':')[0]}_layerwise/ga{ga}"]
            assert r["ranks"] == 0.0, r  # every rank applied the same averaged update
            assert r["vs_whole"] < 1e-5, r
            assert r["moved"] == r["params"], r


def test_layerwise_under_ddp_with_unused_parameters_and_bucket_views(layerwise_run):
    results, bases = layerwise_run
    for base in bases:
        name = base.partition(":")[0]
        unused = results[f"{name}_layerwise/unused"]
        # find_unused_parameters=True: `extra` (used on rank 0 only) is stepped on every rank with the average,
        # `unused` (used nowhere) is not stepped at all, as whole-model DDP leaves it without a gradient.
        assert unused["vs_whole"] == 0.0 and unused["ranks"] == 0.0, unused
        assert unused["moved"] == unused["whole_moved"], unused
        assert "extra.weight" in unused["moved"] and not any(n.startswith("unused.") for n in unused["moved"])
        view = results[f"{name}_layerwise/view"]  # gradient_as_bucket_view=True
        assert view["vs_whole"] == 0.0 and view["ranks"] == 0.0 and len(view["moved"]) == view["params"], view


def test_layerwise_under_ddp_through_the_trainer(layerwise_run):
    results, _ = layerwise_run
    r = results["trainer/adamw_torch_layerwise/ga2"]
    assert r["ranks"] == 0.0 and r["vs_whole"] < 1e-5 and r["moved"] == r["params"], r


def test_layerwise_on_ddp_without_the_hook_refuses_instead_of_drifting(layerwise_run):
    results, _ = layerwise_run
    assert "attach_ddp" in (results["unattached"]["error"] or ""), results["unattached"]
