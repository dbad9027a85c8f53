"""Tests for the layer-wise engine: real training of a tiny Llama, layer-wise against whole-model stepping."""

from __future__ import annotations

import copy
import gc
import math
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from optim_registry.engines.layerwise.engine import LayerwiseOptimizer

VOCAB = 64
LR = 1e-2
STEPS = 4

Groups = list[dict[str, Any]]
Factory = Callable[[Groups], torch.optim.Optimizer]


def make_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def make_batches(n: int, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, 16), generator=gen) for _ in range(n)]


def loss_of(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


def adamw_groups(model: LlamaForCausalLM, lr: float = LR) -> Groups:
    """HF-style split: decay on matrices, none on norms."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [
        {"params": decay, "lr": lr, "weight_decay": 0.1},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]


def galore_groups(model: LlamaForCausalLM, lr: float = LR) -> Groups:
    """GaLore's keys live in the group of the decoder layers' Linear weights."""
    target = [m.weight for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    target_ids = {id(p) for p in target}
    rest = [p for p in model.parameters() if id(p) not in target_ids]
    galore = {"rank": 4, "update_proj_gap": 2, "scale": 0.25, "proj_type": "std"}
    return [{"params": rest, "lr": lr}, {"params": target, "lr": lr, **galore}]


def adamw(groups: Groups) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, foreach=False)


def galore_adamw(groups: Groups) -> torch.optim.Optimizer:
    from galore_torch import GaLoreAdamW

    return GaLoreAdamW(groups, no_deprecation_warning=True)


def adamw_8bit(groups: Groups) -> torch.optim.Optimizer:
    import bitsandbytes as bnb

    # A low threshold so the tiny model's matrices really get 8-bit state.
    return bnb.optim.AdamW8bit(groups, min_8bit_size=256)


def schedule_free(groups: Groups) -> torch.optim.Optimizer:
    from schedulefree import AdamWScheduleFree

    # Warmup makes every step depend on the group's step counter k.
    return AdamWScheduleFree(groups, warmup_steps=2, foreach=False)


def cosine(total: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total))


class Sync:
    """Stands in for ``accelerator.sync_gradients``."""

    def __init__(self) -> None:
        self.value = True

    def __call__(self) -> bool:
        return self.value


def train_whole(
    model: LlamaForCausalLM,
    opt: torch.optim.Optimizer,
    batches: list[torch.Tensor],
    *,
    ga: int = 1,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    clip: float | None = None,
    norms: list[torch.Tensor] | None = None,
) -> None:
    for start in range(0, len(batches), ga):
        for ids in batches[start : start + ga]:
            (loss_of(model, ids) / ga).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if norms is not None:
            norms.append(torch.nn.utils.get_total_norm(grads))
        if clip is not None:
            for p in model.parameters():
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_([p], clip)
        opt.step()
        opt.zero_grad()
        if scheduler is not None:
            scheduler.step()


def train_layerwise(
    model: LlamaForCausalLM,
    opt: LayerwiseOptimizer,
    batches: list[torch.Tensor],
    *,
    ga: int = 1,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    norms: list[torch.Tensor] | None = None,
) -> None:
    sync = Sync()
    opt.should_step = sync
    for start in range(0, len(batches), ga):
        window = batches[start : start + ga]
        for i, ids in enumerate(window):
            sync.value = i == len(window) - 1
            (loss_of(model, ids) / ga).backward()
        if norms is not None:
            # What the HF Trainer reads: between backward and step().
            norms.append(opt.grad_norm())
        opt.step()
        if norms is not None:
            torch.testing.assert_close(opt.last_grad_norm, norms[-1])
        opt.zero_grad()
        if scheduler is not None:
            scheduler.step()


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


def snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def unchanged(model: torch.nn.Module, before: Iterable[torch.Tensor]) -> bool:
    return all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def hooks_of(p: torch.Tensor) -> int:
    return len(p._post_accumulate_grad_hooks or {})


# ------------------------------------------------------------------------------------------- 1. equality


@pytest.mark.parametrize("ga", [1, 2])
@pytest.mark.parametrize(
    ("group_fn", "factory"),
    [(adamw_groups, adamw), (galore_groups, galore_adamw)],
    ids=["adamw", "galore"],
)
def test_layerwise_matches_whole_model(group_fn: Callable[..., Groups], factory: Factory, ga: int) -> None:
    batches = make_batches(STEPS * ga)
    whole, lw = make_model(), make_model()
    initial = snapshot(whole)

    train_whole(whole, factory(group_fn(whole)), batches, ga=ga)
    opt = LayerwiseOptimizer(group_fn(lw), factory)
    train_layerwise(lw, opt, batches, ga=ga)

    assert not unchanged(whole, initial)
    assert max_param_diff(whole, lw) < 1e-5
    assert all(p.grad is None for p in lw.parameters())


def test_clip_per_param_matches_per_tensor_clipping() -> None:
    batches = make_batches(STEPS)
    whole, lw = make_model(), make_model()
    train_whole(whole, adamw(adamw_groups(whole)), batches, clip=0.05)
    train_layerwise(lw, LayerwiseOptimizer(adamw_groups(lw), adamw, clip_per_param=0.05), batches)
    unclipped = make_model()
    train_whole(unclipped, adamw(adamw_groups(unclipped)), batches)

    assert max_param_diff(whole, lw) < 1e-5
    assert max_param_diff(unclipped, lw) > 1e-4


# ------------------------------------------------------------------------------------------- 2. schedulers


def test_lr_scheduler_drives_inner_optimizers() -> None:
    batches = make_batches(STEPS)
    lam = cosine(STEPS)

    whole = make_model()
    whole_opt = adamw(adamw_groups(whole))
    train_whole(whole, whole_opt, batches, scheduler=torch.optim.lr_scheduler.LambdaLR(whole_opt, lam))

    lw = make_model()
    opt = LayerwiseOptimizer(adamw_groups(lw), adamw)
    train_layerwise(lw, opt, batches, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lam))

    constant = make_model()
    train_layerwise(constant, LayerwiseOptimizer(adamw_groups(constant), adamw), batches)

    assert max_param_diff(whole, lw) < 1e-5
    assert max_param_diff(constant, lw) > 1e-4
    # The lr each inner optimizer used last is the scheduled one of the last step.
    for inner in opt.inner_optimizers.values():
        assert inner.param_groups[0]["lr"] == pytest.approx(LR * lam(STEPS - 1))
    assert opt.param_groups[0]["lr"] == pytest.approx(LR * lam(STEPS))


# ------------------------------------------------------------------------------------------- 3. state dict


@pytest.mark.parametrize("factory", [adamw, adamw_8bit], ids=["adamw", "bnb_adamw8bit"])
def test_state_dict_round_trip_through_weights_only_load(factory: Factory, tmp_path: Path) -> None:
    batches = make_batches(STEPS)
    lam = cosine(STEPS)

    straight = make_model()
    opt = LayerwiseOptimizer(adamw_groups(straight), factory)
    train_layerwise(straight, opt, batches, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lam))

    first = make_model()
    opt1 = LayerwiseOptimizer(adamw_groups(first), factory)
    sched1 = torch.optim.lr_scheduler.LambdaLR(opt1, lam)
    train_layerwise(first, opt1, batches[:2], scheduler=sched1)
    torch.save(
        {"model": first.state_dict(), "optimizer": opt1.state_dict(), "scheduler": sched1.state_dict()},
        tmp_path / "ckpt.pt",
    )
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)

    # torch's layout: every parameter has an index, each trained one carries its inner state.
    n_params = len(list(first.parameters()))
    assert sorted(i for g in ckpt["optimizer"]["param_groups"] for i in g["params"]) == list(range(n_params))
    assert sorted(ckpt["optimizer"]["state"]) == list(range(n_params))
    if factory is adamw:
        assert set(ckpt["optimizer"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}

    resumed = make_model(seed=123)
    resumed.load_state_dict(ckpt["model"])
    opt2 = LayerwiseOptimizer(adamw_groups(resumed), factory)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lam)
    opt2.load_state_dict(ckpt["optimizer"])
    sched2.load_state_dict(ckpt["scheduler"])
    p0 = next(resumed.parameters())
    assert opt2.state[p0] is opt2.inner_optimizers[p0].state[p0]
    train_layerwise(resumed, opt2, batches[2:], scheduler=sched2)

    assert max_param_diff(straight, resumed) < 1e-6


@pytest.mark.parametrize("direction", ["whole_to_layerwise", "layerwise_to_whole"])
def test_checkpoints_interchange_with_whole_model_adamw(direction: str) -> None:
    # Same torch layout both ways, so a run can switch between adamw and its layer-wise twin on resume.
    batches = make_batches(STEPS)
    straight = make_model()
    train_whole(straight, adamw(adamw_groups(straight)), batches)

    first, resumed = make_model(), make_model()
    if direction == "whole_to_layerwise":
        opt1: torch.optim.Optimizer = adamw(adamw_groups(first))
        train_whole(first, opt1, batches[:2])
    else:
        opt1 = LayerwiseOptimizer(adamw_groups(first), adamw)
        train_layerwise(first, opt1, batches[:2])
    resumed.load_state_dict(first.state_dict())
    if direction == "whole_to_layerwise":
        opt2 = LayerwiseOptimizer(adamw_groups(resumed), adamw)
        opt2.load_state_dict(opt1.state_dict())
        train_layerwise(resumed, opt2, batches[2:])
    else:
        opt2 = adamw(adamw_groups(resumed))
        opt2.load_state_dict(opt1.state_dict())
        train_whole(resumed, opt2, batches[2:])

    assert max_param_diff(straight, resumed) < 1e-5


@pytest.mark.parametrize("factory", [adamw, schedule_free], ids=["adamw", "schedule_free"])
def test_in_place_reload_mid_training_changes_nothing(factory: Factory) -> None:
    # accelerate's prepare() does optimizer.load_state_dict(optimizer.state_dict()).
    batches = make_batches(STEPS)
    straight, reloaded = make_model(), make_model()
    opt = LayerwiseOptimizer(adamw_groups(straight), factory)
    opt.train()
    train_layerwise(straight, opt, batches)

    opt2 = LayerwiseOptimizer(adamw_groups(reloaded), factory)
    opt2.train()
    opt2.load_state_dict(opt2.state_dict())
    train_layerwise(reloaded, opt2, batches[:2])
    opt2.load_state_dict(opt2.state_dict())
    train_layerwise(reloaded, opt2, batches[2:])

    assert max_param_diff(straight, reloaded) == 0.0


def test_schedule_free_matches_whole_model_and_resumes(tmp_path: Path) -> None:
    batches = make_batches(STEPS)

    whole = make_model()
    whole_opt = schedule_free(adamw_groups(whole))
    whole_opt.train()
    train_whole(whole, whole_opt, batches)

    lw = make_model()
    opt = LayerwiseOptimizer(adamw_groups(lw), schedule_free)
    opt.train()
    # The outer groups show the inner train mode, as Trainer code reads it from param_groups.
    assert opt.param_groups[0]["train_mode"] is True
    train_layerwise(lw, opt, batches)
    assert max_param_diff(whole, lw) < 1e-5
    assert opt.param_groups[0]["k"] == STEPS

    # step() is bookkeeping only: skipping it must not let stale outer values (k, train_mode) overwrite
    # the ones each inner optimizer keeps in its own group.
    no_step = make_model()
    opt_no_step = LayerwiseOptimizer(adamw_groups(no_step), schedule_free)
    opt_no_step.train()
    for ids in batches:
        loss_of(no_step, ids).backward()
    assert max_param_diff(whole, no_step) < 1e-5

    first = make_model()
    opt1 = LayerwiseOptimizer(adamw_groups(first), schedule_free)
    opt1.train()
    train_layerwise(first, opt1, batches[:2])
    torch.save({"model": first.state_dict(), "optimizer": opt1.state_dict()}, tmp_path / "sf.pt")
    ckpt = torch.load(tmp_path / "sf.pt", weights_only=True)
    resumed = make_model(seed=123)
    resumed.load_state_dict(ckpt["model"])
    opt2 = LayerwiseOptimizer(adamw_groups(resumed), schedule_free)
    opt2.load_state_dict(ckpt["optimizer"])
    opt2.train()
    train_layerwise(resumed, opt2, batches[2:])
    assert max_param_diff(lw, resumed) < 1e-6

    whole_opt.eval()
    opt.eval()
    assert opt.param_groups[0]["train_mode"] is False
    assert max_param_diff(whole, lw) < 1e-5


# ------------------------------------------------------------------------------------------- 4. frozen


def test_frozen_params_get_no_optimizer_no_hook_and_stay_put() -> None:
    model = make_model()
    frozen = [model.model.embed_tokens.weight, model.model.layers[0].input_layernorm.weight]
    for p in frozen:
        p.requires_grad_(False)
    before = [p.detach().clone() for p in frozen]
    opt = LayerwiseOptimizer(adamw_groups(model), adamw)

    for p in frozen:
        assert p not in opt.inner_optimizers
        assert hooks_of(p) == 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p in opt.inner_optimizers and hooks_of(p) == 1 for p in trainable)
    assert f"params={len(trainable)}, frozen={len(frozen)}" in repr(opt)

    initial = snapshot(model)
    train_layerwise(model, opt, make_batches(2))
    assert all(torch.equal(p, b) for p, b in zip(frozen, before, strict=True))
    assert not unchanged(model, initial)
    index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
    assert not {index[id(p)] for p in frozen} & set(opt.state_dict()["state"])


# ------------------------------------------------------------------------------------------- 5. lifetime


def test_hooks_die_with_the_optimizer() -> None:
    model = make_model()
    opt = LayerwiseOptimizer(adamw_groups(model), adamw)
    train_layerwise(model, opt, make_batches(1))
    with pytest.raises(TypeError):
        copy.deepcopy(opt)
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    assert ref() is None
    assert all(hooks_of(p) == 0 for p in model.parameters())

    before = snapshot(model)
    loss_of(model, make_batches(1, seed=7)[0]).backward()
    assert unchanged(model, before)
    model.zero_grad()

    # A second optimizer on the same model is the only one stepping: lr=0 leaves the weights alone.
    opt2 = LayerwiseOptimizer(adamw_groups(model, lr=0.0), adamw)
    assert all(hooks_of(p) == 1 for p in model.parameters())
    train_layerwise(model, opt2, make_batches(2))
    assert unchanged(model, before)


def test_second_live_optimizer_on_same_params_is_refused() -> None:
    model = make_model()
    first = LayerwiseOptimizer(adamw_groups(model), adamw)
    with pytest.raises(ValueError, match="another live LayerwiseOptimizer"):
        LayerwiseOptimizer(adamw_groups(model), adamw)
    assert all(hooks_of(p) == 1 for p in model.parameters())
    first.remove_hooks()
    second = LayerwiseOptimizer(adamw_groups(model), adamw)
    assert all(hooks_of(p) == 1 for p in model.parameters())
    assert len(second.inner_optimizers) == len(list(model.parameters()))


def test_remove_hooks_then_step_applies_pending_grads() -> None:
    model = make_model()
    opt = LayerwiseOptimizer(adamw_groups(model), adamw)
    opt.remove_hooks()
    assert all(hooks_of(p) == 0 for p in model.parameters())
    assert "hooks=removed" in repr(opt)

    before = snapshot(model)
    loss_of(model, make_batches(1)[0]).backward()
    assert unchanged(model, before)
    opt.step()
    assert not unchanged(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_failing_factory_leaves_no_hooks() -> None:
    model = make_model()
    calls = 0

    def failing(groups: Groups) -> torch.optim.Optimizer:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("boom")
        return adamw(groups)

    # The kept exception's traceback keeps the half-built optimizer alive: its finalizer must not be what
    # cleans up, nothing may have been installed in the first place.
    with pytest.raises(RuntimeError, match="boom") as failed:
        LayerwiseOptimizer(adamw_groups(model), failing)
    assert calls == 5
    assert all(hooks_of(p) == 0 for p in model.parameters())

    everything = list(model.parameters())
    with pytest.raises(ValueError, match="exactly the given parameter") as rejected:
        LayerwiseOptimizer(adamw_groups(model), lambda groups: adamw([{**groups[0], "params": everything}]))
    assert all(hooks_of(p) == 0 for p in model.parameters())
    del failed, rejected


def test_add_param_group_after_construction() -> None:
    batches = make_batches(STEPS)
    whole, lw = make_model(), make_model()
    train_whole(whole, adamw(adamw_groups(whole)), batches)

    groups = adamw_groups(lw)
    head = lw.lm_head.weight
    groups[0]["params"] = [p for p in groups[0]["params"] if p is not head]
    opt = LayerwiseOptimizer(groups, adamw)
    assert head not in opt.inner_optimizers
    opt.add_param_group({"params": [head], "lr": LR, "weight_decay": 0.1})
    assert hooks_of(head) == 1
    train_layerwise(lw, opt, batches)

    # Same updates, only the parameter order in the groups differs.
    assert max((whole.get_parameter(n) - p).abs().max().item() for n, p in lw.named_parameters()) < 1e-5


# ------------------------------------------------------------------------------------------- 6. grad norm


@pytest.mark.parametrize("ga", [1, 2])
def test_last_grad_norm_matches_whole_model_total_norm(ga: int) -> None:
    batches = make_batches(STEPS * ga)
    whole_norms: list[torch.Tensor] = []
    lw_norms: list[torch.Tensor] = []
    whole, lw = make_model(), make_model()
    train_whole(whole, adamw(adamw_groups(whole)), batches, ga=ga, norms=whole_norms)
    train_layerwise(lw, LayerwiseOptimizer(adamw_groups(lw), adamw), batches, ga=ga, norms=lw_norms)

    assert len(lw_norms) == STEPS
    for expected, got in zip(whole_norms, lw_norms, strict=True):
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
        assert got.item() > 0
