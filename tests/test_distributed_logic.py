"""Decision logic for back-ends that cannot run here (FSDP, DeepSpeed need GPUs): refused up front."""

from __future__ import annotations

import json

import pytest

from optim_registry import TrainingArguments
from optim_registry.distributed import check_distributed, detect_backend
from optim_registry.registry import optimizers


class Args:
    def __init__(self, **kw):
        self.deepspeed = kw.get("deepspeed")
        self.fsdp = kw.get("fsdp")
        self.fsdp_config = kw.get("fsdp_config")
        self.optim_args = kw.get("optim_args")


def test_detect_backends(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert detect_backend(Args()).kind == "none"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert detect_backend(Args()).kind == "ddp"
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert detect_backend(Args(deepspeed=str(cfg))).kind == "zero3"
    assert detect_backend(Args(deepspeed={"zero_optimization": {"stage": 2}})).kind == "zero2"
    b = detect_backend(Args(fsdp="full_shard", fsdp_config={"fsdp_version": 1, "use_orig_params": False}))
    assert b.kind == "fsdp" and "flattened" in b.detail
    # transformers 5.x trains FSDP2 when the config names no version
    assert detect_backend(Args(fsdp="full_shard")).kind == "fsdp2"
    assert detect_backend(Args(fsdp=True, fsdp_config={"version": 1})).kind == "fsdp"


def test_deepspeed_optimizer_block_with_an_optim_choice_names_both():
    ds = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "zero_optimization": {"stage": 2}}
    with pytest.raises(ValueError, match=r"DeepSpeed config defines its own optimizer \('AdamW'\) and optim='sgd'"):
        TrainingArguments("x", optim="sgd", deepspeed=ds, report_to=[], use_cpu=True)


def test_layerwise_is_refused_for_every_sharded_backend():
    spec = optimizers.get("adamw_torch_layerwise")
    for ds_stage in (1, 2, 3):
        with pytest.raises(ValueError, match=r"does not support DeepSpeed ZeRO stage %d" % ds_stage):
            check_distributed(spec, Args(deepspeed={"zero_optimization": {"stage": ds_stage}}))
    with pytest.raises(ValueError, match=r"does not support FSDP1.*stepped inside backward"):
        check_distributed(spec, Args(fsdp="full_shard", fsdp_config={"fsdp_version": 1}))
    with pytest.raises(ValueError, match=r"does not support FSDP2.*stepped inside backward"):
        check_distributed(spec, Args(fsdp="full_shard"))
    # refused when the arguments are created, before transformers imports deepspeed
    with pytest.raises(ValueError, match="ZeRO stage 3"):
        TrainingArguments("x", optim="adamw_torch_layerwise", max_grad_norm=0.0, report_to=[], use_cpu=True,
                          deepspeed={"zero_optimization": {"stage": 3}})


def test_layerwise_accepted_under_ddp_at_arguments_creation(monkeypatch):
    # Stepped from DDP's communication hook once each bucket is averaged (optim_registry.engines.layerwise.ddp).
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert check_distributed(optimizers.get("adamw_torch_layerwise"), Args()).kind == "ddp"
    with pytest.raises(ValueError, match=r"'lomo' does not support DDP.*before DDP has averaged"):
        check_distributed(optimizers.get("lomo"), Args())


def test_every_record_declares_its_support():
    for name in optimizers.names():
        spec = optimizers.get(name)
        for kind in ("ddp", "fsdp", "zero1", "zero2", "zero3"):
            value = getattr(spec.distributed, kind)
            assert value is True or value is False or (isinstance(value, str) and value), (name, kind)


def test_layerwise_global_clipping_is_refused_under_ddp(monkeypatch):
    # The communication hook steps each bucket as soon as it is averaged: no pass sees the global norm first.
    from optim_registry.plan import check_layerwise_clipping

    spec = optimizers.get("adamw_torch_layerwise")
    args = Args()
    args.max_grad_norm = 1.0
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert check_layerwise_clipping(spec, args, {"clip": "global"}) is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"'clip=global' cannot run under DDP over 2 processes.*clip_per_param"):
        check_layerwise_clipping(spec, args, {"clip": "global"})
