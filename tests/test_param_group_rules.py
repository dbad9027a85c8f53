"""optim_groups: the rule language, its composition with every family, the errors, LoRA+ and layer decay."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import pytest
import torch

from optim_registry import TrainingArguments, create_optimizer, create_scheduler
from optim_registry.testing import arguments, tiny_model

LR = 1e-3


def args(optim: str = "adamw_torch", groups=None, **kw):
    kw.setdefault("learning_rate", LR)
    kw.setdefault("use_cpu", False)
    return arguments(optim, kw.pop("output_dir", "out"), optim_groups=groups, **kw)


def names_of(model):
    return {id(p): n for n, p in model.named_parameters()}


def rates(model, optimizer):
    """Parameter name -> (lr, weight_decay) of the group holding it."""
    names = names_of(model)
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def batch(seed: int = 0, vocab: int = 32):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (4, 12), generator=g)
    return {"input_ids": ids, "labels": ids}


def train(model, optimizer, steps: int = 3, scheduler=None, vocab: int = 32):
    if callable(getattr(optimizer, "train", None)):
        optimizer.train()
    for i in range(steps):
        model(**batch(i, vocab)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_all_moved(model, before):
    still = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p.detach(), before[n])]
    assert not still, f"parameters that did not move: {still}"


# ------------------------------------------------------------------------------------ the language


def test_later_rules_win_scales_multiply_and_equal_settings_share_a_group(tiny_model):
    rules = [
        {"params": "self_attn", "lr": 1e-2},
        {"params": r"layers\.0\.", "lr_scale": 0.5},
        {"params": "q_proj", "lr": 2e-2, "weight_decay": 0.3},
        {"params": ["q_proj", "k_proj"], "lr_scale": 2.0},
    ]
    opt = create_optimizer(args(groups=rules, weight_decay=0.1), tiny_model)
    r = rates(tiny_model, opt)
    assert r["model.layers.0.self_attn.q_proj.weight"] == pytest.approx((2e-2 * 0.5 * 2.0, 0.3))
    assert r["model.layers.1.self_attn.q_proj.weight"] == pytest.approx((2e-2 * 2.0, 0.3))
    assert r["model.layers.0.self_attn.k_proj.weight"] == pytest.approx((1e-2 * 0.5 * 2.0, 0.1))
    assert r["model.layers.1.self_attn.v_proj.weight"] == pytest.approx((1e-2, 0.1))
    assert r["model.layers.0.mlp.up_proj.weight"] == pytest.approx((LR * 0.5, 0.1))
    assert r["lm_head.weight"] == pytest.approx((LR, 0.1))
    assert r["model.norm.weight"] == pytest.approx((LR, 0.0))
    # one group per distinct setting, and every parameter exactly once
    keys = [(g["lr"], g["weight_decay"]) for g in opt.param_groups]
    assert len(keys) == len(set(keys))
    total = sum(len(g["params"]) for g in opt.param_groups)
    assert total == len([p for p in tiny_model.parameters() if p.requires_grad])


def test_named_sets_select_what_they_say(tiny_model):
    rules = [
        {"params": "@embeddings", "lr": 1.0},
        {"params": "@head", "lr": 2.0},
        {"params": "@norms", "lr": 3.0},
        {"params": "@no_decay", "weight_decay": 0.5},
    ]
    opt = create_optimizer(args(groups=rules, weight_decay=0.1), tiny_model)
    r = rates(tiny_model, opt)
    assert r["model.embed_tokens.weight"] == (1.0, 0.1)
    assert r["lm_head.weight"] == (2.0, 0.1)
    norms = [n for n in r if "norm" in n]
    assert len(norms) == 5 and all(r[n] == (3.0, 0.5) for n in norms)
    assert r["model.layers.0.mlp.down_proj.weight"] == (LR, 0.1)


def test_biases_set_and_json_string_rules():
    model = tiny_model()
    for layer in model.model.layers:  # give the attention projections biases, as Qwen2 has
        layer.self_attn.q_proj.bias = torch.nn.Parameter(torch.zeros(layer.self_attn.q_proj.out_features))
    rules = json.dumps([{"params": "@biases", "lr": 5e-3, "weight_decay": 0.0}])
    a = args(groups=rules, weight_decay=0.1)
    assert a.optim_groups == rules and json.loads(a.to_json_string())["optim_groups"] == rules
    r = rates(model, create_optimizer(a, model))
    assert r["model.layers.1.self_attn.q_proj.bias"] == (5e-3, 0.0)
    assert r["model.layers.1.self_attn.q_proj.weight"] == (LR, 0.1)


def test_per_group_options_the_record_declares(tiny_model):
    opt = create_optimizer(args(groups=[{"params": "@norms", "betas": [0.5, 0.6], "eps": 1e-6}]), tiny_model)
    names = names_of(tiny_model)
    for g in opt.param_groups:
        is_norm = all("norm" in names[id(p)] for p in g["params"])
        assert g["betas"] == ((0.5, 0.6) if is_norm else (0.9, 0.999))
    sgd = create_optimizer(args("sgd", [{"params": "mlp", "momentum": 0.9, "nesterov": True}]), tiny_model)
    assert {(g["momentum"], g["nesterov"]) for g in sgd.param_groups} == {(0.9, True), (0.0, False)}


def test_field_serialises_and_is_on_mixin_subclasses():
    rules = [{"loraplus_lr_ratio": 16}, {"params": "@embeddings", "lr": 1e-5}]
    a = args(groups=rules)
    assert a.to_dict()["optim_groups"] == rules
    assert json.loads(a.to_json_string())["optim_groups"] == rules
    assert "optim_groups" in {f.name for f in dataclasses.fields(a)}

    import trl

    from optim_registry import RegistryArgumentsMixin

    @dataclasses.dataclass
    class SFTConfig(RegistryArgumentsMixin, trl.SFTConfig):
        pass

    cfg = SFTConfig("out", optim="muon", optim_groups=rules[1:], report_to=[], bf16=False)
    assert cfg.optim_groups == rules[1:] and cfg.to_dict()["optim_groups"] == rules[1:]
    with pytest.raises(ValueError, match="lr_scal"):
        SFTConfig("out", optim="muon", optim_groups=[{"lr_scal": 2}], report_to=[], bf16=False)


def test_hf_argument_parser_takes_the_json_string():
    from transformers import HfArgumentParser

    text = '[{"params": "lora_B", "lr_scale": 16}]'
    (parsed,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", "o", "--optim_groups", text, "--report_to", "none"]
    )
    assert parsed.optim_groups == text


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        ("[{not json", "not JSON"),
        ({"params": "x", "lr": 1}, "list of rules"),
        (42, "list of rules"),
        (["lora_B"], "must be a mapping"),
        ([{}], "is empty"),
        ([{"params": "x", "lr_scal": 2}], r"'lr_scal' is not accepted.*Did you mean 'lr_scale'.*Accepted keys: params, lr"),
        ([{"params": "x", "momentum": 0.9}], r"'momentum' is not accepted for optim='adamw_torch'"),
        ([{"params": "x", "lr": "fast"}], r"key 'lr': 'fast' is not a valid number"),
        ([{"params": "x", "lr": -1e-3}], r"lr=-0.001 is out of range \(key 'lr', valid range >= 0\)"),
        ([{"params": "x", "weight_decay": float("nan")}], r"'weight_decay'.*not a finite number"),
        ([{"params": "x", "lr": True}], "takes a number"),
        ([{"params": "x", "betas": [0.9]}], r"'betas'.*it takes 2 numbers"),
        ([{"params": "(unclosed", "lr": 1e-3}], "not a valid regex"),
        ([{"params": "@embedding", "lr": 1e-3}], r"unknown named set '@embedding'.*Did you mean '@embeddings'"),
        ([{"params": 3, "lr": 1e-3}], "'params' must be a regex string"),
        ([{"params": "x"}], "sets nothing"),
        ([{"loraplus_lr_ratio": 16, "params": "x"}], "is a rule of its own"),
        ([{"loraplus_lr_ratio": 0}], r"'loraplus_lr_ratio'.*out of range"),
        ([{"layer_decay": -0.5}], r"'layer_decay'.*out of range"),
        ([{"params": "x", "loraplus_lr_embedding": 1e-6}], "belongs to a"),
    ],
)
def test_malformed_rules_are_refused_when_the_arguments_are_created(groups, match):
    with pytest.raises(ValueError, match=match):
        args(groups=groups)


def test_rules_refused_by_lomo_with_the_way_out():
    with pytest.raises(ValueError, match=r"optim='lomo'.*optim_groups rules cannot apply.*adamw_torch"):
        args("lomo", [{"params": "mlp", "lr": 1e-4}])


@pytest.mark.parametrize("optim", ["adamw_torch", "muon", "adamw_torch_layerwise"])
def test_rule_matching_nothing_is_refused_at_build_before_the_model_is_touched(optim):
    model = tiny_model()
    before = snapshot(model)
    hooks_before = sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters())
    a = args(optim, [{"params": "@embeddings", "lr": 1e-5}, {"params": "vision_tower", "lr": 1e-5}], max_grad_norm=0)
    with pytest.raises(ValueError, match=r"rule 1 \{'params': 'vision_tower'.*matches no trainable parameter.*"
                                         r"model\.embed_tokens\.weight.*self_attn"):
        create_optimizer(a, model)
    after = sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters())
    assert after == hooks_before
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_rule_covering_only_frozen_parameters_matches_nothing(tiny_model):
    tiny_model.model.embed_tokens.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        create_optimizer(args(groups=[{"params": "@embeddings", "lr": 1e-5}]), tiny_model)


def test_loraplus_without_lora_is_refused(tiny_model):
    with pytest.raises(ValueError, match="no trainable LoRA parameter"):
        create_optimizer(args(groups=[{"loraplus_lr_ratio": 16}]), tiny_model)


# ------------------------------------------------------------------------------------ LoRA+ and layer decay


def lora_model(**extra):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"], **extra)
    return get_peft_model(tiny_model(), config)


@pytest.mark.parametrize("embedding_lr", [None, 3e-5])
def test_loraplus_gives_every_parameter_peft_create_loraplus_optimizer_rate(embedding_lr):
    from peft.optimizers import create_loraplus_optimizer

    model = lora_model()
    # a trainable norm: peft gives 1-D parameters ratio x lr too
    model.base_model.model.model.norm.weight.requires_grad_(True)
    extra = {} if embedding_lr is None else {"loraplus_lr_embedding": embedding_lr}
    reference = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=16, **extra)
    ours = create_optimizer(args(groups=[{"loraplus_lr_ratio": 16, **extra}], weight_decay=0.0), model)
    expected, got = rates(model, reference), rates(model, ours)
    assert expected.keys() == got.keys()
    for name in expected:
        assert got[name][0] == pytest.approx(expected[name][0], rel=1e-12), name
        assert got[name][1] == expected[name][1], name
    assert {round(v[0], 12) for v in got.values()} == {LR, LR * 16, embedding_lr or 1e-6}


def test_layer_decay_follows_timm_formula(tiny_model):
    decay = 0.8
    layers = len(tiny_model.model.layers)
    opt = create_optimizer(args(groups=[{"layer_decay": decay}]), tiny_model)
    got = rates(tiny_model, opt)
    for name, (lr, _) in got.items():
        if name.startswith("model.embed_tokens"):
            layer = 0
        elif name.startswith("model.layers."):
            layer = int(name.split(".")[2]) + 1
        else:  # final norm and head: after the last block
            layer = layers + 1
        assert lr == pytest.approx(LR * decay ** (layers + 1 - layer)), name
    assert got["model.embed_tokens.weight"][0] == pytest.approx(LR * decay**3)
    assert got["lm_head.weight"][0] == pytest.approx(LR)


def test_embedding_rate_follows_cosine_schedule_in_proportion(tiny_model):
    a = args(groups=[{"params": "@embeddings", "lr": 1e-5}], lr_scheduler_type="cosine", warmup_steps=2)
    opt = create_optimizer(a, tiny_model)
    sched = create_scheduler(a, opt, num_training_steps=10)
    names = names_of(tiny_model)
    emb = next(g for g in opt.param_groups if any(names[id(p)] == "model.embed_tokens.weight" for p in g["params"]))
    rest = next(g for g in opt.param_groups if g is not emb)
    seen = []
    for step in range(10):
        tiny_model(**batch(step)).loss.backward()
        opt.step()
        opt.zero_grad()
        seen.append((emb["lr"], rest["lr"]))
        sched.step()
    factors = [r / LR for _, r in seen]
    assert len({round(f, 6) for f in factors}) > 5  # the schedule really moved
    for e, r in seen:
        assert e == pytest.approx(r * 1e-5 / LR, rel=1e-9, abs=1e-18)


# ------------------------------------------------------------------------------------ every family


RULES = [{"params": "@embeddings", "lr": 2e-4}, {"params": "mlp", "lr_scale": 0.5}, {"params": "@norms",
                                                                                       "weight_decay": 0.0}]


def _with_lr(model, optimizer):
    return {n: lr for n, (lr, _) in rates(model, optimizer).items()}


@pytest.mark.parametrize(
    ("optim", "extra"),
    [
        ("adamw_torch", {}),
        ("galore_adamw", {"optim_target_modules": ["self_attn", "mlp"], "optim_args": "rank=2,update_proj_gap=2"}),
        ("apollo_adamw", {"optim_target_modules": ["self_attn", "mlp"], "optim_args": "rank=2,update_proj_gap=2"}),
        ("lion_8bit", {}),
        ("schedule_free_adamw", {}),
        ("adamw_torch_layerwise", {"max_grad_norm": 0}),
        ("flash_adamw", {"optim_args": "quantize=false"}),
        ("po_muon", {}),
    ],
)
def test_rules_train_every_family_and_move_every_parameter(optim, extra):
    model = tiny_model()
    a = args(optim, RULES, weight_decay=0.1, lr_scheduler_type="cosine", **extra)
    opt = create_optimizer(a, model)
    lrs = _with_lr(model, opt)
    assert lrs["model.embed_tokens.weight"] == pytest.approx(2e-4)
    assert lrs["model.layers.0.mlp.up_proj.weight"] == pytest.approx(LR * 0.5)
    assert lrs["model.layers.0.self_attn.q_proj.weight"] == pytest.approx(LR)
    assert rates(model, opt)["model.norm.weight"][1] == 0.0
    if "optim_target_modules" in extra:
        names = names_of(model)
        for g in opt.param_groups:  # the targeted groups keep their projection options under the rules
            projected = {names[id(p)].endswith("proj.weight") for p in g["params"]}
            assert projected in ({True}, {False})
            assert ("rank" in g) == (True in projected)
    before = snapshot(model)
    train(model, opt, scheduler=create_scheduler(a, opt, num_training_steps=6))
    assert_all_moved(model, before)
    # every group follows the schedule from its own starting rate
    after = _with_lr(model, opt)
    factor = after["model.layers.0.self_attn.q_proj.weight"] / LR
    assert 0 < factor < 1
    assert after["model.embed_tokens.weight"] == pytest.approx(2e-4 * factor)
    assert after["model.layers.0.mlp.up_proj.weight"] == pytest.approx(LR * 0.5 * factor)


def test_muon_and_dion_apply_rules_on_both_sides():
    for optim, flag, own in (("muon", "use_muon", 0.02), ("dion", "use_dion", 0.01)):
        model = tiny_model()
        rules = [{"params": "q_proj", "lr": 5e-3}, {"params": "mlp", "lr_scale": 0.5},
                 {"params": "@embeddings", "lr": 1e-4}, {"params": "@norms", "betas": [0.8, 0.9]}]
        opt = create_optimizer(args(optim, rules, weight_decay=0.1), model)
        names = names_of(model)
        by_name = {names[id(p)]: g for g in opt.param_groups for p in g["params"]}
        assert by_name["model.layers.0.self_attn.q_proj.weight"]["lr"] == pytest.approx(5e-3)  # replaces own lr
        assert by_name["model.layers.0.self_attn.q_proj.weight"][flag] is True
        assert by_name["model.layers.0.self_attn.k_proj.weight"]["lr"] == pytest.approx(own)
        assert by_name["model.layers.0.mlp.up_proj.weight"]["lr"] == pytest.approx(own * 0.5)
        assert by_name["model.embed_tokens.weight"]["lr"] == pytest.approx(1e-4)
        assert by_name["model.embed_tokens.weight"][flag] is False
        assert by_name["lm_head.weight"]["lr"] == pytest.approx(LR)
        assert by_name["model.norm.weight"]["betas"] == (0.8, 0.9)
        before = snapshot(model)
        train(model, opt)
        assert_all_moved(model, before)


def test_muon_momentum_rule_and_own_weight_decay(tiny_model):
    a = args("muon", [{"params": "mlp", "momentum": 0.8}], weight_decay=0.1, optim_args="muon_weight_decay=0.02")
    opt = create_optimizer(a, tiny_model)
    names = names_of(tiny_model)
    for g in opt.param_groups:
        kinds = {names[id(p)] for p in g["params"]}
        if g["use_muon"]:
            assert g["weight_decay"] == 0.02
            assert g["momentum"] == (0.8 if all("mlp" in n for n in kinds) else 0.95)
        else:
            assert g["weight_decay"] in (0.1, 0.0)


def test_lion_8bit_keeps_32bit_embedding_state_under_rules():
    model = tiny_model(vocab_size=300)  # 300 x 16 embedding: above bitsandbytes' 4096-element 8-bit floor
    opt = create_optimizer(args("lion_8bit", [{"params": "@embeddings", "lr": 1e-4}]), model)
    train(model, opt, steps=1, vocab=300)
    assert opt.state[model.model.embed_tokens.weight]["state1"].dtype == torch.float32
    assert opt.state[model.lm_head.weight]["state1"].dtype == torch.uint8


def test_plugin_builder_receives_the_groups_already_split(tiny_model):
    from optim_registry import register_optimizer, unregister_optimizer

    seen = {}

    def builder(ctx):
        seen["groups"] = ctx.groups
        return torch.optim.SGD, {"lr": ctx.hparams["lr"]}  # leaves the groups to the Trainer

    register_optimizer("t_rules_builder", builder)
    register_optimizer("t_rules_class", torch.optim.Adagrad)
    try:
        for name in ("t_rules_builder", "t_rules_class"):
            model = tiny_model if name == "t_rules_builder" else __import__("optim_registry").testing.tiny_model()
            opt = create_optimizer(args(name, [{"params": "@embeddings", "lr": 0.5}]), model)
            assert _with_lr(model, opt)["model.embed_tokens.weight"] == 0.5
            before = snapshot(model)
            train(model, opt)
            assert_all_moved(model, before)
        lrs = sorted({g["lr"] for g in seen["groups"]})
        assert lrs == [LR, 0.5]
    finally:
        unregister_optimizer("t_rules_builder")
        unregister_optimizer("t_rules_class")


def test_layerwise_twin_with_rules_equals_the_whole_model_run():
    rules = [{"params": "@embeddings", "lr": 3e-3}, {"layer_decay": 0.7}, {"params": "@norms", "weight_decay": 0.0}]
    results = []
    for optim in ("adamw_torch", "adamw_torch_layerwise"):
        model = tiny_model()
        a = args(optim, rules, weight_decay=0.1, max_grad_norm=0, lr_scheduler_type="cosine")
        opt = create_optimizer(a, model)
        train(model, opt, steps=4, scheduler=create_scheduler(a, opt, num_training_steps=4))
        results.append(snapshot(model))
    whole, layerwise = results
    worst = max((whole[n] - layerwise[n]).abs().max().item() for n in whole)
    assert worst < 1e-5


@pytest.mark.parametrize("optim", ["adamw_torch", "muon", "galore_adamw"])
def test_resume_with_rules_is_exact(optim):
    extra = {"optim_target_modules": ["mlp"], "optim_args": "rank=2,update_proj_gap=2"} if optim == "galore_adamw" else {}
    rules = [{"params": "@embeddings", "lr": 2e-3}, {"params": "self_attn", "lr_scale": 0.5}]
    a = args(optim, rules, weight_decay=0.1, lr_scheduler_type="cosine", **extra)

    def run(split: int | None):
        torch.manual_seed(0)
        model = tiny_model()
        opt = create_optimizer(a, model)
        sched = create_scheduler(a, opt, num_training_steps=6)
        for step in range(6):
            if step == split:
                buf = io.BytesIO()
                torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), "model": model.state_dict()}, buf)
                buf.seek(0)
                saved = torch.load(buf, weights_only=True)
                model = tiny_model()
                model.load_state_dict(saved["model"])
                opt = create_optimizer(a, model)
                sched = create_scheduler(a, opt, num_training_steps=6)
                # the Trainer's order: build both, then load both
                opt.load_state_dict(saved["opt"])
                sched.load_state_dict(saved["sched"])
            model(**batch(step)).loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
        return snapshot(model), [g["lr"] for g in opt.param_groups]

    straight, lrs_a = run(None)
    resumed, lrs_b = run(3)
    assert lrs_a == lrs_b
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)


def test_groups_are_deterministic(tiny_model):
    a = args("muon", [{"layer_decay": 0.9}, {"params": "@no_decay", "lr_scale": 2.0}], weight_decay=0.1)
    first = create_optimizer(a, tiny_model)
    second = create_optimizer(a, tiny_model)
    from optim_registry.labels import group_layout

    layout = group_layout(first.param_groups, tiny_model)
    assert layout == group_layout(second.param_groups, tiny_model)
    assert json.loads(json.dumps(layout)) == layout  # what a checkpoint can record
    other = tiny_model.__class__(tiny_model.config)  # a fresh model of the same shape: the same layout
    assert group_layout(create_optimizer(a, other).param_groups, other) == layout
    assert math.isclose(layout[0]["lr"], first.param_groups[0]["lr"])


def test_groups_command_shows_loraplus_on_a_lora_model(capsys):
    from optim_registry.cli import main

    code = main(["groups", "--optim", "adamw_torch", "--lora", "r=8,target=q_proj,v_proj", "--learning-rate", "2e-4",
                 "--optim-groups", '[{"loraplus_lr_ratio": 16}]', "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    by_lr = {round(g["lr"], 10): g for g in data["groups"]}
    assert set(by_lr) == {2e-4, 3.2e-3}
    assert all("lora_B" in n for n in by_lr[3.2e-3]["names"])
    assert all("lora_A" in n for n in by_lr[2e-4]["names"])
    assert main(["groups", "--optim", "adamw_torch", "--optim-groups", '[{"params": "nope", "lr": 1}]']) == 2
    assert "matches no trainable parameter" in capsys.readouterr().err


def test_llama_factory_loraplus_rule():
    """LLaMA-Factory's own LoRA+ split: lora_embedding_B at the embedding rate, lora_B / 1-D at ratio x lr,
    everything else (lora_embedding_A included) at lr. Reproduced by the shorthand plus one rule."""
    model = lora_model()
    ratio, emb_lr = 8.0, 2e-5
    rules = [{"loraplus_lr_ratio": ratio, "loraplus_lr_embedding": emb_lr}, {"params": "lora_embedding_A", "lr": LR}]
    got = rates(model, create_optimizer(args(groups=rules), model))
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_embedding_B" in name:
            expected = emb_lr
        elif "lora_B" in name or p.ndim == 1:
            expected = LR * ratio
        else:
            expected = LR
        assert got[name][0] == pytest.approx(expected), name


def test_axolotl_style_rules(tiny_model):
    rules = [{"params": "@embeddings", "lr_scale": 0.1}, {"params": ["q_proj", "v_proj"], "lr": 1e-4}]
    got = rates(tiny_model, create_optimizer(args(groups=rules), tiny_model))
    assert got["model.embed_tokens.weight"][0] == pytest.approx(LR * 0.1)
    assert got["model.layers.1.self_attn.v_proj.weight"][0] == pytest.approx(1e-4)
    assert got["model.layers.1.self_attn.k_proj.weight"][0] == pytest.approx(LR)


def test_vision_tower_and_projector_recipe():
    from torch import nn

    class TinyVLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Module()
            self.model.vision_tower = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
            self.model.multi_modal_projector = nn.Linear(8, 16)
            self.language_model = tiny_model()

    model = TinyVLM()
    rules = [{"params": r"^model\.vision_tower\.", "lr": 2e-6},
             {"params": "multi_modal_projector", "lr": 1e-5, "weight_decay": 0.0}]
    got = rates(model, create_optimizer(args(groups=rules, weight_decay=0.1), model))
    assert got["model.vision_tower.0.weight"] == (2e-6, 0.1)
    assert got["model.vision_tower.1.weight"] == (2e-6, 0.0)  # a norm: no decay, as without rules
    assert got["model.multi_modal_projector.weight"] == (1e-5, 0.0)
    assert got["language_model.model.layers.0.mlp.up_proj.weight"] == (LR, 0.1)


@pytest.mark.parametrize("optim", ["adamw_torch", "muon", "adamw_torch_layerwise"])
def test_rules_through_the_trainer_train_and_resume_exactly(optim, tmp_path):
    from optim_registry.testing import check_optimizer

    report = check_optimizer(optim, workdir=str(tmp_path), optim_groups=RULES, lr_scheduler_type="cosine",
                             warmup_steps=1)
    assert report.checks.get("exact_resume") and report.checks.get("all_params_moved"), report.failures
    assert report.ok, report.failures


def test_trainer_logs_each_group_rate_and_follows_the_schedule(tmp_path):
    from optim_registry.testing import run

    trainer = run("adamw_torch", str(tmp_path), optim_groups=[{"params": "@embeddings", "lr": 1e-4}],
                  lr_scheduler_type="cosine", warmup_steps=1, max_steps=4, learning_rate=1e-2)
    logs = [h for h in trainer.state.log_history if "learning_rate/group_0" in h]
    assert len(logs) >= 3
    names = names_of(trainer.model)
    groups = trainer.optimizer.param_groups
    emb = next(i for i, g in enumerate(groups) if any(names[id(p)] == "model.embed_tokens.weight" for p in g["params"]))
    other = next(i for i in range(len(groups)) if i != emb)
    ratios = [h[f"learning_rate/group_{emb}"] / h[f"learning_rate/group_{other}"] for h in logs
              if h[f"learning_rate/group_{other}"] > 0]
    assert ratios and all(r == pytest.approx(1e-4 / 1e-2) for r in ratios)
    assert len({h[f"learning_rate/group_{other}"] for h in logs}) >= 3  # the cosine really moved


def test_a_builder_that_ignores_the_groups_is_refused(tiny_model):
    from optim_registry import register_optimizer, unregister_optimizer

    def own_groups(ctx):
        # a factory that builds from the model and never looks at ctx.groups
        return (lambda: lambda model, **kw: torch.optim.SGD(model.parameters(), **kw)), {"lr": ctx.hparams["lr"]}

    register_optimizer("t_rules_ignored", own_groups)
    try:
        with pytest.raises(ValueError, match=r"ignores optim_groups: parameter model\.embed_tokens\.weight has lr"):
            create_optimizer(args("t_rules_ignored", [{"params": "@embeddings", "lr": 0.5}]), tiny_model)
        create_optimizer(args("t_rules_ignored"), tiny_model)  # without rules it is the plugin's business
    finally:
        unregister_optimizer("t_rules_ignored")


def test_rules_with_optimizer_cls_and_kwargs_are_refused(tmp_path, tiny_model, token_data):
    from optim_registry import OptimTrainer

    a = args(groups=[{"params": "@embeddings", "lr": 1e-5}], output_dir=str(tmp_path), max_steps=1)
    trainer = OptimTrainer(model=tiny_model, args=a, train_dataset=token_data,
                           optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}))
    with pytest.raises(ValueError, match="optimizer_cls_and_kwargs"):
        trainer.create_optimizer()
