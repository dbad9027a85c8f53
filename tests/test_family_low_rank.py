"""GaLore, APOLLO, APOLLO-Mini and Q-GaLore: conformance, exact resume across a projector refresh, layer-wise
equivalence, parity with transformers 5.23, and the transformers bugs the registry fixes."""

from __future__ import annotations

import pytest
import torch
import transformers

from optim_registry import create_optimizer, get_optimizer_cls_and_kwargs
from optim_registry.listing import layerwise_twin
from optim_registry.testing import (
    DEFAULT_TARGETS,
    arguments,
    check_optimizer,
    max_param_diff,
    run,
    state_round_trip,
)
from optim_registry.testing import tiny_model as make_model

# Small ranks and a gap of 2: with 4 steps saved at 2, the projection is refreshed right after the checkpoint.
SMALL = "rank=4,update_proj_gap=2"
Q_SMALL = SMALL + ",proj_group_size=4,min_8bit_size=16"
CPU_NAMES = ["galore_adamw", "galore_adamw_8bit", "galore_adafactor", "apollo_adamw", "apollo_mini"]


def args(optim, **kw):
    kw.setdefault("optim_target_modules", DEFAULT_TARGETS)
    if optim.endswith("_layerwise"):
        kw.setdefault("max_grad_norm", 0.0)
    return arguments(optim, **kw)


def hf_args(optim, **kw):
    return transformers.TrainingArguments(
        output_dir="unused", optim=optim, report_to=[], use_cpu=True, optim_target_modules=DEFAULT_TARGETS, **kw
    )


def train_one_step(optimizer, model):
    batch = torch.arange(16).unsqueeze(0) % 32
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


# -------------------------------------------------------------------------------- conformance and resume


@pytest.mark.harness
@pytest.mark.parametrize("name", CPU_NAMES + [layerwise_twin(n) for n in CPU_NAMES])
def test_conformance_and_exact_resume_across_a_projector_refresh(name, tmp_path):
    optim_args = SMALL + (",min_8bit_size=16" if "8bit" in name else "")  # exercise the 8-bit state
    report = check_optimizer(name, optim_args, workdir=str(tmp_path))
    assert report.ok, report.failures
    assert report.figures["resume_max_diff"] < 1e-6


@pytest.mark.parametrize("name", ["q_galore_adamw8bit", "q_galore_adamw8bit_layerwise"])
def test_q_galore_trains_bf16_and_resumes_exactly(name, tmp_path):
    model = make_model().to(torch.bfloat16)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    straight = run(name, str(tmp_path / "s"), Q_SMALL, model=model, save_strategy="steps", save_steps=2)
    losses = [h["loss"] for h in straight.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert all(not torch.equal(p, start[n]) for n, p in model.named_parameters())
    ok, why = state_round_trip(straight.optimizer)
    assert ok, why
    resumed = run(name, str(tmp_path / "r"), Q_SMALL, model=make_model().to(torch.bfloat16),
                  resume=str(tmp_path / "s" / "checkpoint-2"))
    assert max_param_diff(straight.model, resumed.model) < 1e-6


def test_q_galore_projection_is_quantised_and_state_is_8bit():
    model = make_model().to(torch.bfloat16)
    optimizer = create_optimizer(args("q_galore_adamw8bit", optim_args=Q_SMALL), model)
    train_one_step(optimizer, model)
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    state = optimizer.state_dict()["state"][_index_of(optimizer, q_proj)]
    assert state["projector"]["attrs"]["ortho_matrix"].dtype == torch.uint8
    assert state["__bnb_optimizer_quant_state__"]["state1"].dtype == torch.uint8


def _index_of(optimizer, param):
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    return next(i for i, p in enumerate(flat) if p is param)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_layerwise_equals_whole_model(accumulation, tmp_path):
    common = dict(gradient_accumulation_steps=accumulation, per_device_train_batch_size=4)
    whole = run("galore_adamw", str(tmp_path / "w"), SMALL, max_grad_norm=0.0, **common)
    layerwise = run("galore_adamw_layerwise", str(tmp_path / "l"), SMALL, **common)
    assert max_param_diff(whole.model, make_model()) > 1e-3  # it trained
    assert max_param_diff(whole.model, layerwise.model) < 1e-5


# -------------------------------------------------------------------------------- the transformers bugs


def _check_hparams(optimizer, model):
    """betas/eps from TrainingArguments in every group; the weight-decay split in targeted and other groups."""
    from optim_registry.labels import decay_parameter_names

    decay = {id(p) for n, p in model.named_parameters() if n in decay_parameter_names(model)}
    seen = set()
    for group in optimizer.param_groups:
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-7
        for p in group["params"]:
            assert group["weight_decay"] == (0.1 if id(p) in decay else 0.0)
        seen.add(("rank" in group, group["weight_decay"]))
    assert {(True, 0.1), (False, 0.1), (False, 0.0)} <= seen


@pytest.mark.parametrize("name", ["galore_adamw", "galore_adamw_8bit", "apollo_adamw"])
def test_weight_decay_betas_and_eps_are_passed(name):
    model = make_model()
    hp = dict(weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-7)
    _check_hparams(create_optimizer(args(name, optim_args="rank=4", **hp), model), model)
    # transformers 5.23 drops them (GaLore: library defaults; APOLLO: only the targeted group gets betas/eps).
    cls, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(hf_args(name, optim_args="rank=4", **hp),
                                                                    model)
    with pytest.raises(AssertionError):
        _check_hparams(cls(kwargs.pop("params"), **kwargs), model)


def test_galore_adafactor_layerwise_builds_with_a_manual_lr():
    model = make_model()
    with pytest.raises(ValueError, match="Cannot combine manual `lr` and `relative_step=True`"):
        transformers.Trainer.get_optimizer_cls_and_kwargs(hf_args("galore_adafactor_layerwise"), make_model())
    optimizer = create_optimizer(args("galore_adafactor_layerwise", optim_args=SMALL), model)
    inner = next(iter(optimizer.inner_optimizers.values()))
    assert inner.defaults["relative_step"] is False and inner.defaults["scale_parameter"] is False


@pytest.mark.parametrize("name", ["galore_adamw", "apollo_adamw"])
def test_library_state_is_refused_by_weights_only_ours_is_not(name):
    model = make_model()
    cls, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(hf_args(name, optim_args="rank=4"),
                                                                    model)
    theirs = cls(kwargs.pop("params"), **kwargs)
    train_one_step(theirs, model)
    ok, why = state_round_trip(theirs)
    assert not ok and "weights_only" in why
    ours = create_optimizer(args(name, optim_args="rank=4"), model)
    train_one_step(ours, model)
    assert state_round_trip(ours) == (True, "")


@pytest.mark.parametrize("name, optim_args", [
    ("galore_adamw", "rank=4,proj_type=full"),  # a pair of matrices
    ("galore_adamw", "rank=4,proj_type=reverse_std"),
    ("apollo_adamw", "rank=4,proj=svd"),
    ("apollo_mini", None),
])
def test_every_projector_kind_round_trips(name, optim_args):
    model = make_model()
    optimizer = create_optimizer(args(name, optim_args=optim_args), model)
    train_one_step(optimizer, model)
    assert state_round_trip(optimizer) == (True, "")
    train_one_step(optimizer, model)  # the rebuilt projectors step


def test_fp32_moments_of_bf16_weights_survive_a_reload():
    import io

    model = make_model().to(torch.bfloat16)
    optimizer = create_optimizer(args("galore_adafactor", optim_args="rank=4"), model)
    train_one_step(optimizer, model)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    fresh = create_optimizer(args("galore_adafactor", optim_args="rank=4"), model)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    state = fresh.state[q_proj]
    assert state["exp_avg_sq_row"].dtype == torch.float32  # torch's loader would make it bf16
    assert state["projector"].ortho_matrix.dtype == torch.float32
    assert torch.equal(state["exp_avg_sq_row"], optimizer.state[q_proj]["exp_avg_sq_row"])
    train_one_step(fresh, model)


def test_galore_adamw_8bit_runs_on_cpu_with_32bit_embeddings():
    model = make_model()
    cls, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(hf_args("galore_adamw_8bit"), model)
    theirs = cls(kwargs.pop("params"), **kwargs)
    with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        train_one_step(theirs, model)
    model = make_model()
    ours = create_optimizer(args("galore_adamw_8bit", optim_args=SMALL + ",min_8bit_size=16"), model)
    train_one_step(ours, model)
    assert ours.state[model.model.embed_tokens.weight]["state1"].dtype == torch.float32
    assert ours.state[model.lm_head.weight]["state1"].dtype == torch.uint8


# -------------------------------------------------------------------------------- parity and options


PARITY = ["galore_adamw", "galore_adamw_8bit", "galore_adafactor", "apollo_adamw", "galore_adamw_layerwise",
          "galore_adamw_8bit_layerwise", "apollo_adamw_layerwise"]


@pytest.mark.parametrize("name", PARITY)
def test_parity_with_transformers(name):
    optim_args = "rank=4,update_proj_gap=7,scale=0.5" + (",proj=svd,scale_type=tensor" if "apollo" in name else "")
    hf_model, model = make_model(), make_model()  # transformers' layer-wise path hooks the model it is given
    hf_cls, hf_kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(hf_args(name, optim_args=optim_args),
                                                                          hf_model)
    cls, kwargs = get_optimizer_cls_and_kwargs(args(name, optim_args=optim_args), model)
    if name.endswith("_layerwise"):
        hf_cls = type(next(iter(hf_kwargs.pop("optimizer_dict").values())))
        cls, kwargs = kwargs["inner"], {**kwargs["inner_kwargs"], "params": kwargs["params"]}
    assert issubclass(cls, hf_cls) and cls is not hf_cls  # ours: the checkpointable subclass
    assert kwargs["lr"] == hf_kwargs["lr"]
    for key in ("scale_parameter", "relative_step"):
        assert kwargs.get(key) == hf_kwargs.get(key)
    hf_names, names = _names(hf_model), _names(model)
    hf_target = next(g for g in hf_kwargs["params"] if "rank" in g)
    targets = [g for g in kwargs["params"] if "rank" in g]
    assert {hf_names[id(p)] for p in hf_target["params"]} == {names[id(p)] for g in targets for p in g["params"]}
    for key, value in hf_target.items():
        if key in ("betas", "eps"):  # APOLLO: transformers sets them on the targeted group only; ours everywhere
            assert kwargs[key] == value
        elif key != "params":
            assert all(g[key] == value for g in targets), key
    assert sum(len(g["params"]) for g in kwargs["params"]) == sum(len(g["params"]) for g in hf_kwargs["params"])


def _names(model):
    return {id(p): n for n, p in model.named_parameters()}


def test_apollo_mini_group_keys():
    model = make_model()
    optimizer = create_optimizer(args("apollo_mini"), model)
    (target,) = [g for g in optimizer.param_groups if "rank" in g]
    assert (target["rank"], target["scale"], target["scale_type"], target["proj"]) == (1, 128.0, "tensor", "random")
    assert all(p.dim() == 2 for p in target["params"])


def test_documented_defaults():
    model = make_model().to(torch.bfloat16)  # Q-GaLore needs bf16 weights
    groups = {}
    for name in ("galore_adamw", "apollo_adamw", "q_galore_adamw8bit"):
        optim_args = "proj_group_size=-1" if name.startswith("q_") else None
        _, kwargs = get_optimizer_cls_and_kwargs(args(name, optim_args=optim_args), model)
        groups[name] = next(g for g in kwargs["params"] if "rank" in g)
    assert {k: groups["galore_adamw"][k] for k in ("rank", "update_proj_gap", "scale", "proj_type")} == {
        "rank": 128, "update_proj_gap": 200, "scale": 0.25, "proj_type": "std"}
    assert {k: groups["apollo_adamw"][k] for k in ("rank", "update_proj_gap", "scale", "scale_type", "proj")} == {
        "rank": 256, "update_proj_gap": 200, "scale": 1.0, "scale_type": "channel", "proj": "random"}
    q = groups["q_galore_adamw8bit"]
    assert (q["rank"], q["quant"], q["quant_n_bit"], q["cos_threshold"], q["gamma_proj"], q["queue_size"]) == (
        256, True, 4, 0.4, 2, 5)


# -------------------------------------------------------------------------------- errors up front


def test_target_modules_matching_nothing_names_patterns_and_modules():
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"no_such_module.*matches no nn\.Linear.*q_proj"):
        create_optimizer(args("galore_adamw_layerwise", optim_target_modules=[r".*no_such_module.*"]), model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())


@pytest.mark.parametrize(
    "prepare, optim_args, match",
    [
        (lambda m: m, "proj_group_size=4", r"needs bf16 weights.*float32.*torch\.bfloat16"),
        (lambda m: m.to(torch.bfloat16), "rank=4,proj_group_size=16", r"proj_group_size=16.*k_proj.*proj_group_size=4"),
        (lambda m: setattr(m, "peft_config", {"default": None}) or m.to(torch.bfloat16), "proj_group_size=-1",
         r"LoRA/PEFT adapters"),
        (lambda m: setattr(m, "is_loaded_in_8bit", True) or m.to(torch.bfloat16), "proj_group_size=-1",
         r"4/8-bit"),
    ],
)
def test_q_galore_refuses_what_cannot_work(prepare, optim_args, match):
    model = make_model()
    with pytest.raises(ValueError, match=match):
        get_optimizer_cls_and_kwargs(args("q_galore_adamw8bit", optim_args=optim_args), prepare(model))


def test_bad_low_rank_options_raise_at_arguments_creation():
    with pytest.raises(ValueError, match="proj_type"):
        args("q_galore_adamw8bit", optim_args="proj_type=left")
    with pytest.raises(ValueError, match="scale_type"):
        args("apollo_adamw", optim_args="scale_type=row")
    with pytest.raises(ValueError, match="scale_type=channel.*proj_type=std"):
        get_optimizer_cls_and_kwargs(args("apollo_adamw", optim_args="proj_type=left"), make_model())
    with pytest.raises(ValueError, match="rank=0"):
        get_optimizer_cls_and_kwargs(args("galore_adamw", optim_args="rank=0"), make_model())
