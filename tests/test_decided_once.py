"""Questions answered in one place (issues 16, 22): "can this name run here?", the Trainer's facts passed
explicitly, the decay names taken from transformers through ``super()``, and bitsandbytes' embedding override
registered once."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

from optim_registry import OptimRegistryMixin, OptimTrainer, register_optimizer, unregister_optimizer
from optim_registry.listing import list_optimizers
from optim_registry.registry import optimizers
from optim_registry.runnable import can_run
from optim_registry.spec import OptimizerSpec, Requirement
from optim_registry.testing import TokenDataset, arguments, tiny_model

_NO_CUDA = not torch.cuda.is_available()


@pytest.fixture
def odd_records():
    """One record for each reason a name cannot run here."""
    base = optimizers.get("sgd")
    records = {
        "r3_missing": base.variant(name="r3_missing", requires=(Requirement("r3-not-installed", "r3_not_installed"),)),
        "r3_gpu": base.variant(name="r3_gpu", needs_gpu="a CUDA kernel"),
        "r3_unsupported": OptimizerSpec(name="r3_unsupported", target=torch.optim.SGD, family="test",
                                        description="no Trainer", unsupported="needs a closure every step"),
    }
    for name, spec in records.items():
        register_optimizer(name, spec)
    yield records
    for name in records:
        unregister_optimizer(name)


def test_can_run_gives_one_reason_per_refusal(odd_records):
    assert can_run("sgd") == (True, None)
    ok, reason = can_run("r3_missing")
    assert not ok and reason == "package missing: pip install r3-not-installed"
    assert can_run("r3_unsupported") == (False, "cannot train through a Trainer: needs a closure every step")
    if _NO_CUDA:
        assert can_run("r3_gpu") == (False, "needs a CUDA GPU (a CUDA kernel); this machine has none")
    ok, reason = can_run("not_an_optimizer_r3")
    assert not ok and "Unknown optim 'not_an_optimizer_r3'" in reason


def test_a_listing_entry_gets_the_same_answer_as_its_record(odd_records):
    """The CLI and the sweep ask with list_optimizers() entries (no plugin code imported): same answers."""
    for info in list_optimizers():
        if info.source == "builtin" or info.name in odd_records:
            assert can_run(info) == can_run(info.name), info.name


def test_cli_listing_uses_the_same_answer(odd_records):
    from optim_registry.cli import _list_rows

    rows = {r["name"]: r["runnable_here"] for r in _list_rows(None, False)}
    assert rows["sgd"] and not rows["r3_missing"] and not rows["r3_unsupported"]
    assert rows["r3_gpu"] is not _NO_CUDA


def test_can_run_with_arguments_makes_the_trainers_checks(odd_records):
    args = arguments("lomo")
    assert can_run("lomo", args) == (True, None)
    args.gradient_accumulation_steps = 2  # what the arguments refuse when created
    ok, reason = can_run("lomo", args)
    assert not ok and "gradient accumulation cannot work" in reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # creating arguments for a missing package only warns
        missing = arguments("r3_missing")
    ok, reason = can_run("r3_missing", missing)
    assert not ok and reason.startswith("package missing")
    with pytest.raises(ValueError, match="args.optim is 'lomo'"):
        can_run("sgd", args)


def test_the_trainer_refuses_with_the_same_decision(odd_records, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        missing = arguments("r3_missing", str(tmp_path))
    trainer = OptimTrainer(model=tiny_model(), args=missing, train_dataset=TokenDataset())
    with pytest.raises(ImportError, match=r"optim='r3_missing' needs r3-not-installed.*pip install r3-not-installed"):
        trainer.create_optimizer()
    with pytest.raises(ValueError, match="optim='r3_unsupported' cannot train through the Trainer: needs a closure"):
        arguments("r3_unsupported")


# -- the Trainer's facts ------------------------------------------------------------------------


class _Base(transformers.Trainer):
    def get_decay_parameter_names(self, model):
        return ["lm_head.weight"]  # a user's own choice, below the mixin


class _Mixed(OptimRegistryMixin, _Base):
    pass


def test_decay_names_come_from_super_and_reach_the_build(tmp_path):
    model = tiny_model()
    args = arguments("adamw_torch", str(tmp_path), weight_decay=0.1, max_steps=1)
    trainer = _Mixed(model=model, args=args, train_dataset=TokenDataset())
    assert trainer.get_decay_parameter_names(model) == {"lm_head.weight"}
    opt = trainer.create_optimizer()  # not wrapped by accelerate until training starts
    decayed = [p for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert len(decayed) == 1 and decayed[0] is model.lm_head.weight


def test_the_trainer_passes_its_facts_explicitly_and_nothing_else_sees_them(tmp_path):
    from optim_registry import build, get_optimizer_cls_and_kwargs

    seen = []

    def builder(ctx):
        seen.append((ctx.num_training_steps, ctx.facts.decay_names is not None))
        return torch.optim.SGD, {"lr": 0.1}

    register_optimizer("r3_scope", OptimizerSpec(name="r3_scope", target=torch.optim.SGD, family="test",
                                                 description="records its facts", builder=builder))
    try:
        args = arguments("r3_scope", str(tmp_path), max_steps=3, save_strategy="no")
        trainer = OptimTrainer(model=tiny_model(), args=args, train_dataset=TokenDataset())
        trainer.train()
        # the same call outside a Trainer: the arguments alone (no hidden scope decides what a build sees)
        get_optimizer_cls_and_kwargs(arguments("r3_scope", str(tmp_path), max_steps=5), tiny_model())
        # read from the class, it is transformers' static method; read from a Trainer, it passes the facts
        assert OptimTrainer.get_optimizer_cls_and_kwargs is build.get_optimizer_cls_and_kwargs
        trainer._registry_training_steps = 7
        trainer.get_optimizer_cls_and_kwargs(args, trainer.model)
    finally:
        unregister_optimizer("r3_scope")
    assert seen == [(3, True), (5, False), (7, True)]
    assert not hasattr(build, "trainer_scope") and not hasattr(build, "current_decay_names")


# -- bitsandbytes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adamw_8bit", "adamw_8bit_layerwise"])
def test_embedding_override_is_registered_once_per_build(name, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    manager = bnb.optim.GlobalOptimManager.get_instance()
    model = tiny_model()
    extra = {"max_grad_norm": 0.0} if name.endswith("_layerwise") else {}
    trainer = OptimTrainer(model=model, args=arguments(name, str(tmp_path), **extra), train_dataset=TokenDataset())
    trainer.create_optimizer()
    entries = [e for e in manager.module_weight_config_triple if e[0] is model.model.embed_tokens]
    try:
        assert entries == [(model.model.embed_tokens, "weight", {"optim_bits": 32})]
    finally:
        for entry in entries:
            manager.module_weight_config_triple.remove(entry)
