"""Layer-wise through OptimTrainer: exact, scheduled, resumable, clipped per parameter, hooks scoped."""

from __future__ import annotations

import gc
import os

import pytest
import torch

from optim_registry import TrainingArguments
from optim_registry.testing import TokenDataset, check_optimizer, max_param_diff, run, tiny_model


def _run(name, tmp_path, tag, **kw):
    kw.setdefault("max_steps", 4)
    kw.setdefault("max_grad_norm", 0.0)
    kw.setdefault("lr_scheduler_type", "cosine")
    return run(name, str(tmp_path / tag), None, **kw)


@pytest.mark.parametrize("ga", [1, 2])
def test_layerwise_equals_whole_model(tmp_path, ga):
    whole = _run("adamw_torch", tmp_path, f"whole{ga}", gradient_accumulation_steps=ga)
    layer = _run("adamw_torch_layerwise", tmp_path, f"layer{ga}", gradient_accumulation_steps=ga)
    assert max_param_diff(whole.model, layer.model) < 1e-5


def test_schedule_drives_layerwise_learning_rates(tmp_path):
    """transformers 5.23: layer-wise weights were identical for linear, constant and cosine schedules."""
    finals = {}
    for schedule in ("constant", "linear", "cosine"):
        trainer = _run("adamw_torch_layerwise", tmp_path, schedule, lr_scheduler_type=schedule, warmup_steps=1)
        finals[schedule] = trainer.model
        logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
        assert (len(set(logged)) == 1) == (schedule == "constant"), logged
    assert max_param_diff(finals["constant"], finals["linear"]) > 1e-4
    assert max_param_diff(finals["linear"], finals["cosine"]) > 1e-6
    # the lr the inner optimizers used in the last step is the scheduled (and logged) one
    inner = next(iter(trainer.optimizer.optimizer.inner_optimizers.values()))
    assert inner.param_groups[0]["lr"] == pytest.approx(logged[-1])


@pytest.mark.harness("adamw_torch_layerwise")
def test_layerwise_checkpoint_holds_state_and_resumes_exactly(tmp_path):
    """transformers 5.23: optimizer.pt of a layer-wise checkpoint had 0 entries; resume diverged."""
    report = check_optimizer("adamw_torch_layerwise", workdir=str(tmp_path))
    assert report.ok, report.failures
    trainer = _run("adamw_torch_layerwise", tmp_path, "ckpt", save_strategy="steps", save_steps=2)
    state = torch.load(tmp_path / "ckpt" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    n_params = sum(1 for p in trainer.model.parameters() if p.requires_grad)
    assert len(state["state"]) == n_params and all("exp_avg" in s for s in state["state"].values())


def test_layerwise_logs_a_real_grad_norm(tmp_path):
    """transformers 5.23: layer-wise logged grad_norm 0.0."""
    trainer = _run("adamw_torch_layerwise", tmp_path, "norm")
    norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    whole = _run("adamw_torch", tmp_path, "norm_whole")
    expected = [h["grad_norm"] for h in whole.state.log_history if "grad_norm" in h]
    assert norms and all(n > 0 for n in norms)
    assert norms == pytest.approx(expected, rel=1e-4)


def test_per_parameter_clipping_is_offered_and_global_clipping_refused(tmp_path):
    with pytest.raises(ValueError, match=r"global-norm clipping \(max_grad_norm=2.0\) cannot be applied.*clip_per_param"):
        TrainingArguments(str(tmp_path), optim="adamw_torch_layerwise", max_grad_norm=2.0, report_to=[], use_cpu=True)
    a = run("sgd_layerwise", str(tmp_path / "c1"), "clip_per_param=1e-3", max_steps=1, max_grad_norm=0.0,
            learning_rate=1.0, weight_decay=0.0, model=tiny_model())
    b = run("sgd_layerwise", str(tmp_path / "c2"), None, max_steps=1, max_grad_norm=0.0, learning_rate=1.0,
            weight_decay=0.0, model=tiny_model())
    start = tiny_model()
    moved_clipped = max((p - q).norm().item() for p, q in zip(a.model.parameters(), start.parameters()))
    moved_free = max((p - q).norm().item() for p, q in zip(b.model.parameters(), start.parameters()))
    assert moved_clipped <= 1e-3 + 1e-7 < moved_free


def test_fp16_refused_with_layerwise(tmp_path):
    with pytest.raises(ValueError, match="before fp16 loss scaling"):
        TrainingArguments(str(tmp_path), optim="adamw_torch_layerwise", max_grad_norm=0.0, fp16=True,
                          report_to=[], use_cpu=True)


def test_hooks_are_scoped_to_the_trainer(tmp_path):
    """transformers 5.23: hooks were never removed; a bare backward() or a second Trainer at lr=0 still
    moved the weights."""
    model = tiny_model()
    trainer = run("adamw_torch_layerwise", str(tmp_path / "a"), None, model=model, max_steps=2, max_grad_norm=0.0)
    batch = TokenDataset()[0]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(input_ids=batch["input_ids"][None], labels=batch["labels"][None]).loss.backward()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters()), "bare backward moved weights"
    model.zero_grad(set_to_none=True)

    second = run("adamw_torch_layerwise", str(tmp_path / "b"), None, model=model, max_steps=2, max_grad_norm=0.0,
                 learning_rate=0.0)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters()), "lr=0 run moved weights"

    del trainer, second
    gc.collect()
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters())


def test_frozen_parameters_get_no_hook_and_stay(tmp_path):
    model = tiny_model()
    model.model.embed_tokens.weight.requires_grad_(False)
    frozen = model.model.embed_tokens.weight.detach().clone()
    trainer = run("adamw_torch_layerwise", str(tmp_path), None, model=model, max_steps=2, max_grad_norm=0.0)
    weight = model.model.embed_tokens.weight
    assert not weight._post_accumulate_grad_hooks
    assert torch.equal(weight, frozen)
    assert weight not in trainer.optimizer.optimizer.inner_optimizers


def test_gradient_accumulation_accepted_at_arguments_creation():
    """transformers 5.23 accepted gradient_accumulation_steps=2 for layer-wise and failed inside train()."""
    a = TrainingArguments(os.devnull, optim="adamw_torch_layerwise", gradient_accumulation_steps=2,
                          max_grad_norm=0.0, report_to=[], use_cpu=True)
    assert a.gradient_accumulation_steps == 2

