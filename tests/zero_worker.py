"""Run under torchrun: named cases through OptimTrainer under DeepSpeed ZeRO on 2 CPU processes (gloo).

Usage: torchrun --nproc_per_node 2 tests/zero_worker.py OUT_DIR STAGE case ...

Every rank trains on the same batch (``SameBatch``), so ZeRO's averaged gradient is one process's and any
difference in the weights comes from the optimizer. Each rank writes ``OUT_DIR/<case>/rank<r>.pt``: ``status``
(``ok``, ``refused`` with the ValueError's message, or ``error`` with any other exception), the final weights
(and for train/eval optimizers the eval-mode weights), the warnings seen and what the case checked. Cases:

- ``train/NAME[:OPTIM_ARGS][@VARIANT[+VARIANT]]``: train ``NAME`` (``@v512``: a 512-token vocabulary, so the
  LM head's 8-bit state is quantised; ``@v520l3``: 520 tokens and 3 layers, so that ZeRO splits quantised
  tensors mid-block; ``@subgroups``: ZeRO-3 sub-groups of 512 elements; ``@clip``: max_grad_norm=0.5;
  ``@clipkeyless``: the same with no ``gradient_clipping`` key in the DeepSpeed config; ``@noclip``:
  max_grad_norm=0; ``+unaligned``: per-tensor views without cutting split tensors at their block boundaries;
  ``+offload``: the optimizer offloaded to the CPU);
- ``stock_class/NAME[@VARIANT]``: the library's class as the stock Trainer builds it
  (``optimizer_cls_and_kwargs``), the negative control of the registry's ZeRO-3 stepping;
- ``stock/NAME``: the stock ``transformers.TrainingArguments`` with OptimTrainer (refused when it builds);
- ``prebuilt``: ``optimizers=(SGD instance, None)``; ``cls_and_kwargs``: ``optimizer_cls_and_kwargs=(SGD, ...)``;
- ``dsopt/TYPE``: the DeepSpeed config's own optimizer (``AdamW`` or ``Muon``) with the default optim, saving;
- ``resume/NAME``: 4 steps saved at 2, and 2 + 2 resumed from that checkpoint; ``resume_checks``: another
  optimizer, other options, another layout, a flipped byte and a torn checkpoint, on ``resume/adamw_torch``'s
  and ``resume/muon``'s checkpoints (run those first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import traceback
import warnings
from typing import Any

import torch

STEPS = 3
BATCH = 4


class SameBatch(torch.utils.data.Dataset):
    """Token sequences laid out so that, read in order, every one of ``world`` ranks gets the same batch."""

    def __init__(self, world: int, batch: int = BATCH) -> None:
        from optim_registry.testing import TokenDataset

        self.data = TokenDataset().data
        self.world, self.batch = world, batch

    def __len__(self) -> int:
        return len(self.data) * self.world

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        # accelerate gives rank r the batches r, r + world, ...: batch k of every rank is data batch k
        j = (i // (self.batch * self.world)) * self.batch + i % self.batch
        return {"input_ids": self.data[j], "labels": self.data[j]}


def ds_config(stage: int, **zero: Any) -> dict[str, Any]:
    return {"zero_optimization": {"stage": stage, **zero}, "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "train_batch_size": "auto", "gradient_clipping": "auto"}


def parse(case: str) -> tuple[str, str | None, str]:
    """``train/muon:momentum=0.9@clip`` -> (``muon``, ``momentum=0.9``, ``clip``)."""
    body = case.partition("/")[2]
    body, _, variant = body.partition("@")
    name, _, optim_args = body.partition(":")
    return name, optim_args or None, variant


def run_args(name: str, out: str, optim_args: str | None, variant: str, stage: int | None, **kw: Any) -> Any:
    """The arguments of a case; ``stage=None``: the one-process reference's (no DeepSpeed)."""
    from optim_registry.testing import training_args

    kw = {"max_steps": STEPS, "per_device_train_batch_size": BATCH, "train_sampling_strategy": "sequential", **kw}
    flags = set(variant.split("+"))
    if flags & {"clip", "clipkeyless"}:
        kw["max_grad_norm"] = 0.5
    elif "noclip" in flags:
        kw["max_grad_norm"] = 0.0
    if stage is not None:
        zero = {"sub_group_size": 512} if "subgroups" in flags else {}
        if "offload" in flags:
            zero["offload_optimizer"] = {"device": "cpu"}
        kw["deepspeed"] = ds_config(stage, **zero)
        if "clipkeyless" in flags:
            del kw["deepspeed"]["gradient_clipping"]
    return training_args(name, out, optim_args, **kw)


def model_for(variant: str) -> Any:
    from optim_registry.testing import tiny_model

    sized = next((m for m in map(re.compile(r"v(\d+)(?:l(\d+))?$").match, variant.split("+")) if m), None)
    if sized is None:
        return tiny_model()
    return tiny_model(vocab_size=int(sized.group(1)), layers=int(sized.group(2) or 2))


def weights(trainer: Any) -> dict[str, torch.Tensor]:
    """The whole weights on every rank (ZeRO-3 holds partitions: gathered, collectively)."""
    model = trainer.model
    params = list(model.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return {n: p.detach().clone() for n, p in model.named_parameters()}
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def train_case(trainer: Any, record: dict[str, Any], resume: str | None = None) -> None:
    trainer.train(resume_from_checkpoint=resume)
    inner = trainer.optimizer
    while hasattr(inner, "optimizer") and not hasattr(inner, "optim_registry_name"):
        inner = inner.optimizer
    record["class"] = type(inner).__name__
    if callable(getattr(inner, "eval", None)) and hasattr(trainer.optimizer, "eval"):
        # schedule-free: the weights one evaluates and saves; read first, while ZeRO-3 keeps its small
        # parameters gathered as training left them (reading the weights releases them)
        trainer.optimizer.eval()
        record["eval"] = weights(trainer)
        trainer.optimizer.train()
    record["final"] = weights(trainer)
    record["grad_norm"] = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    if callable(getattr(inner, "registry_views", None)):  # per-tensor views of ZeRO's partitions: where each lies
        record["views"] = [(names[id(v.param)], v.start, v.length, v.quantised, v.partial)
                           for v in inner.registry_views()]
    elif any("state1" in s for s in inner.state.values()):  # bitsandbytes in one process: which state is 8-bit
        record["state_bits"] = {names[id(p)]: 8 if s["state1"].dtype == torch.uint8 else 32
                                for p, s in inner.state.items() if "state1" in s and id(p) in names}
    tags = {n: getattr(p, "use_muon", None) for n, p in trainer.model.named_parameters()}
    if any(v is not None for v in tags.values()):
        record["use_muon"] = tags


def one_process_record(case: str, out: str, deepspeed_muon: bool = False, dynamo: bool = False,
                       **kw: Any) -> dict[str, Any]:
    """The reference: ``case`` trained in this one process (no DeepSpeed) on the same batches.

    ``deepspeed_muon``: DeepSpeed's Muon over the registry's groups (``zero.deepspeed_muon``), which runs
    Newton-Schulz itself on 2-D weights when no ZeRO optimizer is around. Muon runs unclipped (as under ZeRO).
    ``dynamo``: leave ``torch.compile`` on (torchao compiles its step; DeepSpeed's Muon would take minutes).
    """
    from optim_registry import OptimTrainer, build
    from optim_registry.engines import zero

    name, optim_args, variant = parse(case)
    if name == "muon":
        kw.setdefault("max_grad_norm", 0.0)
    args = run_args(name, out, optim_args, variant, None, **kw)
    model = model_for(variant)
    extra = {}
    if deepspeed_muon:
        extra["optimizer_cls_and_kwargs"] = zero.deepspeed_muon(build.make_context(args, model), 2)
    record: dict[str, Any] = {}
    # DeepSpeed's Muon is wrapped in torch.compile: minutes on the CPU, for nothing here
    with torch._dynamo.config.patch(disable=not dynamo):
        trainer = OptimTrainer(model=model, args=args, train_dataset=SameBatch(1), **extra)
        train_case(trainer, record)
    return record


def run_case(case: str, out: str, stage: int, world: int) -> dict[str, Any]:
    import transformers

    from optim_registry import OptimTrainer
    from optim_registry.engines import zero

    kind = case.partition("/")[0]
    folder = os.path.join(out, case.replace("/", "_"))
    record: dict[str, Any] = {"status": "ok"}
    if kind in ("train", "stock"):
        name, optim_args, variant = parse(case)
        zero.ALIGN_BLOCKS = "unaligned" not in variant.split("+")  # the benchmark's measure of what it buys
        if kind == "stock":
            args = transformers.TrainingArguments(
                folder, optim=name, optim_target_modules=[r".*attn.*", r".*mlp.*"], report_to=[], use_cpu=True,
                max_steps=STEPS, per_device_train_batch_size=BATCH, deepspeed=ds_config(stage))
        else:
            args = run_args(name, folder, optim_args, variant, stage)
        trainer = OptimTrainer(model=model_for(variant), args=args, train_dataset=SameBatch(world))
        train_case(trainer, record)
    elif kind == "stock_class":
        from optim_registry import build

        name, optim_args, variant = parse(case)
        args = run_args(name, folder, optim_args, variant, stage)
        model = model_for(variant)
        cls, kwargs = build.get_optimizer_cls_and_kwargs(run_args(name, folder, optim_args, variant, None), model)
        trainer = OptimTrainer(model=model, args=args, train_dataset=SameBatch(world),
                               optimizer_cls_and_kwargs=(cls, kwargs))
        train_case(trainer, record)
    elif kind in ("prebuilt", "cls_and_kwargs"):
        args = run_args("sgd", folder, None, "", stage)
        model = model_for("")
        extra: dict[str, Any] = {}
        if kind == "prebuilt":
            extra["optimizers"] = (torch.optim.SGD(model.parameters(), lr=1e-2), None)
        else:
            extra["optimizer_cls_and_kwargs"] = (torch.optim.SGD, {"lr": 1e-2})
        trainer = OptimTrainer(model=model, args=args, train_dataset=SameBatch(world), **extra)
        train_case(trainer, record)
    elif kind == "dsopt":
        config = ds_config(stage)
        kind_name = case.partition("/")[2]
        config["optimizer"] = {"type": kind_name, "params": {"lr": "auto", "weight_decay": "auto",
                                                              "torch_adam": True}}
        args = run_args("adamw_torch", folder, None, "", None, deepspeed=config, save_strategy="steps",
                        save_steps=2)
        trainer = OptimTrainer(model=model_for(""), args=args, train_dataset=SameBatch(world))
        train_case(trainer, record)
        record["manifest"] = read_manifest(os.path.join(folder, "checkpoint-2"))
    elif kind == "resume":
        name, optim_args, variant = parse(case)
        straight = run_args(name, folder, optim_args, variant, stage, max_steps=4, save_strategy="steps",
                            save_steps=2)
        trainer = OptimTrainer(model=model_for(variant), args=straight, train_dataset=SameBatch(world))
        train_case(trainer, record)
        record["manifest"] = read_manifest(os.path.join(folder, "checkpoint-2"))
        resumed = run_args(name, folder + "_resumed", optim_args, variant, stage, max_steps=4)
        trainer = OptimTrainer(model=model_for(variant), args=resumed, train_dataset=SameBatch(world))
        again: dict[str, Any] = {}
        train_case(trainer, again, resume=os.path.join(folder, "checkpoint-2"))
        record["resumed"] = again["final"]
    elif kind == "resume_checks":
        record.update(resume_checks(out, stage, world))
    else:
        raise ValueError(f"unknown case {case!r}")
    return record


def read_manifest(checkpoint: str) -> dict[str, Any] | None:
    path = os.path.join(checkpoint, "optim_registry.json")
    return json.load(open(path)) if os.path.isfile(path) else None


def resume_checks(out: str, stage: int, world: int) -> dict[str, Any]:
    """Each way a resume must be refused (one ValueError each, on every rank), and one that must go on."""
    import torch.distributed as dist

    from optim_registry import OptimTrainer

    adamw = os.path.join(out, "resume_adamw_torch", "checkpoint-2")
    muon = os.path.join(out, "resume_muon", "checkpoint-2")
    flipped, torn = os.path.join(out, "flipped", "checkpoint-2"), os.path.join(out, "torn", "checkpoint-4")
    if dist.get_rank() == 0:
        # another rank's optimizer state: one byte flipped; a newer checkpoint whose rank-1 state is cut short
        shutil.copytree(adamw, flipped)
        state = next(os.path.join(r, f) for r, _, fs in os.walk(flipped) for f in fs if f.startswith("zero_pp_rank_1"))
        with open(state, "r+b") as fh:
            fh.seek(os.path.getsize(state) // 2)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0xFF]))
        shutil.copytree(adamw, os.path.join(out, "torn", "checkpoint-2"))
        shutil.copytree(adamw, torn)
        state = next(os.path.join(r, f) for r, _, fs in os.walk(torn) for f in fs if f.startswith("zero_pp_rank_1"))
        os.truncate(state, os.path.getsize(state) // 2)
    dist.barrier()
    tries = {
        "other_optimizer": ("sgd", None, {}, adamw),
        "other_options": ("muon", "momentum=0.9", {}, muon),
        "other_layout": ("adamw_torch", None, {"optim_groups": [{"params": "q_proj", "lr": 1e-3}]}, adamw),
        "flipped_byte": ("adamw_torch", None, {}, flipped),
        "torn": ("adamw_torch", None, {}, torn),
        "newest_complete": ("adamw_torch", None, {"output_dir": os.path.join(out, "torn")}, True),
    }
    found: dict[str, Any] = {}
    for label, (name, optim_args, kw, checkpoint) in tries.items():
        folder = kw.pop("output_dir", os.path.join(out, f"check_{label}"))
        args = run_args(name, folder, optim_args, "", stage, max_steps=4, **kw)
        trainer = OptimTrainer(model=model_for(""), args=args, train_dataset=SameBatch(world))
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                trainer.train(resume_from_checkpoint=checkpoint)
            found[label] = {"status": "ok", "step": trainer.state.global_step,
                            "warnings": [str(w.message) for w in seen if "torn" in str(w.message)]}
        except ValueError as exc:
            found[label] = {"status": "refused", "error": str(exc)}
    return {"checks": found}


def launch(out: str, stage: int, cases: list[str], timeout: float = 900,
           dynamo: bool = False) -> dict[str, list[dict[str, Any]]]:
    """One 2-process torchrun launch of this worker; case -> [rank 0's record, rank 1's record].

    ``dynamo``: leave ``torch.compile`` on (torchao's names need it; DeepSpeed's Muon then compiles for minutes).
    """
    from pathlib import Path

    from torchrun import torchrun

    # DeepSpeed's Muon is wrapped in torch.compile: minutes of compiling on the CPU, for nothing here
    env = {} if dynamo else {"TORCHDYNAMO_DISABLE": "1"}
    try:
        torchrun(Path(__file__).resolve(), [out, str(stage), *cases], env=env, timeout=timeout, scratch=out)
    except RuntimeError as exc:
        raise RuntimeError(f"the ZeRO-{stage} launch failed: {exc}") from None
    folder = Path(out) / "results"
    return {c: [torch.load(folder / c.replace("/", "_") / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
            for c in cases}


def main() -> None:
    # The CPU accelerator compiles a shared-memory op with g++ on first use (about 90 s); gloo needs none of it.
    import deepspeed.comm.torch  # noqa: F401

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    torch.set_num_threads(1)
    out, stage, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    for case in cases:
        record: dict[str, Any]
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                record = run_case(case, out, stage, world)
            except ValueError as exc:
                record = {"status": "refused", "error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - the message is the finding
                record = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()[-3000:]}
        record["warnings"] = sorted({str(w.message) for w in seen if issubclass(w.category, UserWarning)})
        folder = os.path.join(out, "results", case.replace("/", "_"))
        os.makedirs(folder, exist_ok=True)
        torch.save(record, os.path.join(folder, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
