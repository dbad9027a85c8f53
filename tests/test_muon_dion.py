"""Training tests for MuonWithAdamW and Dion on a tiny, randomly initialised Llama."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers
from torch import nn

from optim_registry.families.beyond.dion import Dion
from optim_registry.families.beyond.muon import MuonWithAdamW, split_muon_params

MATRIX_NAMES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
# Shared by both optimizers so the Dion-vs-Muon comparison is like for like.
HPARAMS = {"lr": 0.02, "adamw_lr": 3e-3, "weight_decay": 0.01}
FLAG = {"muon": "use_muon", "dion": "use_dion"}


def make_model(
    seed: int = 0, **config_overrides: object
) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **config_overrides,
    )
    return transformers.LlamaForCausalLM(config)


def make_batches(count: int = 4, seed: int = 1234) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (8, 16), generator=generator) for _ in range(count)]


BATCHES = make_batches()


def make_optimizer(
    kind: str, model: nn.Module, **overrides: object
) -> torch.optim.Optimizer:
    muon, adamw = split_muon_params(model)
    groups = [
        {"params": [p for _, p in muon], FLAG[kind]: True},
        {"params": [p for _, p in adamw], FLAG[kind]: False},
    ]
    optimizer_class = MuonWithAdamW if kind == "muon" else Dion
    return optimizer_class(groups, **{**HPARAMS, **overrides})


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    start: int = 0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> list[float]:
    losses = []
    for step in range(start, start + steps):
        input_ids = BATCHES[step % len(BATCHES)]
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def eval_loss(model: nn.Module) -> float:
    losses = [model(input_ids=ids, labels=ids).loss.item() for ids in BATCHES]
    return sum(losses) / len(losses)


def max_param_diff(a: nn.Module, b: nn.Module) -> float:
    return max(
        (pa - pb).abs().max().item()
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True)
    )


# --- split_muon_params ------------------------------------------------------


def test_split_puts_llama_matrices_in_muon_and_the_rest_in_adamw() -> None:
    model = make_model()
    muon, adamw = split_muon_params(model)
    muon_names = {name for name, _ in muon}
    adamw_names = {name for name, _ in adamw}

    expected_muon = {
        f"model.layers.{layer}.{block}.{proj}.weight"
        for layer in range(2)
        for block, projs in (("self_attn", MATRIX_NAMES[:4]), ("mlp", MATRIX_NAMES[4:]))
        for proj in projs
    }
    assert muon_names == expected_muon
    assert {
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    } <= adamw_names
    assert "model.layers.0.input_layernorm.weight" in adamw_names
    assert "model.layers.1.post_attention_layernorm.weight" in adamw_names
    assert len(muon) + len(adamw) == len(list(model.parameters()))


def test_split_tied_head_goes_to_adamw() -> None:
    model = make_model(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    muon, adamw = split_muon_params(model)
    assert all(p is not model.lm_head.weight for _, p in muon)
    assert any(p is model.lm_head.weight for _, p in adamw)


class _OddlyNamedModel(nn.Module):
    """Embedding, tied head and hidden layers whose names defeat naive name matching."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(10, 8)
        self.attention = nn.ModuleDict(
            {"output": nn.ModuleDict({"dense": nn.Linear(8, 8)})}
        )
        self.conv = nn.Conv2d(2, 2, 3)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.decoder = nn.Linear(8, 10, bias=False)
        self.decoder.weight = self.tok.weight

    def get_input_embeddings(self) -> nn.Module:
        return self.tok

    def get_output_embeddings(self) -> nn.Module:
        return self.decoder


def test_split_uses_module_types_identity_and_leaf_names() -> None:
    muon, adamw = split_muon_params(_OddlyNamedModel())
    assert [name for name, _ in muon] == ["attention.output.dense.weight"]
    assert {name for name, _ in adamw} == {
        "tok.weight",
        "attention.output.dense.bias",
        "conv.weight",
        "conv.bias",
    }


# --- MuonWithAdamW against torch.optim.Muon / AdamW ------------------------


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust_lr_fn", [None, "original", "match_rms_adamw"])
def test_muon_matches_torch_muon_and_adamw_on_matrices(
    nesterov: bool, adjust_lr_fn: str | None
) -> None:
    torch.manual_seed(0)
    shapes = [(16, 32), (32, 16), (24, 24)]
    ours_muon = [nn.Parameter(torch.randn(shape)) for shape in shapes]
    ours_adamw = [nn.Parameter(torch.randn(7)), nn.Parameter(torch.randn(5, 3))]
    ref_muon = [nn.Parameter(p.detach().clone()) for p in ours_muon]
    ref_adamw = [nn.Parameter(p.detach().clone()) for p in ours_adamw]
    hyper = {
        "momentum": 0.9,
        "nesterov": nesterov,
        "ns_steps": 5,
        "adjust_lr_fn": adjust_lr_fn,
    }
    ours = MuonWithAdamW(
        [
            {"params": ours_muon, "use_muon": True},
            {"params": ours_adamw, "use_muon": False, "betas": (0.8, 0.99)},
        ],
        lr=0.05,
        weight_decay=0.1,
        adamw_lr=1e-2,
        # torch.optim.Muon's dtype on every CPU ("auto" picks float32 where bf16 is emulated).
        matmul_dtype="bfloat16",
        **hyper,
    )
    refs = [
        torch.optim.Muon(ref_muon, lr=0.05, weight_decay=0.1, **hyper),
        torch.optim.AdamW(ref_adamw, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1),
    ]
    for _ in range(5):
        for ours_p, ref_p in zip(
            ours_muon + ours_adamw, ref_muon + ref_adamw, strict=True
        ):
            grad = torch.randn(ours_p.shape)
            ours_p.grad, ref_p.grad = grad.clone(), grad.clone()
        ours.step()
        for ref in refs:
            ref.step()
    for ours_p, ref_p in zip(ours_muon + ours_adamw, ref_muon + ref_adamw, strict=True):
        assert (ours_p - ref_p).abs().max().item() < 1e-6


def test_muon_matches_torch_muon_plus_adamw_on_llama() -> None:
    ours_model = make_model()
    ref_model = copy.deepcopy(ours_model)
    ours = make_optimizer("muon", ours_model, matmul_dtype="bfloat16")
    muon, adamw = split_muon_params(ref_model)
    refs = [
        torch.optim.Muon([p for _, p in muon], lr=0.02, weight_decay=0.01),
        torch.optim.AdamW([p for _, p in adamw], lr=3e-3, weight_decay=0.01),
    ]
    train(ours_model, ours, 5)
    for step in range(5):
        input_ids = BATCHES[step % len(BATCHES)]
        ref_model(input_ids=input_ids, labels=input_ids).loss.backward()
        for ref in refs:
            ref.step()
            ref.zero_grad(set_to_none=True)
    assert max_param_diff(ours_model, ref_model) < 1e-6


# --- Dion math --------------------------------------------------------------


def _reference_dion_step(
    x: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    q: torch.Tensor,
    lr: float,
    mu: float,
    wd: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1 written out plainly, on B^T for wide matrices like the optimizer."""
    rows, cols = x.shape
    wide = rows < cols
    b = (m + g).T if wide else m + g
    p = torch.linalg.qr(b @ q).Q
    r = b.T @ p
    new_b = b - (1 - mu) * p @ r.T
    new_q = r / (r.norm(dim=0, keepdim=True) + 1e-8)
    update = p @ new_q.T
    if wide:
        update, new_b = update.T, new_b.T
    new_x = x * (1 - lr * wd) - lr * math.sqrt(rows / cols) * update
    return new_x, new_b, new_q


@pytest.mark.parametrize("shape", [(24, 12), (12, 24), (16, 16)])
@pytest.mark.parametrize("rank", [None, 4])
def test_dion_follows_algorithm_1(shape: tuple[int, int], rank: int | None) -> None:
    torch.manual_seed(0)
    param = nn.Parameter(torch.randn(shape))
    optimizer = Dion(
        [{"params": [param], "use_dion": True}], lr=0.03, weight_decay=0.1, rank=rank
    )
    q = optimizer.state[param]["Q"].clone()
    expected_rank = rank or min(shape)
    assert q.shape == (min(shape), expected_rank)
    torch.testing.assert_close(q.T @ q, torch.eye(expected_rank), atol=1e-5, rtol=0)

    x, m = param.detach().clone(), torch.zeros(shape)
    for _ in range(3):
        grad = torch.randn(shape)
        param.grad = grad.clone()
        optimizer.step()
        x, m, q = _reference_dion_step(x, grad, m, q, lr=0.03, mu=0.95, wd=0.1)
        assert (param.detach() - x).abs().max().item() < 1e-5
        assert (optimizer.state[param]["momentum_buffer"] - m).abs().max().item() < 1e-5


# --- both optimizers on the tiny Llama --------------------------------------


@pytest.mark.parametrize("kind", ["muon", "dion"])
def test_loss_goes_down_and_every_param_moves(kind: str) -> None:
    model = make_model()
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    start_loss = eval_loss(model)
    train(model, make_optimizer(kind, model), 30)
    end_loss = eval_loss(model)
    assert end_loss < 0.8 * start_loss, (start_loss, end_loss)
    unmoved = [
        name for name, p in model.named_parameters() if torch.equal(p, initial[name])
    ]
    assert unmoved == []


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        ("muon", {}),
        ("muon", {"nesterov": False}),
        ("dion", {}),
        ("dion", {"rank_fraction": 0.5}),
    ],
)
def test_state_dict_round_trip_resumes_exactly(
    kind: str, overrides: dict, tmp_path
) -> None:
    uninterrupted = make_model()
    train(uninterrupted, make_optimizer(kind, uninterrupted, **overrides), 6)

    first_half = make_model()
    optimizer = make_optimizer(kind, first_half, **overrides)
    train(first_half, optimizer, 3)
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {"model": first_half.state_dict(), "optimizer": optimizer.state_dict()}, path
    )

    checkpoint = torch.load(path, weights_only=True)
    resumed = make_model(seed=99)
    resumed.load_state_dict(checkpoint["model"])
    # A different seed proves Dion's Q comes from the checkpoint, not a re-draw.
    fresh_optimizer = make_optimizer(
        kind, resumed, **overrides, **({"seed": 7} if kind == "dion" else {})
    )
    fresh_optimizer.load_state_dict(checkpoint["optimizer"])
    train(resumed, fresh_optimizer, 3, start=3)

    assert max_param_diff(resumed, uninterrupted) < 1e-6


@pytest.mark.parametrize("kind", ["muon", "dion"])
def test_lambda_lr_drives_every_group(kind: str) -> None:
    model = make_model()
    optimizer = make_optimizer(kind, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    assert [g["initial_lr"] for g in optimizer.param_groups] == [0.02, 3e-3]
    train(model, optimizer, 2, scheduler=scheduler)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(group["initial_lr"] * 0.25)

    # With the factor at 0 no parameter may move: the step really reads each group's lr.
    frozen = torch.optim.lr_scheduler.LambdaLR(
        make_optimizer(kind, model), lambda step: 0.0
    )
    before = copy.deepcopy(model)
    train(model, frozen.optimizer, 2, scheduler=frozen)
    assert max_param_diff(model, before) == 0.0


def test_dion_keeps_up_with_muon() -> None:
    final = {}
    for kind in ("muon", "dion"):
        model = make_model()
        train(model, make_optimizer(kind, model), 40)
        final[kind] = eval_loss(model)
    print(
        "final eval loss after 40 steps: "
        f"muon={final['muon']:.4f} dion={final['dion']:.4f}"
    )
    assert final["dion"] <= 1.10 * final["muon"], final


# --- validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("optimizer_class", "flag"), [(MuonWithAdamW, "use_muon"), (Dion, "use_dion")]
)
def test_non_matrix_in_matrix_group_raises(optimizer_class: type, flag: str) -> None:
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        optimizer_class([{"params": [nn.Parameter(torch.zeros(4))], flag: True}])


@pytest.mark.parametrize(
    ("optimizer_class", "flag"), [(MuonWithAdamW, "use_muon"), (Dion, "use_dion")]
)
def test_group_without_flag_raises(optimizer_class: type, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        optimizer_class([nn.Parameter(torch.zeros(4, 4))])
