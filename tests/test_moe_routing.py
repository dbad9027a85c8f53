"""Muon's routing: MoE expert stacks per expert matrix, routers and LoRA factors to AdamW, exclusions and own
weight decay."""

from __future__ import annotations

import pytest
import torch

from optim_registry import create_optimizer
from optim_registry.families.beyond.muon import zeropower_via_newtonschulz
from optim_registry.testing import arguments

COEFFS = (3.4445, -4.775, 2.0315)


def moe_model(kind: str = "qwen3_moe"):
    import transformers

    common = dict(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  max_position_embeddings=64)
    if kind == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(intermediate_size=32, moe_intermediate_size=8, num_experts=4,
                                             num_experts_per_tok=2, **common)
        cls = transformers.Qwen3MoeForCausalLM
    elif kind == "gpt_oss":
        config = transformers.GptOssConfig(intermediate_size=8, num_local_experts=4, num_experts_per_tok=2,
                                           head_dim=8, **common)
        cls = transformers.GptOssForCausalLM
    elif kind == "granitemoe":
        config = transformers.GraniteMoeConfig(intermediate_size=8, num_local_experts=4, num_experts_per_tok=2,
                                               **common)
        cls = transformers.GraniteMoeForCausalLM
    else:
        config = transformers.MixtralConfig(intermediate_size=8, num_local_experts=4, num_experts_per_tok=2,
                                            **common)
        cls = transformers.MixtralForCausalLM
    torch.manual_seed(0)
    return cls(config)


def args(optim="muon", **kw):
    kw.setdefault("learning_rate", 1e-3)
    kw.setdefault("use_cpu", False)
    return arguments(optim, "out", **kw)


def routed(model, opt):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g for g in opt.param_groups for p in g["params"]}


def step(model, opt, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 32, (4, 12), generator=g)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()


def test_batched_newton_schulz_equals_one_matrix_at_a_time():
    stack = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(0))
    batched = zeropower_via_newtonschulz(stack, COEFFS, 5, 1e-7)
    for i in range(3):
        assert torch.equal(batched[i], zeropower_via_newtonschulz(stack[i], COEFFS, 5, 1e-7))


@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral"])
def test_expert_stacks_go_to_muon_per_expert_and_train(kind):
    model = moe_model(kind)
    experts = [n for n, p in model.named_parameters() if p.ndim == 3]
    assert experts and all(".experts." in n for n in experts)
    opt = create_optimizer(args(weight_decay=0.1), model)
    groups = routed(model, opt)
    assert all(groups[n]["use_muon"] for n in experts)
    assert groups["model.embed_tokens.weight"]["use_muon"] is False
    assert groups["lm_head.weight"]["use_muon"] is False
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step(model, opt)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert set(moved) == set(before)
    # each expert's update is its own orthogonalised matrix: scaled like a (rows, cols) Muon step
    name = experts[0]
    state = opt.state[dict(model.named_parameters())[name]]
    assert state["momentum_buffer"].shape == before[name].shape


@pytest.mark.parametrize("kind, router", [("qwen3_moe", "model.layers.0.mlp.gate"), ("mixtral", "model.layers.0.mlp.gate"),
                                          ("gpt_oss", "model.layers.0.mlp.router"),
                                          ("granitemoe", "model.layers.0.block_sparse_moe.router")])
def test_the_router_is_a_label_of_its_own_and_goes_to_adamw_unless_asked(kind, router):
    from optim_registry.labels import label_parameters

    model = moe_model(kind)
    table = label_parameters(model)
    routers = {r.name for r in table if r.kind == "router"}
    assert f"{router}.weight" in routers and all(n.startswith(router + ".") for n in routers if ".layers.0." in n)
    assert len({n.split(".layers.")[1].split(".")[0] for n in routers}) == 2  # one router per layer
    groups = routed(model, create_optimizer(args(weight_decay=0.1), model))
    assert all(groups[n]["use_muon"] is False for n in routers)
    # a stack of per-expert biases (GPT-OSS experts.gate_up_proj_bias) is a bias, never orthogonalised
    assert all(groups[r.name]["use_muon"] is False for r in table if r.bias)
    groups = routed(model, create_optimizer(args(optim_args="router_to_adamw=false"), model))
    assert all(groups[n]["use_muon"] is True for n in routers if n.endswith(".weight"))
    dion = routed(model, create_optimizer(args("dion"), model))
    assert all(dion[n]["use_dion"] is False for n in routers)


def test_expert_matrices_false_sends_experts_to_adamw():
    model = moe_model()
    opt = create_optimizer(args(optim_args="expert_matrices=false"), model)
    groups = routed(model, opt)
    assert all(groups[n]["use_muon"] is False for n, p in model.named_parameters() if p.ndim == 3)


def test_lora_factors_go_to_adamw_unless_asked():
    from peft import LoraConfig, get_peft_model

    from optim_registry.testing import tiny_model

    model = get_peft_model(tiny_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    groups = routed(model, create_optimizer(args(), model))
    lora = [n for n in groups if "lora_" in n]
    assert lora and all(groups[n]["use_muon"] is False for n in lora)
    groups = routed(model, create_optimizer(args(optim_args="lora_to_adamw=false"), model))
    assert all(groups[n]["use_muon"] is True for n in lora)


def test_exclude_and_muon_weight_decay_are_options():
    from optim_registry.testing import tiny_model

    model = tiny_model()
    opt = create_optimizer(args(weight_decay=0.1, optim_args=r"exclude=embed|lm_head|down_proj,muon_weight_decay=0.01"),
                           model)
    groups = routed(model, opt)
    assert groups["model.layers.0.mlp.down_proj.weight"]["use_muon"] is False
    assert groups["model.layers.0.mlp.down_proj.weight"]["weight_decay"] == 0.1
    assert groups["model.layers.0.mlp.up_proj.weight"]["use_muon"] is True
    assert groups["model.layers.0.mlp.up_proj.weight"]["weight_decay"] == 0.01


def test_dion_keeps_expert_stacks_on_adamw_and_trains():
    model = moe_model()
    opt = create_optimizer(args("dion"), model)
    groups = routed(model, opt)
    assert all(groups[n]["use_dion"] is False for n, p in model.named_parameters() if p.ndim == 3)
    assert groups["model.layers.0.self_attn.q_proj.weight"]["use_dion"] is True
    step(model, opt)


def test_show_muon_says_where_each_kind_goes(capsys):
    from optim_registry.cli import main

    assert main(["show", "muon"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for phrase in ("3-D MoE expert stacks", "one matrix per expert", "LoRA factors (`lora_A`, `lora_B`) -> AdamW",
                   "MoE routers (`mlp.gate`, beside the experts) -> AdamW (`router_to_adamw`)",
                   "`exclude`", "norms, biases and other tensors -> AdamW", "optim_groups rules take"):
        assert phrase in out


def test_groups_command_on_a_moe_config(tmp_path, capsys):
    import json

    from optim_registry.cli import main

    moe_model().config.save_pretrained(tmp_path)
    assert main(["groups", "--optim", "muon", "--model-config", str(tmp_path), "--weight-decay", "0.1"]) == 0
    assert "experts.gate_up_proj" in capsys.readouterr().out
    assert main(["groups", "--optim", "muon", "--model-config", str(tmp_path), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    routes = {g["options"]["routes"]: g for g in groups}
    assert routes["matrix+experts"]["options"]["use_muon"] is True
    assert routes["matrix+experts"]["kinds"] == "matrix+expert_stack"
    assert any(n.endswith("experts.down_proj") for n in routes["matrix+experts"]["names"])
    adamw = [g for g in groups if "router" in g["options"]["routes"].split("+")]
    assert adamw and all(g["options"]["use_muon"] is False for g in adamw)
    assert any(n.endswith("mlp.gate.weight") for g in adamw for n in g["names"])
    assert all(g["options"]["use_muon"] is False for g in groups if "embedding" in g["options"]["routes"])
