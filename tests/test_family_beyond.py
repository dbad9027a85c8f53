"""torch-optimi, ADOPT, CAME, Muon, Dion and FlashOptim: conformance, CPU policies, routing, typed options."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from optim_registry import OptimTrainer, create_optimizer, get_optimizer_cls_and_kwargs
from optim_registry.families.beyond.muon import split_muon_params
from optim_registry.testing import TokenDataset, check_optimizer, run, tiny_model
from optim_registry.testing import arguments as args

FLASH = ["flash_adam", "flash_adamw", "flash_lion", "flash_sgd", "flash_sgdw"]

#: Every CPU-capable name of these families, with the optim_args it needs (or exercises state with).
CONFORMANCE = {
    "stable_adamw": None,
    "optimi_adam": None,
    "optimi_adamw": None,
    "optimi_adan": None,
    "optimi_lion": None,
    "optimi_radam": None,
    "optimi_ranger": None,
    "optimi_sgd": "momentum=0.9",
    "adopt_adamw": None,
    "adopt_adamw_layerwise": None,
    "came_pytorch": None,
    "came_pytorch_layerwise": None,
    "muon": None,
    "dion": None,
    **{name: "quantize=false" for name in FLASH},
    "flash_sgdw": "quantize=false,momentum=0.9",
}


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one intra-op thread is faster, and fair to the other test processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def unchanged(model, before):
    return all(torch.equal(before[n], p) for n, p in model.named_parameters())


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


# -- conformance ---------------------------------------------------------------------------------------


@pytest.mark.harness
@pytest.mark.parametrize("name", sorted(CONFORMANCE))
def test_conformance(name, tmp_path):
    report = check_optimizer(name, CONFORMANCE[name], workdir=str(tmp_path))
    assert report.ok, report.failures


# -- refusals: one clear error, model untouched ----------------------------------------------------------


@pytest.mark.parametrize("name", FLASH)
def test_flash_on_cpu_needs_explicit_opt_in(name):
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r'optim_args="quantize=false"'):
        create_optimizer(args(name), model)
    assert unchanged(model, before)


@pytest.mark.parametrize("extra, key", [("fused=true", "fused"), ("master_weight_bits=24", "master_weight_bits")])
def test_flash_cuda_only_options_are_refused_on_cpu(extra, key):
    with pytest.raises(ValueError, match=key):
        create_optimizer(args("flash_adamw", optim_args=f"quantize=false,{extra}"), tiny_model())


def test_flash_cpu_path_is_the_plain_one():
    opt = create_optimizer(args("flash_adamw", optim_args="quantize=false"), tiny_model())
    assert (opt._quantize, opt._fused, opt._master_bytewidth) == (False, False, 0)


def test_off_cpu_the_fast_paths_stay_on(caplog):
    """Parameters not on the CPU (a meta-device model stands in for a GPU here): nothing is switched off,
    except master weights for an all-fp32 model, which FlashOptim refuses; that is dropped with a warning."""
    _, kwargs = get_optimizer_cls_and_kwargs(args("flash_adamw"), tiny_model().to("meta"))
    assert kwargs["master_weight_bits"] is None and "quantize" not in kwargs and "fused" not in kwargs
    assert "only applies to bf16/fp16 weights" in caplog.text
    _, kwargs = get_optimizer_cls_and_kwargs(args("flash_adamw"), tiny_model().to("meta", torch.bfloat16))
    assert "master_weight_bits" not in kwargs
    _, kwargs = get_optimizer_cls_and_kwargs(args("stable_adamw"), tiny_model().to("meta"))
    assert "triton" not in kwargs


@pytest.mark.parametrize(
    "name, optim_args, match",
    [
        ("stable_adamw", "triton=true", "Triton kernels need CUDA"),
        ("optimi_adan", "betas=(0.9,0.99)", "takes 3 numbers"),
        ("optimi_adamw", "betas=(0.9,0.99,0.9)", "takes 2 numbers"),
        ("came_pytorch", "lr=0", "learning rate > 0"),
        ("muon", "betas=(0.9,0.9,0.9)", "takes 2 numbers"),
    ],
)
def test_bad_combinations_are_refused(name, optim_args, match):
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        create_optimizer(args(name, optim_args=optim_args), model)
    assert unchanged(model, before)


@pytest.mark.parametrize("optim_args, key", [("decouple_lr=maybe", "decouple_lr"), ("adjust_lr_fn=rms", "adjust_lr_fn")])
def test_option_types_are_checked_when_arguments_are_made(optim_args, key):
    name = "muon" if key == "adjust_lr_fn" else "stable_adamw"
    with pytest.raises(ValueError, match=key):
        args(name, optim_args=optim_args)


@pytest.mark.parametrize("name", ["muon", "dion"])
def test_matrix_optimizers_need_the_model(name):
    with pytest.raises(ValueError, match="needs the model"):
        get_optimizer_cls_and_kwargs(args(name))


def test_resolving_these_names_imports_no_optimizer_package():
    # (not triton: transformers' own TrainingArguments imports torchao, which imports triton)
    names = sorted(CONFORMANCE)
    code = (
        "import sys\nfrom optim_registry import TrainingArguments, list_optimizers\n"
        "list_optimizers()\n"
        f"for n in {names!r}:\n"
        "    TrainingArguments('x', optim=n, report_to=[], use_cpu=True, max_grad_norm=0.0)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'optimi', 'flashoptim', 'came_pytorch', 'pytorch_optimizer'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


# -- stable_adamw: typed booleans, CPU-safe --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:You are using weight_decay")  # optimi's note on decouple_lr with 0.1
def test_stable_adamw_decouple_lr_false_really_differs_from_true(tmp_path):
    finals = {}
    for flag in ("false", "true"):
        trainer = run("stable_adamw", str(tmp_path / flag), f"decouple_lr={flag},kahan_sum=false", max_steps=3,
                      save_strategy="no", weight_decay=0.1)
        group = trainer.optimizer.param_groups[0]
        assert group["decouple_lr"] is (flag == "true") and group["kahan_sum"] is False
        assert group["triton"] is False
        finals[flag] = dict(trainer.model.named_parameters())
    diff = max((finals["true"][n] - finals["false"][n]).abs().max().item() for n in finals["true"])
    assert diff > 1e-3


# -- muon / dion routing and schedules --------------------------------------------------------------------


def test_muon_routes_hidden_matrices_to_muon_and_the_rest_to_adamw():
    model = tiny_model()
    opt = create_optimizer(args("muon", learning_rate=3e-3, weight_decay=0.1, optim_args="muon_lr=0.05"), model)
    hidden, rest = split_muon_params(model)
    muon_ids = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    adamw_ids = {id(p) for g in opt.param_groups if not g["use_muon"] for p in g["params"]}
    assert muon_ids == {id(p) for _, p in hidden}
    assert adamw_ids == {id(p) for _, p in rest}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(("proj" in names[i]) for i in muon_ids)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= {names[i] for i in adamw_ids}
    for group in opt.param_groups:
        assert group["lr"] == (0.05 if group["use_muon"] else 3e-3)
        decayed = {names[id(p)] for p in group["params"]}
        assert group["weight_decay"] == (0.0 if all("norm" in n for n in decayed) else 0.1)
    assert {g["weight_decay"] for g in opt.param_groups if not g["use_muon"]} == {0.0, 0.1}


def test_dion_routes_like_muon_with_its_own_lr():
    model = tiny_model()
    opt = create_optimizer(args("dion", learning_rate=3e-3, optim_args="dion_lr=0.03,rank=4"), model)
    hidden, _ = split_muon_params(model)
    assert {id(p) for g in opt.param_groups if g["use_dion"] for p in g["params"]} == {id(p) for _, p in hidden}
    assert {g["lr"] for g in opt.param_groups if g["use_dion"]} == {0.03}
    assert {g["lr"] for g in opt.param_groups if not g["use_dion"]} == {3e-3}


@pytest.mark.parametrize("name", ["muon", "dion"])
def test_scheduler_moves_both_sides(name, tmp_path):
    a = args(name, output_dir=str(tmp_path), learning_rate=3e-3, lr_scheduler_type="linear", max_steps=4,
             per_device_train_batch_size=8, save_strategy="no", disable_tqdm=True)
    trainer = OptimTrainer(model=tiny_model(), args=a, train_dataset=TokenDataset())
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    for _ in range(2):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    flag = "use_muon" if name == "muon" else "use_dion"
    sides = {g[flag]: g for g in trainer.optimizer.param_groups}
    assert sides[True]["initial_lr"] != sides[False]["initial_lr"]
    for group in trainer.optimizer.param_groups:
        assert group["lr"] == pytest.approx(group["initial_lr"] * 0.5)


def test_dion_keeps_up_with_muon(tmp_path):
    """30 steps on the tiny model (hidden 32, AdamW side at 1e-3): both beat frozen matrices, Dion near Muon."""
    finals = {}
    for name, optim_args in (("muon", None), ("dion", None), ("muon", "muon_lr=0")):
        trainer = run(name, str(tmp_path / name), optim_args, model=tiny_model(hidden=32), max_steps=30,
                      save_strategy="no", learning_rate=1e-3)
        finals[optim_args or name] = losses(trainer)[-1]
    frozen = finals.pop("muon_lr=0")
    assert finals["muon"] < frozen - 0.05 and finals["dion"] < frozen - 0.05, (finals, frozen)
    assert finals["dion"] <= finals["muon"] * 1.03, finals


# -- CAME ---------------------------------------------------------------------------------------------------


def test_came_trains_and_passes_its_three_betas(tmp_path):
    trainer = run("came_pytorch", str(tmp_path), "beta3=0.999,eps2=1e-12", max_steps=8, save_strategy="no")
    curve = losses(trainer)
    assert curve[-1] < curve[0] - 0.2
    group = trainer.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.999, 0.999) and group["eps"] == (1e-30, 1e-12)
