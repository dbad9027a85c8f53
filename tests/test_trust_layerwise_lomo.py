"""Trust (issue 15): layer-wise names with transformers' default max_grad_norm, exact global clipping
(``clip=global``), LOMO hooks scoped to their Trainer, and ``compare --out`` checked before training."""

from __future__ import annotations

import warnings

import pytest
import torch

from optim_registry import TrainingArguments, create_optimizer
from optim_registry.cli import main
from optim_registry.listing import layerwise_twin
from optim_registry.testing import TokenDataset, max_param_diff, run, tiny_model

COMMON = dict(max_steps=3, weight_decay=0.0, learning_rate=0.5, lr_scheduler_type="cosine")


def _unclipped_warnings(caught):
    return [w for w in caught if "global-norm clipping" in str(w.message) and "not applied" in str(w.message)]


# -- default max_grad_norm -------------------------------------------------------------------------------
def test_guide_layerwise_example_trains_with_default_max_grad_norm_and_warns_once(tmp_path):
    """The transformers optimizer guide's GaLore layer-wise example, as written (max_grad_norm left at 1.0)."""
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, optim="galore_adamw_layerwise",
        optim_target_modules=[r".*.attn.*", r".*.mlp.*"], optim_args="rank=64, update_proj_gap=100, scale=0.10",
        report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
    )
    assert args.max_grad_norm == 1.0
    from optim_registry import OptimTrainer

    model = tiny_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        OptimTrainer(model=model, args=args, train_dataset=TokenDataset()).train()
    found = _unclipped_warnings(caught)
    assert len(found) == 1, [str(w.message) for w in caught]
    message = str(found[0].message)
    for way in ("clip=global", "clip_per_param", "max_grad_norm=0", "'galore_adamw'"):
        assert way in message, message
    assert any(not torch.equal(start[n], p) for n, p in model.named_parameters())


def test_no_warning_when_clipping_is_chosen_or_declined(tmp_path):
    for tag, optim_args, max_grad_norm in (("g", "clip=global", 1.0), ("p", "clip_per_param=1.0", 1.0),
                                           ("z", None, 0.0)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run("adamw_torch_layerwise", str(tmp_path / tag), optim_args, max_steps=1, max_grad_norm=max_grad_norm)
        assert not _unclipped_warnings(caught), (tag, [str(w.message) for w in caught])


@pytest.mark.parametrize(
    "optim_args, max_grad_norm, words",
    [
        (None, 2.0, ["max_grad_norm=2.0", "clip=global", "clip_per_param=2.0", "max_grad_norm=0"]),
        (None, float("inf"), ["max_grad_norm=inf", "clip=global"]),
        ("clip_per_param=0.5", 2.0, ["max_grad_norm=2.0", "clip=global"]),
        ("clip=global", 0.0, ["clip=global", "max_grad_norm", "positive"]),
        ("clip=global,clip_per_param=0.5", 1.0, ["clip=global", "clip_per_param=0.5", "keep one"]),
        ("clip=local", 1.0, ["'clip'", "local", "global"]),
    ],
)
def test_clipping_requests_a_layerwise_name_cannot_honour_are_refused_up_front(optim_args, max_grad_norm, words):
    with pytest.raises(ValueError) as info:
        TrainingArguments("unused", optim="adamw_torch_layerwise", optim_args=optim_args,
                          max_grad_norm=max_grad_norm, report_to=[], use_cpu=True)
    for word in words:
        assert word in str(info.value), str(info.value)


# -- clip=global through the Trainer ----------------------------------------------------------------------
@pytest.mark.parametrize("name, ga", [("sgd", 1), ("sgd", 2), ("adamw_torch", 1)])
def test_clip_global_ends_where_the_whole_model_run_ends(tmp_path, name, ga):
    kw = dict(COMMON, gradient_accumulation_steps=ga, max_grad_norm=0.3)
    if name == "adamw_torch":
        kw["learning_rate"] = 1e-2
    whole = run(name, str(tmp_path / "whole"), None, **kw)
    layer = run(layerwise_twin(name), str(tmp_path / "layer"), "clip=global", **kw)
    unclipped = run(layerwise_twin(name), str(tmp_path / "free"), None, **{**kw, "max_grad_norm": 0.0})
    assert max_param_diff(whole.model, layer.model) < 1e-5
    # the clip was active: without it the run ends elsewhere
    assert max_param_diff(whole.model, unclipped.model) > 1e-3
    logged = [h["grad_norm"] for h in layer.state.log_history if "grad_norm" in h]
    expected = [h["grad_norm"] for h in whole.state.log_history if "grad_norm" in h]
    assert logged == pytest.approx(expected, rel=1e-5) and all(n > 0.3 for n in expected)


def test_clip_global_leaves_no_gradient_and_no_wrapper_behind(tmp_path):
    trainer = run("sgd_layerwise", str(tmp_path), "clip=global", max_steps=2, max_grad_norm=0.3)
    assert all(p.grad is None for p in trainer.model.parameters())
    assert "backward" not in vars(trainer.accelerator)


# -- clip=global by hand -----------------------------------------------------------------------------------
def _batches(n=3):
    data = TokenDataset()
    return [{k: torch.stack([data[i][k] for i in range(8 * s, 8 * s + 8)]) for k in ("input_ids", "labels")}
            for s in range(n)]


@pytest.mark.parametrize("route", ["optimizer.backward", "loss.backward"])
def test_clip_global_by_hand_matches_clip_grad_norm(route):
    """A hand loop: ``optimizer.backward(loss)`` (two passes, gradients freed as they go) or a plain
    ``loss.backward()`` + ``step()`` (gradients held until step) both clip exactly as torch does."""
    ref_model, model = tiny_model(), tiny_model()
    common = dict(output_dir="unused", report_to=[], use_cpu=True, learning_rate=1e-2, weight_decay=0.01)
    ref_opt = create_optimizer(TrainingArguments(optim="adamw_torch", **common), ref_model)
    opt = create_optimizer(TrainingArguments(optim="adamw_torch_layerwise", optim_args="clip=global",
                                             max_grad_norm=0.3, **common), model)
    for batch in _batches():
        loss = ref_model(**batch).loss
        loss.backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.3)
        ref_opt.step()
        ref_opt.zero_grad()

        loss = model(**batch).loss
        if route == "optimizer.backward":
            opt.backward(loss)
            assert all(p.grad is None for p in model.parameters()), "gradients outlived their step"
        else:
            loss.backward()
            assert all(p.grad is not None for p in model.parameters()), "held until step()"
        opt.step()
        assert float(opt.last_grad_norm) == pytest.approx(float(ref_norm), rel=1e-5)
        assert float(ref_norm) > 0.3
    assert max_param_diff(ref_model, model) < 1e-5


def test_clip_global_by_hand_with_accumulation_clips_the_accumulated_gradient():
    ref_model, model = tiny_model(), tiny_model()
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.5)
    from optim_registry.engines.layerwise.engine import LayerwiseOptimizer

    opt = LayerwiseOptimizer(model.parameters(), lambda g: torch.optim.SGD(g, lr=0.5), max_grad_norm=0.3)
    micro = _batches(4)
    for window in (micro[:2], micro[2:]):
        for i, batch in enumerate(window):
            (ref_model(**batch).loss / 2).backward()
            opt.should_step = i == len(window) - 1
            opt.backward(model(**batch).loss / 2)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.3)
        ref_opt.step()
        ref_opt.zero_grad()
        opt.step()
        assert float(opt.last_grad_norm) == pytest.approx(float(ref_norm), rel=1e-5)
    assert max_param_diff(ref_model, model) < 1e-5


def test_layerwise_optimizer_refuses_bad_global_clip_arguments():
    from optim_registry.engines.layerwise.engine import LayerwiseOptimizer

    model = tiny_model()
    hooks_before = sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())
    for kwargs in ({"max_grad_norm": 0.0}, {"max_grad_norm": float("nan")}, {"max_grad_norm": float("inf")},
                   {"max_grad_norm": 1.0, "clip_per_param": 1.0}):
        with pytest.raises(ValueError, match="max_grad_norm"):
            LayerwiseOptimizer(model.parameters(), lambda g: torch.optim.SGD(g, lr=0.1), **kwargs)
    assert sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters()) == hooks_before


# -- compare --out ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["file", "inside_file"])
def test_compare_refuses_an_output_location_that_is_a_file_before_training(tmp_path, capsys, where):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    out = existing if where == "file" else existing / "sub"
    code = main(["compare", "--optims", "sgd", "--steps", "1", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(out) in lines[0], captured.err
    assert "Traceback" not in captured.err and "sgd" not in captured.out  # nothing trained
    assert existing.read_text() == "keep me"


# -- LOMO / AdaLomo hooks ---------------------------------------------------------------------------------
def _tensor_hooks(model):
    return sum(len(p._backward_hooks or {}) for p in model.parameters())


def _bare_backward_moves(model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = _batches(1)[0]
    model(**batch).loss.backward()
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    model.zero_grad(set_to_none=True)
    return moved


@pytest.mark.parametrize("name", ["lomo", "adalomo"])
def test_lomo_hooks_live_only_inside_their_own_backward(tmp_path, name):
    """Before: 84 hooks after two Trainers on one model; a bare backward, or a second Trainer at
    learning_rate=0, moved 20 parameters."""
    model = tiny_model()
    first = run(name, str(tmp_path / "a"), None, model=model, max_steps=1, max_grad_norm=1.0)
    assert _tensor_hooks(model) == 0 and first.optimizer.optimizer.hook_count() == 0
    assert _bare_backward_moves(model) == []

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    second = run(name, str(tmp_path / "b"), None, model=model, max_steps=1, max_grad_norm=1.0, learning_rate=0.0,
                 weight_decay=0.0)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters()), "lr=0 run moved weights"
    assert _tensor_hooks(model) == 0
    assert _bare_backward_moves(model) == []

    # ... and each still trains: a third run on the same model moves every trainable parameter, exactly as a
    # run on a fresh copy of the same weights does.
    fresh = tiny_model()
    fresh.load_state_dict(model.state_dict())
    third = run(name, str(tmp_path / "c"), None, model=model, max_steps=1, max_grad_norm=1.0)
    alone = run(name, str(tmp_path / "d"), None, model=fresh, max_steps=1, max_grad_norm=1.0)
    assert max_param_diff(third.model, alone.model) == 0.0
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    del first, second, third
