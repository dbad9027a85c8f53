"""One test per optimizer bug reproduced in transformers 5.23's Trainer; each fails on that behaviour.

docs/migrating.md lists them. Several overlap deeper tests elsewhere; this file is the checklist.
"""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from optim_registry import OptimTrainer, create_optimizer, get_optimizer_cls_and_kwargs
from optim_registry.testing import TokenDataset, check_optimizer, max_param_diff, run, tiny_model
from optim_registry.testing import arguments as args

LOW_RANK = "rank=4,update_proj_gap=2"


# 1 ---------------------------------------------------------------------------------------------------
def test_layerwise_learning_rates_follow_the_schedule(tmp_path):
    finals = {}
    for schedule in ("constant", "linear", "cosine"):
        trainer = run("galore_adamw_layerwise", str(tmp_path / schedule), LOW_RANK, max_steps=4,
                      max_grad_norm=0.0, lr_scheduler_type=schedule, warmup_steps=1)
        finals[schedule] = trainer.model
    assert max_param_diff(finals["constant"], finals["linear"]) > 1e-5
    assert max_param_diff(finals["linear"], finals["cosine"]) > 1e-7


# 2 ---------------------------------------------------------------------------------------------------
@pytest.mark.harness("galore_adamw_layerwise")
def test_layerwise_checkpoint_holds_optimizer_state_and_resumes_exactly(tmp_path):
    report = check_optimizer("galore_adamw_layerwise", LOW_RANK, workdir=str(tmp_path))
    assert report.ok, report.failures
    run("galore_adamw_layerwise", str(tmp_path / "c"), LOW_RANK, max_steps=2, max_grad_norm=0.0,
        save_strategy="steps", save_steps=2)
    state = torch.load(tmp_path / "c" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert len(state["state"]) > 0


# 3 ---------------------------------------------------------------------------------------------------
def test_layerwise_and_lomo_honour_clipping_and_log_a_real_grad_norm(tmp_path):
    with pytest.raises(ValueError, match="global-norm clipping"):
        args("galore_adamw_layerwise", max_grad_norm=2.0, optim_target_modules=["attn"])
    layer = run("adamw_torch_layerwise", str(tmp_path / "l"), None, max_steps=2, max_grad_norm=0.0)
    lomo = run("lomo", str(tmp_path / "lomo"), None, max_steps=2, max_grad_norm=1.0)
    for trainer in (layer, lomo):
        norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
        assert norms and all(n > 0 for n in norms), norms


# 4 ---------------------------------------------------------------------------------------------------
def test_layerwise_hooks_live_only_as_long_as_their_optimizer(tmp_path):
    model = tiny_model()
    trainer = run("adamw_torch_layerwise", str(tmp_path / "a"), None, model=model, max_steps=1, max_grad_norm=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = TokenDataset()[0]
    model(input_ids=batch["input_ids"][None], labels=batch["labels"][None]).loss.backward()
    model.zero_grad(set_to_none=True)
    run("adamw_torch_layerwise", str(tmp_path / "b"), None, model=model, max_steps=1, max_grad_norm=0.0,
        learning_rate=0.0)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    del trainer
    gc.collect()
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters())


# 5 ---------------------------------------------------------------------------------------------------
def test_galore_adafactor_layerwise_builds_and_trains(tmp_path):
    report = check_optimizer("galore_adafactor_layerwise", LOW_RANK, workdir=str(tmp_path), resume=False)
    assert report.ok, report.failures


# 6 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["galore_adamw", "apollo_adamw"])
def test_galore_and_apollo_checkpoints_resume_with_weights_only(name, tmp_path):
    report = check_optimizer(name, LOW_RANK, workdir=str(tmp_path))
    assert report.checks["state_round_trip"] and report.checks["exact_resume"], report.failures


# 7 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["galore_adamw", "apollo_adamw"])
def test_galore_and_apollo_keep_weight_decay_betas_and_eps(name):
    a = args(name, weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-7,
             optim_target_modules=["attn", "mlp"])
    cls, kwargs = get_optimizer_cls_and_kwargs(a, tiny_model())
    assert kwargs["betas"] == (0.8, 0.95) and kwargs["eps"] == 1e-7
    decays = {g["weight_decay"] for g in kwargs["params"]}
    assert decays == {0.0, 0.1}
    targeted = [g for g in kwargs["params"] if "rank" in g]
    assert targeted and all(g["weight_decay"] == 0.1 for g in targeted)


# 8 ---------------------------------------------------------------------------------------------------
def test_stable_adamw_reads_booleans_as_booleans(tmp_path):
    _, kwargs = get_optimizer_cls_and_kwargs(args("stable_adamw", optim_args="decouple_lr=False,kahan_sum=False"))
    assert kwargs["decouple_lr"] is False and kwargs["kahan_sum"] is False
    off = run("stable_adamw", str(tmp_path / "off"), "decouple_lr=False", max_steps=3)
    on = run("stable_adamw", str(tmp_path / "on"), "decouple_lr=True", max_steps=3)
    assert max_param_diff(off.model, on.model) > 1e-6


# 9 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, match",
    [
        ("betas=0.9,0.99", r"token '0.99' has no '='"),
        ("momentum=0.9=1", r"'momentum': '0.9=1' is not a valid number"),
        ("momentun=0.9", r"Did you mean 'momentum'"),
        ("rnak=4", r"'rnak' is not accepted"),
    ],
)
def test_optim_args_mistakes_are_named_when_arguments_are_created(raw, match):
    with pytest.raises(ValueError, match=match):
        args("sgd" if "rnak" not in raw else "galore_adamw", optim_args=raw, optim_target_modules=["attn"])


def test_optim_args_trailing_comma_and_spaces_in_values():
    _, kwargs = get_optimizer_cls_and_kwargs(args("sgd", optim_args=" momentum = 0.9 , nesterov=true ,"))
    assert kwargs["momentum"] == 0.9 and kwargs["nesterov"] is True
    from optim_registry.optim_args import split_pairs

    assert split_pairs("name=hello world") == [("name", "hello world")]


# 10 --------------------------------------------------------------------------------------------------
def test_numbers_passed_as_strings_are_typed():
    _, kwargs = get_optimizer_cls_and_kwargs(args("adamw_torch_8bit", optim_args="block_size=128"))
    assert kwargs["block_size"] == 128 and isinstance(kwargs["block_size"], int)
    _, kwargs = get_optimizer_cls_and_kwargs(
        args("rmsprop_bnb", optim_args="alpha=0.9,momentum=0,eps=1e-6,centered=False"))
    assert kwargs["alpha"] == 0.9 and kwargs["eps"] == 1e-6 and isinstance(kwargs["alpha"], float)
    assert kwargs["centered"] is False


# 11 --------------------------------------------------------------------------------------------------
def test_schedule_free_warmup_ratio_becomes_steps_and_is_not_doubled(tmp_path):
    trainer = run("schedule_free_adamw", str(tmp_path), None, max_steps=20, warmup_steps=0.1,
                  lr_scheduler_type="linear")
    inner = trainer.optimizer.optimizer
    assert inner.param_groups[0]["warmup_steps"] == 2
    # the Trainer's schedule has no warm-up of its own on top
    assert trainer.lr_scheduler.lr_lambdas[0](0) == 1.0


# 12 --------------------------------------------------------------------------------------------------
class _CountingStr(str):
    comparisons = 0

    def __eq__(self, other):
        _CountingStr.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


class _Wide(nn.Module):
    """Many small parameter tensors whose names count how often they are compared."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(n))

    def named_parameters(self, *a, **k):
        for name, p in super().named_parameters(*a, **k):
            yield _CountingStr(name), p


def _comparisons(build) -> int:
    _CountingStr.comparisons = 0
    build()
    return _CountingStr.comparisons


def test_optimizer_construction_is_linear_in_parameter_tensors(tmp_path):
    import transformers

    a = args("adamw_torch", output_dir=str(tmp_path))
    counts = {}
    for n in (400, 800):
        model = _Wide(n)
        counts[n] = (
            _comparisons(lambda m=model: create_optimizer(a, m)),
            _comparisons(lambda m=model: OptimTrainer(model=m, args=a).create_optimizer()),
            _comparisons(lambda m=model: transformers.Trainer(model=m, args=a).create_optimizer()),
        )
    ours, trainer, stock = zip(counts[400], counts[800])
    assert ours[1] <= 2 * ours[0] + 10 and ours[0] <= 4 * 800
    assert trainer[1] <= 2 * trainer[0] + 10
    assert stock[1] >= 3.5 * stock[0]  # the stock Trainer is quadratic: the behaviour this guards


# 13 --------------------------------------------------------------------------------------------------
def test_schedule_free_saved_model_holds_eval_weights(tmp_path):
    from safetensors.torch import load_file

    trainer = run("schedule_free_adamw", str(tmp_path), None, max_steps=3, save_strategy="steps", save_steps=3)
    saved = load_file(str(tmp_path / "checkpoint-3" / "model.safetensors"))
    inner = trainer.optimizer.optimizer
    inner.eval()
    eval_weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    inner.train()
    train_weights = dict(trainer.model.named_parameters())
    name = "model.layers.0.self_attn.q_proj.weight"
    # eval -> train -> eval is exact only to rounding (~2e-10); eval and train weights differ by ~1e-3
    assert (saved[name] - eval_weights[name]).abs().max() < 1e-6
    assert not torch.equal(saved[name], train_weights[name].detach())


# 14 --------------------------------------------------------------------------------------------------
def test_galore_adamw_8bit_keeps_embedding_state_32bit(tmp_path):
    # bitsandbytes keeps tensors under 4096 elements in 32 bits anyway: a 512-token vocabulary makes
    # both the embedding and the head large enough for 8-bit state.
    trainer = run("galore_adamw_8bit", str(tmp_path), LOW_RANK, max_steps=1, model=tiny_model(vocab_size=512))
    opt = trainer.optimizer.optimizer
    embed = trainer.model.model.embed_tokens.weight
    head = trainer.model.lm_head.weight
    assert opt.state[embed]["state1"].dtype == torch.float32
    assert opt.state[head]["state1"].dtype == torch.uint8


# refused when the arguments are created -------------------------------------------------------------------
@pytest.mark.parametrize(
    "optim, extra, match",
    [
        ("lomo", {"gradient_accumulation_steps": 2}, "gradient accumulation cannot work"),
        ("adamw_torch_layerwise", {"max_grad_norm": 2.0}, "global-norm clipping"),
        ("adamw_torch", {"lr_scheduler_type": "greedy"}, "eval"),
        ("t_gpu_only", {}, "needs a CUDA GPU"),
    ],
)
def test_impossible_combinations_are_refused_when_arguments_are_created(optim, extra, match):
    from optim_registry import register_optimizer, unregister_optimizer
    from optim_registry.registry import optimizers

    gpu_only = optimizers.get("adamw_torch").variant(name="t_gpu_only", needs_gpu="a CUDA kernel")
    register_optimizer("t_gpu_only", gpu_only)
    try:
        with pytest.raises(ValueError, match=match):
            args(optim, **extra)
    finally:
        unregister_optimizer("t_gpu_only")
