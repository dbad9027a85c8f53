"""Fault tests for checkpoints and resume (issue 15, section 4): torn checkpoints, another optimizer or
layout on resume, changed rates, corrupted state files, checkpoints written before the manifest.

Every test trains the tiny Llama through OptimTrainer and resumes from real checkpoint directories.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
import torch

from optim_registry import OptimTrainer
from optim_registry.checkpoints import MANIFEST_NAME, RESTART_ENV, ResumeWarning, sha256_of
from optim_registry.testing import TokenDataset, max_param_diff, run, tiny_model, training_args

GALORE = dict(optim_args="rank=4,update_proj_gap=2", optim_target_modules=["self_attn", "mlp"])


def _save_run(root, name="adamw_torch", **kw):
    """4 steps of ``name``, saved at steps 2 and 4: the uninterrupted run and its checkpoints."""
    optim_args = kw.pop("optim_args", None)
    return run(name, str(root), optim_args, max_steps=4, save_strategy="steps", save_steps=2, **kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("adamw") / "run"
    trainer = _save_run(root)
    return root, trainer.model


@pytest.fixture(scope="module")
def saved_galore(tmp_path_factory):
    root = tmp_path_factory.mktemp("galore") / "run"
    _save_run(root, "galore_adamw", **GALORE)
    return root


def _copy(root, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(root, dst)
    return dst


def _trainer(name, output_dir, optim_args=None, model=None, **kw):
    kw.setdefault("max_steps", 4)
    args = training_args(name, str(output_dir), optim_args, **kw)
    return OptimTrainer(model=model if model is not None else tiny_model(), args=args, train_dataset=TokenDataset())


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _unchanged(model, before):
    return all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def _resume_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, ResumeWarning)]


# ------------------------------------------------------------------------------------------ the manifest


def test_manifest_is_written_with_sizes_checksums_and_the_optimizer_record(saved):
    root, _ = saved
    ckpt = root / "checkpoint-4"
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text())
    on_disk = {p.name for p in ckpt.iterdir()} - {MANIFEST_NAME}
    assert set(manifest["files"]) == on_disk  # nothing else, no scratch directory left behind
    assert manifest["files"]["optimizer.pt"]["sha256"] == sha256_of(str(ckpt / "optimizer.pt"))
    assert manifest["files"]["scheduler.pt"]["sha256"] == sha256_of(str(ckpt / "scheduler.pt"))
    record = manifest["optimizer"]
    assert record["name"] == "adamw_torch" and record["class"] == "torch.optim.adamw.AdamW"
    n_params = sum(1 for _ in tiny_model().parameters())
    assert sum(g["count"] for g in record["groups"]) == n_params
    # the settings as built (the schedule moves lr later): what a resume compares against
    assert [g["settings"]["lr"] for g in record["groups"]] == [1e-2, 1e-2]
    assert manifest["schedule"]["type"] == "constant" and manifest["schedule"]["num_training_steps"] == 4


# ------------------------------------------------------------------------------------------ torn checkpoints


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


TEARS = {
    "optimizer_missing": lambda c: (c / "optimizer.pt").unlink(),
    "weights_cut": lambda c: _truncate(c / "model.safetensors"),
    "state_json_cut": lambda c: _truncate(c / "trainer_state.json"),
    # killed before the manifest was written: judged by reading every file to its end
    "no_manifest_optimizer_cut": lambda c: ((c / MANIFEST_NAME).unlink(), _truncate(c / "optimizer.pt")),
    "no_manifest_no_state_json": lambda c: ((c / MANIFEST_NAME).unlink(), (c / "trainer_state.json").unlink()),
    "no_manifest_scheduler_missing": lambda c: ((c / MANIFEST_NAME).unlink(), (c / "scheduler.pt").unlink()),
}


@pytest.mark.parametrize("tear", list(TEARS))
def test_torn_newest_checkpoint_is_skipped_with_a_warning(saved, tmp_path, tear):
    root, straight = saved
    run_dir = _copy(root, tmp_path)
    TEARS[tear](run_dir / "checkpoint-4")
    trainer = _trainer("adamw_torch", run_dir)
    with pytest.warns(ResumeWarning, match="checkpoint-4") as record:
        trainer.train(resume_from_checkpoint=True)
    message = next(m for m in _resume_warnings(record) if "torn" in m)
    assert "checkpoint-2" in message
    # resumed from step 2 and ended exactly where the uninterrupted run ended
    assert trainer.state.global_step == 4
    assert max_param_diff(trainer.model, straight) < 1e-6


def test_a_named_torn_checkpoint_is_refused_naming_the_complete_one(saved, tmp_path):
    root, _ = saved
    run_dir = _copy(root, tmp_path)
    _truncate(run_dir / "checkpoint-4" / "optimizer.pt")
    model = tiny_model()
    before = _weights(model)
    with pytest.raises(ValueError, match=r"torn checkpoint.*optimizer\.pt.*checkpoint-2"):
        _trainer("adamw_torch", run_dir, model=model).train(resume_from_checkpoint=str(run_dir / "checkpoint-4"))
    assert _unchanged(model, before)


def test_no_complete_checkpoint_is_one_error_listing_the_torn_ones(saved, tmp_path):
    root, _ = saved
    run_dir = _copy(root, tmp_path)
    for step in (2, 4):
        (run_dir / f"checkpoint-{step}" / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match=r"No complete checkpoint.*checkpoint-4.*checkpoint-2"):
        _trainer("adamw_torch", run_dir).train(resume_from_checkpoint=True)


def test_a_save_killed_while_writing_the_optimizer_leaves_no_optimizer_file(saved, tmp_path, monkeypatch):
    """The state is written to a scratch file and renamed: a kill mid-write leaves nothing that looks whole."""
    root, straight = saved
    run_dir = _copy(root, tmp_path)
    shutil.rmtree(run_dir / "checkpoint-4")
    real_save = torch.save

    def killed_save(obj, f, *a, **kw):
        if str(f).endswith("optimizer.pt"):
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half of it")
            raise KeyboardInterrupt  # the run dies here
        return real_save(obj, f, *a, **kw)

    trainer = _trainer("adamw_torch", run_dir, save_strategy="steps", save_steps=2)
    monkeypatch.setattr(torch, "save", killed_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(resume_from_checkpoint=str(run_dir / "checkpoint-2"))
    monkeypatch.setattr(torch, "save", real_save)
    torn = run_dir / "checkpoint-4"
    assert torn.is_dir() and not (torn / "optimizer.pt").exists()
    assert not [p for p in torn.iterdir() if p.name.startswith(".")]  # the scratch space is gone too
    resumed = _trainer("adamw_torch", run_dir)
    with pytest.warns(ResumeWarning, match="checkpoint-4"):
        resumed.train(resume_from_checkpoint=True)
    assert max_param_diff(resumed.model, straight) < 1e-6


# ------------------------------------------------------------------------------------------ another optimizer


@pytest.mark.parametrize("other", ["sgd", "lion_32bit", "schedule_free_adamw", "adafactor"])
def test_another_optimizer_on_resume_is_one_clear_error(saved, tmp_path, other):
    """Before: KeyError 'momentum' (sgd), 'state1' (lion_32bit), 'train_mode' (schedule-free) in step 1."""
    root, _ = saved
    model = tiny_model()
    before = _weights(model)
    trainer = _trainer(other, tmp_path / "out", model=model)
    with pytest.raises(ValueError, match=rf"optim='adamw_torch'.*ask for optim='{other}'"):
        trainer.train(resume_from_checkpoint=str(root / "checkpoint-4"))
    assert _unchanged(model, before) and trainer.optimizer is None  # refused before anything was loaded


def test_galore_checkpoint_resumed_with_apollo_or_other_options_or_targets(saved_galore, tmp_path):
    """Before: KeyError 'scale_type' (galore -> apollo)."""
    ckpt = str(saved_galore / "checkpoint-4")
    cases = {
        "apollo_adamw": (dict(GALORE), r"optim='galore_adamw'.*ask for optim='apollo_adamw'"),
        "galore_adamw": (dict(GALORE, optim_args="rank=2,update_proj_gap=2"), r'optim_args \{"rank": 4.*"rank": 2'),
    }
    for name, (kw, pattern) in cases.items():
        with pytest.raises(ValueError, match=pattern):
            _trainer(name, tmp_path / name, **kw).train(resume_from_checkpoint=ckpt)
    model = tiny_model()
    before = _weights(model)
    narrower = dict(GALORE, optim_target_modules=["self_attn"])
    with pytest.raises(ValueError, match=r"optim_target_modules picking 14 weights, the arguments pick 8"):
        _trainer("galore_adamw", tmp_path / "targets", model=model, **narrower).train(resume_from_checkpoint=ckpt)
    assert _unchanged(model, before)
    # the same arguments resume (galore's projectors included)
    same = _trainer("galore_adamw", tmp_path / "same", max_steps=6, **GALORE)
    same.train(resume_from_checkpoint=ckpt)
    assert same.state.global_step == 6


def test_another_group_layout_is_one_clear_error(saved, tmp_path):
    """Before: torch's "loaded state dict contains a parameter group that doesn't match the size"."""
    root, _ = saved
    model = tiny_model()
    model.model.embed_tokens.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"2 param group\(s\) of \[16, 5\] parameters, the arguments build 2 of \[15, 5\]"):
        _trainer("adamw_torch", tmp_path / "out", model=model).train(resume_from_checkpoint=str(root / "checkpoint-4"))


def test_other_optim_groups_rules_on_resume_are_one_clear_error(saved, tmp_path):
    """The rules are recorded; rules that give another group layout are refused before the state loads."""
    root, _ = saved
    rules = [{"params": "@embeddings", "lr": 1e-3}]
    _save_run(tmp_path / "ruled", optim_groups=rules)
    manifest = json.loads((tmp_path / "ruled" / "checkpoint-2" / MANIFEST_NAME).read_text())
    assert manifest["optimizer"]["optim_groups"] == rules
    assert len(manifest["optimizer"]["groups"]) == 3  # decay, no decay, and the embeddings on their own
    with pytest.raises(ValueError, match=r"group layout differs"):
        _trainer("adamw_torch", tmp_path / "out").train(resume_from_checkpoint=str(tmp_path / "ruled" / "checkpoint-2"))
    with pytest.raises(ValueError, match=r"group layout differs"):
        _trainer("adamw_torch", tmp_path / "out2", optim_groups=rules).train(
            resume_from_checkpoint=str(root / "checkpoint-2")
        )


# ------------------------------------------------------------------------------------------ rates and schedule


def _logged_rates(trainer, after_step):
    return [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h and h["step"] > after_step]


def test_a_changed_rate_warns_and_the_checkpoint_rate_continues(saved, tmp_path):
    """Before: lr=0.5 asked, the checkpoint's 0.01 used, nothing said."""
    root, straight = saved
    trainer = _trainer("adamw_torch", tmp_path / "out", learning_rate=0.5)
    with pytest.warns(ResumeWarning, match=r"lr 0\.01 -> 0\.5.*starting rate 0\.01.*restart_schedule"):
        trainer.train(resume_from_checkpoint=str(root / "checkpoint-2"))
    assert _logged_rates(trainer, 2) == [0.01, 0.01]
    assert max_param_diff(trainer.model, straight) < 1e-6


@pytest.mark.parametrize("how", ["attribute", "env"])
def test_restart_schedule_applies_the_new_rate_and_a_fresh_schedule(saved, tmp_path, monkeypatch, how):
    root, _ = saved
    trainer = _trainer("adamw_torch", tmp_path / "out", learning_rate=0.5, max_steps=6,
                       lr_scheduler_type="linear")
    if how == "attribute":
        trainer.restart_schedule = True
    else:
        monkeypatch.setenv(RESTART_ENV, "1")
    with pytest.warns(ResumeWarning, match="restart_schedule: this run's values take over"):
        trainer.train(resume_from_checkpoint=str(root / "checkpoint-4"))
    # the linear schedule starts again at step 4 over the 2 steps that remain
    assert _logged_rates(trainer, 4) == [0.5, 0.25]
    # the optimizer's moments were kept: AdamW's step counter continues from the checkpoint's 4
    assert all(s["step"].item() == 6 for s in trainer.optimizer.state.values())


def test_same_arguments_resume_without_a_warning(saved, tmp_path):
    root, straight = saved
    trainer = _trainer("adamw_torch", tmp_path / "out")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=str(root / "checkpoint-2"))
    assert _resume_warnings(record) == []
    assert max_param_diff(trainer.model, straight) < 1e-6


# ------------------------------------------------------------------------------------------ corruption, old checkpoints


def test_a_corrupted_optimizer_file_is_refused_naming_it(saved, tmp_path):
    """Before: flipped bytes in optimizer.pt loaded, and the parameters turned into NaN."""
    root, _ = saved
    run_dir = _copy(root, tmp_path)
    path = run_dir / "checkpoint-4" / "optimizer.pt"
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    model = tiny_model()
    before = _weights(model)
    with pytest.raises(ValueError, match=r"optimizer\.pt is corrupted: its sha256 is"):
        _trainer("adamw_torch", run_dir, model=model).train(resume_from_checkpoint=True)
    assert _unchanged(model, before)


def test_a_checkpoint_written_before_the_manifest_still_resumes_exactly(saved, tmp_path):
    root, straight = saved
    run_dir = _copy(root, tmp_path)
    for step in (2, 4):
        os.remove(run_dir / f"checkpoint-{step}" / MANIFEST_NAME)
    shutil.rmtree(run_dir / "checkpoint-4")
    trainer = _trainer("adamw_torch", run_dir, save_strategy="steps", save_steps=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=True)
    assert _resume_warnings(record) == []
    assert max_param_diff(trainer.model, straight) < 1e-6
    assert (run_dir / "checkpoint-4" / MANIFEST_NAME).is_file()  # the resumed run writes new-style ones


@pytest.mark.parametrize("other, missing", [("sgd", "momentum"), ("schedule_free_adamw", "train_mode")])
def test_another_optimizer_on_a_checkpoint_without_the_manifest_is_a_clear_error(saved, tmp_path, other, missing):
    """Without a record the saved param groups still show it: the built optimizer reads settings they lack."""
    root, _ = saved
    run_dir = _copy(root, tmp_path)
    os.remove(run_dir / "checkpoint-4" / MANIFEST_NAME)
    with pytest.raises(ValueError, match=rf"without optim_registry\.json.*without the settings \[.*'{missing}'"):
        _trainer(other, tmp_path / "out").train(resume_from_checkpoint=str(run_dir / "checkpoint-4"))


@pytest.mark.parametrize("name", ["adamw_torch_layerwise", "schedule_free_adamw"])
def test_layerwise_and_schedule_free_resume_exactly_past_a_torn_checkpoint(tmp_path, name):
    """Their own protocols (per-parameter state, eval mode around saving) survive the manifest and the skip."""
    kw = {"max_grad_norm": 0.0} if name.endswith("_layerwise") else {}
    straight = _save_run(tmp_path / "run", name, **kw).model
    _truncate(tmp_path / "run" / "checkpoint-4" / "model.safetensors")
    trainer = _trainer(name, tmp_path / "run", **kw)
    with pytest.warns(ResumeWarning, match="checkpoint-4"):
        trainer.train(resume_from_checkpoint=True)
    assert max_param_diff(trainer.model, straight) < 1e-6


def test_switching_to_the_layerwise_twin_on_resume_is_allowed_and_exact(saved, tmp_path):
    """A name and its `_layerwise` twin hold the same state in torch's layout: not another optimizer."""
    root, straight = saved
    trainer = _trainer("adamw_torch_layerwise", tmp_path / "out", max_grad_norm=0.0)
    trainer.train(resume_from_checkpoint=str(root / "checkpoint-2"))
    assert max_param_diff(trainer.model, straight) < 1e-6
