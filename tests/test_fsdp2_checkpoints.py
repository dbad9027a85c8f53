"""FSDP2 checkpoints through accelerate's own save / load functions: saving changes nothing, resuming loses nothing.

Three torchrun launches (tests/fsdp2_ckpt_worker.py, gloo, CPU, every rank on the same batch) cover every name of
whose record holds an FSDP2 run (``Distributed.fsdp2_run``): 2 ranks save (sharded through ``torch.distributed.checkpoint`` and
full through a rank-0 ``torch.save``) and resume; 3 ranks and 1 rank resume the 2-rank checkpoints. Each result
is the largest difference over every rank's rows against the uninterrupted run on that rank count. The
registry's manifest of those checkpoints is then checked here, in one process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_fsdp2 import _installed, _torchrun

from optim_registry.engines.evidence import runs
from optim_registry.registry import optimizers

WORKER = Path(__file__).with_name("fsdp2_ckpt_worker.py")
NAMES = [f"{n}:{a}" if a else n for n, a in runs("fsdp2").items()]
#: The negative control: one rank's file of a sharded optimizer checkpoint removed.
DROPPED = ["galore_adamw@dropped:rank=4,update_proj_gap=2", "muon@dropped"]
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """``({world: results}, checkpoint root, names run)``: the 2-rank save, then the 3- and 1-rank resumes."""
    root = tmp_path_factory.mktemp("fsdp2_ckpt")
    items = [s for s in NAMES if _installed(s)]
    results = {2: _torchrun(WORKER, root / "save.json", [str(root / "ckpt"), "save", *items, *DROPPED],
                            scratch=root / "ckpt")}
    for world in (3, 1):
        results[world] = _torchrun(WORKER, root / f"load{world}.json", [str(root / "ckpt"), "load", *items],
                                   nproc=world)
    return results, root / "ckpt", [i.partition(":")[0] for i in items]


def _errors(r: dict) -> dict:
    return {k: v for k, v in r.items() if k.endswith("error")}


def test_every_run_name_was_covered(launches):
    _, _, names = launches
    assert len(names) >= 10, names  # a full dev install runs them all
    for name in ("muon", "dion", "galore_adamw", "apollo_adamw", "adafactor", "adamw_torch", "lion_32bit",
                 "schedule_free_adamw"):
        assert name in names or not _installed(name), name


def test_taking_a_checkpoint_changes_nothing(launches):
    results, _, names = launches
    for name in names:
        r = results[2][name]
        assert not _errors(r), (name, r)
        assert r["state_entries_min_over_ranks"] == r["params"], (name, r)  # so DCP never "initialises" it
        assert r["saved_moved"] == 0.0, (name, r)  # no hidden step moved a weight while saving
        assert r["perturb"] < TOLERANCE, (name, r)  # nor changed the state the run continues with
        assert r["moved"] == r["params"], (name, r)


def test_sharded_and_full_checkpoints_resume_exactly_on_the_same_rank_count(launches):
    results, _, names = launches
    for name in names:
        r = results[2][name]
        assert r["sharded"] < TOLERANCE and r["full"] < TOLERANCE, (name, r)


@pytest.mark.parametrize("world", [3, 1])
def test_checkpoints_of_2_ranks_resume_exactly_on_another_rank_count(launches, world):
    results, _, names = launches
    for name in names:
        r = results[world][name]
        assert r["world"] == world and not _errors(r), (name, r)
        assert r["sharded"] < TOLERANCE and r["full"] < TOLERANCE, (name, r)


def test_what_each_name_runs_as(launches):
    results, _, names = launches
    for name in names:
        spec = optimizers.get(name)
        cls = results[2][name]["class"]
        if spec.distributed.fsdp2_math == "owner":
            assert cls.startswith("FSDP2"), (name, cls)  # OwnerStepped: the checkpoint surface is the wrapper's
        elif spec.protocol == "train_eval":
            assert cls.startswith("FSDP2") and cls.endswith("ScheduleFree"), (name, cls)


def test_a_checkpoint_missing_one_ranks_state_is_refused_on_every_rank(launches):
    results, _, _ = launches
    for item in DROPPED:
        label = item.partition(":")[0]
        r = results[2][label]
        assert r["removed"] == "__1_0.distcp", r
        # The registry's resume check, with the manifest and without it (the folder against its .metadata) ...
        for how in ("manifest", "metadata"):
            assert r[f"{how}_refused_on_every_rank"], r
            assert r[f"{how}_error"].startswith("ValueError") and "optimizer_0/__1_0.distcp is missing" in r[
                f"{how}_error"], r
        # ... and, unchecked, DCP's own load: an error on every rank too, never a resumed run.
        assert r["unchecked_refused_on_every_rank"] and "CheckpointException" in r["unchecked_error"], r


# --- the manifest of those checkpoints (one process) ------------------------------------------------------


def _copy(launches, name: str, kind: str, tmp_path: Path) -> Path:
    _, root, names = launches
    if name not in names:
        pytest.skip(f"{name} not installed")
    return Path(shutil.copytree(root / name / kind, tmp_path / kind))


def test_the_manifest_lists_every_ranks_file_of_a_sharded_checkpoint(launches, tmp_path):
    from optim_registry.checkpoints import read_manifest, torn_reason, verify_checksums

    ckpt = _copy(launches, "galore_adamw", "sharded", tmp_path)
    manifest = read_manifest(str(ckpt))
    assert manifest["world_size"] == 2
    assert manifest["optimizer_state"] == {"path": "optimizer_0", "format": "torch.distributed.checkpoint",
                                           "ranks": 2, "resumes_on": "any"}
    files = manifest["files"]
    for rank in (0, 1):
        assert "sha256" in files[f"optimizer_0/__{rank}_0.distcp"], files  # optimizer state: checksummed
        assert "size" in files[f"pytorch_model_fsdp_0/__{rank}_0.distcp"], files
    assert "sha256" in files["optimizer_0/.metadata"] and "scheduler.pt" in files
    assert torn_reason(str(ckpt)) is None
    verify_checksums(str(ckpt), manifest)
    # One flipped byte in rank 1's optimizer file: same size, refused by its checksum.
    part = ckpt / "optimizer_0" / "__1_0.distcp"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"optimizer_0/__1_0.distcp is corrupted"):
        verify_checksums(str(ckpt), manifest)
    # Cut short: torn, before anything is read.
    part.write_bytes(bytes(data[:100]))
    assert torn_reason(str(ckpt)) == f"optimizer_0/__1_0.distcp has 100 bytes, the manifest says {len(data)}"


def test_the_manifest_of_a_full_checkpoint(launches, tmp_path):
    from optim_registry.checkpoints import read_manifest, torn_reason

    ckpt = _copy(launches, "muon", "full", tmp_path)
    manifest = read_manifest(str(ckpt))
    assert manifest["optimizer_state"]["path"] == "optimizer.bin"
    assert manifest["optimizer_state"]["resumes_on"] == "any"
    assert "sha256" in manifest["files"]["optimizer.bin"]
    (ckpt / "optimizer.bin").unlink()
    assert torn_reason(str(ckpt)) == "optimizer.bin is missing"


def test_without_a_manifest_a_dcp_folder_is_checked_against_its_metadata(launches, tmp_path):
    from optim_registry.checkpoints import MANIFEST_NAME, torn_reason

    ckpt = _copy(launches, "galore_adamw", "sharded", tmp_path)
    (ckpt / MANIFEST_NAME).unlink()
    assert torn_reason(str(ckpt)) is None
    part = ckpt / "optimizer_0" / "__0_0.distcp"
    part.write_bytes(part.read_bytes()[:50])
    assert "optimizer_0/__0_0.distcp is cut short" in torn_reason(str(ckpt))
    (ckpt / "optimizer_0" / ".metadata").unlink()
    assert torn_reason(str(ckpt)) == "optimizer_0/.metadata is missing (torch.distributed.checkpoint writes it last)"


def test_resuming_an_fsdp2_checkpoint_with_other_arguments_is_refused_before_loading(launches, tmp_path):
    from optim_registry import create_optimizer
    from optim_registry.checkpoints import (
        asked_optimizer,
        check_asked,
        check_layout,
        group_settings,
        named_layout,
        read_manifest,
    )
    from optim_registry.testing import tiny_model, training_args

    ckpt = _copy(launches, "galore_adamw", "sharded", tmp_path)
    record = read_manifest(str(ckpt))["optimizer"]
    model = tiny_model(vocab_size=33)  # the worker's model; its parameter names are the FSDP2 model's
    same = training_args("galore_adamw", str(tmp_path), "rank=4,update_proj_gap=2")
    check_asked(record, asked_optimizer(same, model), str(ckpt))
    optimizer = create_optimizer(same, model)
    check_layout(record, named_layout(optimizer, model), group_settings(optimizer), str(ckpt))
    for other, args in (("apollo_adamw", None), ("galore_adamw", "rank=8,update_proj_gap=2")):
        with pytest.raises(ValueError, match=r"written by optim='galore_adamw'"):
            check_asked(record, asked_optimizer(training_args(other, str(tmp_path), args), model), str(ckpt))


def test_a_per_rank_checkpoint_refuses_another_rank_count_naming_fsdp2_and_both(tmp_path):
    """accelerate's ``use_dcp=False`` writes each rank's own part: it resumes on that rank count only."""
    from optim_registry.checkpoints import check_rank_count, optimizer_state_layout

    for rank in (0, 1):
        (tmp_path / f"optimizer_0_rank{rank}.bin").write_bytes(b"x")
    layout = optimizer_state_layout(str(tmp_path), 2)
    assert layout["resumes_on"] == 2
    manifest = {"world_size": 2, "optimizer_state": layout, "optimizer": {"name": "galore_adamw"}}
    check_rank_count(manifest, 2, str(tmp_path))
    with pytest.raises(ValueError, match=r"optim='galore_adamw'.*FSDP2.*2 ranks.*3"):
        check_rank_count(manifest, 3, str(tmp_path))
    json.dumps(layout)  # the manifest is JSON


def test_the_gpu_trainer_script_refuses_without_cuda():
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run benchmarks/fsdp2_trainer_checkpoint.py itself")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fsdp2_trainer_checkpoint.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "needs CUDA GPUs" in proc.stderr, (proc.returncode, proc.stderr[-2000:])


def test_show_and_the_docs_table_mark_fsdp2_checkpoint_support(capsys):
    from dataclasses import replace

    from optim_registry import docgen
    from optim_registry.cli import main

    assert main(["show", "dion", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["fsdp2"]["checkpoint"]
    assert shown.startswith("any number of ranks; run here"), shown
    assert main(["show", "galore_adamw_8bit"]) == 0
    assert "FSDP2 checkpoints: any number of ranks; not run here; reasoned" in " ".join(capsys.readouterr().out.split())
    text = (Path(__file__).resolve().parents[1] / "docs" / "distributed.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `muon` |"))
    assert row.endswith("| RUN |"), row
    spec = optimizers.get("galore_adamw")
    refusing = spec.variant(distributed=replace(spec.distributed, fsdp2_checkpoint="its state is per rank"))
    assert docgen.fsdp2_checkpoint_evidence(refusing).startswith("no (its state is per rank)")
    table = docgen.render_distributed([refusing], {refusing.name})
    assert "| `galore_adamw` |" in table and "its state is per rank" in table
