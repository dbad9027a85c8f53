"""LOMO / AdaLomo and schedule-free: conformance, clipping that clips, warm-up in steps, eval weights saved."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from optim_registry import OptimTrainer, get_optimizer_cls_and_kwargs
from optim_registry.testing import TokenDataset, check_optimizer, max_param_diff, run, tiny_model, training_args
from optim_registry.testing import arguments as _args
from optim_registry.trainer import unwrap_optimizer


def _logged(trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h and "loss" in h]


@pytest.mark.harness
@pytest.mark.parametrize(
    ("name", "optim_args", "extra"),
    [
        ("adalomo", None, {}),
        ("lomo", None, {}),
        ("schedule_free_adamw", None, {}),
        # RAdam keeps the weights still while its rectification is undefined (4 steps at beta2=0.999).
        ("schedule_free_radam", None, {"steps": 6}),
        ("schedule_free_sgd", "momentum=0.8", {}),
    ],
)
def test_conformance(name, optim_args, extra, tmp_path):
    report = check_optimizer(name, optim_args, workdir=str(tmp_path), **extra)
    assert report.ok, report.failures


# -- LOMO / AdaLomo --------------------------------------------------------------------------------
def test_lomo_clips_to_max_grad_norm_and_logs_the_norm(tmp_path):
    common = dict(weight_decay=0.0, max_grad_norm=0.5)
    lomo = run("lomo", str(tmp_path / "lomo"), max_steps=3, **common)
    sgd = run("sgd", str(tmp_path / "sgd"), max_steps=3, **common)
    norms, sgd_norms = _logged(lomo, "grad_norm"), _logged(sgd, "grad_norm")
    assert len(norms) == 3 and min(norms) > 0.5  # real norms, and above the threshold: clipping acted
    assert norms == pytest.approx(sgd_norms, rel=1e-5)
    # LOMO is SGD fused into backward: with the same clipping it follows SGD's trajectory exactly.
    assert max_param_diff(lomo.model, sgd.model) < 1e-6

    # One step against an unclipped run: the update is scaled by max_grad_norm / norm.
    start = dict(tiny_model().named_parameters())
    one = run("lomo", str(tmp_path / "one"), max_steps=1, **common)
    free = run("lomo", str(tmp_path / "free"), max_steps=1, weight_decay=0.0, max_grad_norm=0.0)
    coef = 0.5 / (_logged(one, "grad_norm")[0] + 1e-6)
    assert _logged(free, "grad_norm")[0] == pytest.approx(_logged(one, "grad_norm")[0], rel=1e-5)
    clipped, unclipped = dict(one.model.named_parameters()), dict(free.model.named_parameters())
    for n, p0 in start.items():
        torch.testing.assert_close(clipped[n] - p0, coef * (unclipped[n] - p0), atol=1e-7, rtol=1e-4)


def test_adalomo_clips_and_logs_the_norm(tmp_path):
    clipped = run("adalomo", str(tmp_path / "a"), max_steps=2, weight_decay=0.0, max_grad_norm=0.5)
    free = run("adalomo", str(tmp_path / "b"), max_steps=2, weight_decay=0.0, max_grad_norm=0.0)
    norms = _logged(clipped, "grad_norm")
    assert len(norms) == 2 and min(norms) > 0.5
    assert _logged(free, "grad_norm")[0] == pytest.approx(norms[0], rel=1e-5)
    assert max_param_diff(clipped.model, free.model) > 1e-5


def test_lomo_refuses_what_cannot_work(monkeypatch):
    with pytest.raises(ValueError, match="gradient_accumulation_steps=1"):
        _args("lomo", gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        _args("adalomo", gradient_accumulation_steps=4)
    # accelerate runs DeepSpeed's own backward (never fused_backward); DDP would update before averaging.
    with pytest.raises(ValueError, match="never calls fused_backward"):
        _args("lomo", deepspeed={"zero_optimization": {"stage": 3}})
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="before DDP has averaged"):
        _args("adalomo")


def test_lomo_builds_with_the_model_and_refuses_step():
    model = tiny_model()
    cls, kwargs = get_optimizer_cls_and_kwargs(_args("lomo", max_grad_norm=2.0, weight_decay=0.1), model)
    assert kwargs["model"] is model and kwargs["clip_grad_norm"] == 2.0 and kwargs["weight_decay"] == 0.1
    with pytest.raises(ValueError, match="needs the model"):
        get_optimizer_cls_and_kwargs(_args("adalomo"))
    optimizer = cls(kwargs.pop("model"), **kwargs)
    with pytest.raises(NotImplementedError, match="fused_backward"):
        optimizer.step()


def test_adalomo_runs_on_cpu_and_keeps_fp32_moments_through_state_dict():
    model = tiny_model().to(torch.bfloat16)
    cls, kwargs = get_optimizer_cls_and_kwargs(_args("adalomo", learning_rate=1e-2), model)
    optimizer = cls(kwargs.pop("model"), **kwargs)
    batch = TokenDataset().data[:8]
    for _ in range(2):
        optimizer.fused_backward(model(input_ids=batch, labels=batch).loss, 1e-2)
    state = optimizer.state_dict()["state"]
    assert set(state[0]) == {"exp_avg_sq_row", "exp_avg_sq_col", "step"} and float(state[0]["step"]) == 2
    fresh = cls(tiny_model().to(torch.bfloat16), **kwargs)
    fresh.load_state_dict(optimizer.state_dict())
    assert fresh.step_num == 2
    for name, row in optimizer.exp_avg_sq_row.items():
        assert row.device.type == "cpu" and fresh.exp_avg_sq_row[name].dtype == torch.float32
        assert torch.equal(fresh.exp_avg_sq_row[name], row)
        assert torch.equal(fresh.exp_avg_sq_col[name], optimizer.exp_avg_sq_col[name])


# -- schedule-free ---------------------------------------------------------------------------------
class _StopAfterFirstStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = True


@pytest.mark.parametrize("name", ["schedule_free_adamw", "schedule_free_sgd"])
def test_warmup_ratio_becomes_steps_and_only_the_optimizer_warms_up(name, tmp_path):
    # warmup_steps=0.1 of a 20-step run = 2 steps: the first step runs at lr/2 (transformers 5.23: 10x lr).
    args = training_args(name, str(tmp_path), warmup_steps=0.1, max_steps=20, lr_scheduler_type="linear",
                         weight_decay=0.0)
    trainer = OptimTrainer(model=tiny_model(), args=args, train_dataset=TokenDataset(),
                           callbacks=[_StopAfterFirstStep()])
    trainer.train()
    group = unwrap_optimizer(trainer.optimizer).param_groups[0]
    assert group["warmup_steps"] == 2
    assert group["scheduled_lr"] == pytest.approx(0.5e-2)
    assert _logged(trainer, "learning_rate") == [pytest.approx(1e-2)]  # the Trainer's schedule: no warm-up
    if name == "schedule_free_sgd":
        # The first schedule-free SGD step is a plain SGD step at the effective rate.
        sgd = run("sgd", str(tmp_path / "sgd"), max_steps=1, learning_rate=0.5e-2, weight_decay=0.0)
        assert max_param_diff(trainer.model, sgd.model) < 1e-7


def test_warmup_ratio_needs_the_run_length():
    with pytest.raises(ValueError, match="warmup_steps=0.1.*ratio"):
        get_optimizer_cls_and_kwargs(_args("schedule_free_adamw", warmup_steps=0.1))
    _, kwargs = get_optimizer_cls_and_kwargs(_args("schedule_free_adamw", warmup_steps=0.1, max_steps=50))
    assert kwargs["warmup_steps"] == 5
    _, kwargs = get_optimizer_cls_and_kwargs(_args("schedule_free_radam", warmup_steps=3))
    assert "warmup_steps" not in kwargs  # RAdamScheduleFree takes none: the Trainer's schedule warms up
    with pytest.raises(ValueError, match="momentum=1.0"):
        get_optimizer_cls_and_kwargs(_args("schedule_free_sgd", optim_args="momentum=1.0"))


def test_schedule_free_checkpoint_holds_eval_weights(tmp_path):
    from safetensors.torch import load_file

    saved = run("schedule_free_adamw", str(tmp_path / "saved"), max_steps=4, save_strategy="steps", save_steps=2)
    inner = unwrap_optimizer(saved.optimizer)
    assert inner.param_groups[0]["train_mode"]  # switched back after saving
    y = {n: p.detach().clone() for n, p in saved.model.named_parameters()}
    inner.eval()
    x = {n: p.detach().clone() for n, p in saved.model.named_parameters()}
    inner.train()
    on_disk = load_file(str(tmp_path / "saved" / "checkpoint-4" / "model.safetensors"))
    assert max((on_disk[n] - x[n]).abs().max().item() for n in x) < 1e-6
    assert max((on_disk[n] - y[n]).abs().max().item() for n in y) > 1e-4  # x and y really differ
    optimizer_state = torch.load(tmp_path / "saved" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert optimizer_state["param_groups"][0]["train_mode"] is False

    # Saving half-way did not disturb training: same weights as a run that never saved.
    unsaved = run("schedule_free_adamw", str(tmp_path / "unsaved"), max_steps=4)
    assert max_param_diff(saved.model, unsaved.model) < 1e-6

    # save_model() at the end writes the eval weights too.
    saved.save_model(str(tmp_path / "final"))
    final = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert max((final[n] - x[n]).abs().max().item() for n in x) < 1e-6
