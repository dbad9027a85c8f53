"""DeepSpeed ZeRO (stages 1, 2 and 3) through the Trainer: each name trains as in one process, or is refused.

Under ZeRO the torch optimizer never sees the model's tensors. ZeRO-1/2 give it one flat fp32 partition per
param group and step one group at a time (the other groups hidden); ZeRO-3 gives it flat fp32 sub-groups and
calls ``step()`` once per sub-group, every other group's ``params`` emptied; the model's weights are copied
from those fp32 partitions only after a step. A record's ``distributed.zero1/2/3`` says whether a stage can
work; ``distributed.zero_math`` how it runs:

- ``"local"``: the library's own step on the flat partitions, exact for elementwise updates. Under ZeRO-3 a
  step sees only the group it updates, and a group split into several sub-groups keeps the group-level
  counters it had before its first sub-group (schedule-free's ``k`` / ``weight_sum`` were advanced once per
  sub-group of every group: 1e-2 off in 3 steps); ``train()`` / ``eval()`` (schedule-free) reach the model's
  weights (``ZeroStepped``).
- ``"views"``: the library's own step on per-tensor views of the flat partitions (``ZeroViews``), for state
  quantised in blocks of each tensor (bitsandbytes 8-bit, torchao, FlashOptim): one view per model tensor piece
  in this rank's partition, each with the whole tensor's 8-/32-bit decision, and the piece of a tensor split
  between two ranks cut at its first block boundary, so its blocks are the tensor's own. The library's state is
  keyed by the views and saved and loaded through DeepSpeed's checkpoint as the optimizer's own state dict.
- ``"deepspeed_muon"``: DeepSpeed's own Muon (``deepspeed.runtime.zero.muon``), which orthogonalises whole
  gradients inside ZeRO's partitioning, handed the registry's groups, rates and routing: each parameter's
  ``use_muon`` tag is the registry's route (the labels table's, ``build.matrix_routes``), never DeepSpeed's name test; the AdamW
  side is ``torch.optim.AdamW``, as the registry's own. What it cannot follow is refused by name (``check``).

Everything the arguments alone show is refused when they are created (``check``, from
``distributed.check_distributed``); the DeepSpeed config is settled when the optimizer is built
(``configure``), before ``deepspeed.initialize`` reads it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sys
import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..spec import OptimizerSpec

ZERO_KINDS = ("zero1", "zero2", "zero3")
#: Newton-Schulz iterations DeepSpeed's Muon runs (its ZeRO paths never pass another count).
DEEPSPEED_NS_STEPS = 5
#: DeepSpeed's "standard" Newton-Schulz: the registry's quintic coefficients in bfloat16 ("gram", DeepSpeed's
#: default, is another iteration in float16).
NS_METHOD = "standard"
FSDP2_WAY = "fsdp='full_shard', fsdp_config={'fsdp_version': 2}"

def stage_of(kind: str) -> int | None:
    """``zero2`` -> 2; ``None`` for a back-end that is not ZeRO."""
    return int(kind[-1]) if kind in ZERO_KINDS else None


def _clipping(args: Any, config: dict[str, Any]) -> tuple[float, bool]:
    """The gradient-clipping norm DeepSpeed will use and whether the user asked for it explicitly.

    ``"auto"`` (or no key: ``configure`` fills it the same way) takes ``max_grad_norm``; transformers' default
    for that counts as not asked.
    """
    import transformers

    value = config.get("gradient_clipping", "auto")
    if value in ("auto", None):
        norm = float(getattr(args, "max_grad_norm", 0.0) or 0.0)
        # transformers' own default (plan.default_max_grad_norm reads the same field; importing it here
        # would close an import cycle: plan imports this module)
        default = float(transformers.TrainingArguments.__dataclass_fields__["max_grad_norm"].default)
        return norm, norm > 0 and norm != default
    return float(value), float(value) > 0


def check(spec: OptimizerSpec, args: Any, kind: str, config: dict[str, Any], options: Mapping[str, Any]) -> None:
    """Refuse, with one ``ValueError``, what the arguments show a supported ZeRO stage cannot do for ``spec``.

    ``options``: every declared option, typed (the plan's); ``config``: the DeepSpeed config.
    """
    stage = stage_of(kind)
    if stage is None:
        return
    zero = config.get("zero_optimization") or {}
    offload = (zero.get("offload_optimizer") or {}).get("device")
    if spec.protocol == "train_eval" and offload == "nvme":
        raise ValueError(
            f"optim={spec.name!r} switches between train and eval weights (train()/eval()), which needs the "
            f"fp32 weights in memory; DeepSpeed ZeRO stage {stage} with offload_optimizer device 'nvme' swaps them "
            "out. Offload to 'cpu' instead, or drop the optimizer offload."
        )
    if offload not in (None, "none") and config.get("zero_force_ds_cpu_optimizer") is True:
        raise ValueError(
            f"optim={spec.name!r} under DeepSpeed ZeRO stage {stage} with offload_optimizer device {offload!r}: "
            "'zero_force_ds_cpu_optimizer': true makes accelerate replace the optimizer by DeepSpeed's CPU Adam "
            f"(keeping only its lr and weight_decay), so optim={spec.name!r} would not train. Drop the key (the "
            f"registry then sets it false and optim={spec.name!r} steps the offloaded partitions), or give the "
            "DeepSpeed config an \"optimizer\" block of its own for DeepSpeed's CPU Adam."
        )
    if spec.distributed.zero_math == "deepspeed_muon":
        _check_muon(spec, args, stage, config, options)
    if spec.distributed.zero_math == "views":
        _check_views(spec, stage, config)


def _check_views(spec: OptimizerSpec, stage: int, config: dict[str, Any]) -> None:
    """Refuse the DeepSpeed features that read or write the optimizer's state by ZeRO's flat partitions.

    ``ZeroViews`` keys the library's state by per-tensor views; these would save, load or swap nothing of it.
    """
    zero = config.get("zero_optimization") or {}
    offload = (zero.get("offload_optimizer") or {}).get("device")
    found = []
    if offload == "nvme":
        found.append("offload_optimizer device 'nvme' (it swaps the state of each flat partition to disk)")
    if zero.get("elastic_checkpoint"):
        found.append("elastic_checkpoint (it saves the state of each flat partition)")
    if (config.get("checkpoint") or {}).get("load_universal"):
        found.append("checkpoint.load_universal (it loads each parameter's slice of the flat partitions' state)")
    if zero.get("zenflow"):
        found.append("zenflow (it steps the partitions with its own CPU optimizer)")
    if found:
        raise ValueError(
            f"optim={spec.name!r} under DeepSpeed ZeRO stage {stage}: its state is quantised in blocks of each "
            "tensor, so the registry steps it on per-tensor views of ZeRO's flat partitions and keys its state "
            f"by them, which {'; '.join(found)} cannot follow. Drop "
            f"{'it' if len(found) == 1 else 'them'} from the DeepSpeed config, train with FSDP2 ({FSDP2_WAY}), "
            "or use a 32-bit name (adamw_torch, paged_adamw_32bit, lion_32bit)."
        )
    if spec.protocol == "train_eval":
        raise ValueError(
            f"optim={spec.name!r} under DeepSpeed ZeRO stage {stage}: a train()/eval() optimizer cannot be stepped "
            f"on per-tensor views (zero_math 'views'); train it with FSDP2 ({FSDP2_WAY})."
        )


def _check_muon(spec: OptimizerSpec, args: Any, stage: int, config: dict[str, Any], options: Mapping[str, Any]) -> None:
    problems = muon_conflicts(dict(options))
    where = f"optim={spec.name!r} under DeepSpeed ZeRO stage {stage} runs DeepSpeed's own Muon"
    way_out = f"or train with FSDP2 ({FSDP2_WAY}) or DDP, where the registry's own Muon runs"
    if problems:
        raise ValueError(f"{where}, which cannot follow {'; '.join(problems)}. Drop these optim_args, {way_out}.")
    norm, explicit = _clipping(args, config)
    if norm > 0 and explicit:
        raise ValueError(
            f"{where}, which replaces each matrix's gradient by its orthogonalised update before ZeRO measures the "
            f"gradient norm: clipping to {norm:g} (max_grad_norm / the DeepSpeed config's gradient_clipping) would "
            "clip that update (norm about sqrt(rows) per matrix), not the gradient, and shrink every step. Set "
            f"max_grad_norm=0 and gradient_clipping 0 or 'auto' in the DeepSpeed config, {way_out} with clipping."
        )
    zero = config.get("zero_optimization") or {}
    if stage == 3 and zero.get("reduce_scatter") is True:
        raise ValueError(
            f"{where}, which needs whole gradients: DeepSpeed refuses it with 'reduce_scatter': true. Set "
            "zero_optimization.reduce_scatter to false (or leave it out: the registry then sets it false)."
        )


def muon_conflicts(values: dict[str, Any]) -> list[str]:
    """What in ``values`` (Muon options or a group's settings) DeepSpeed's Muon cannot do, as phrases."""
    problems = []
    if "nesterov" in values and not values["nesterov"]:
        problems.append("nesterov=false (it always uses Nesterov momentum)")
    if "ns_steps" in values and int(values["ns_steps"]) != DEEPSPEED_NS_STEPS:
        problems.append(f"ns_steps={values['ns_steps']} (it runs {DEEPSPEED_NS_STEPS} Newton-Schulz iterations)")
    if values.get("adjust_lr_fn") not in (None, "original"):
        problems.append(f"adjust_lr_fn={values['adjust_lr_fn']!r} (it scales each matrix's rate by "
                        "sqrt(max(1, rows/cols)), adjust_lr_fn='original')")
    return problems


# ----------------------------------------------------------------------------------------- the Trainer


def configure(trainer: Any, spec: OptimizerSpec | None) -> None:
    """Settle the DeepSpeed config ``deepspeed.initialize`` will read, when the optimizer is built.

    ``spec``: the record the registry builds from (``None``: the optimizer comes from elsewhere).

    - no ``gradient_clipping`` key: DeepSpeed would not clip while ``max_grad_norm`` says to (and one process
      clips): it is filled from ``max_grad_norm``, as ``"auto"`` is;
    - an optimizer offload and no ``zero_force_ds_cpu_optimizer`` key: set false, so that accelerate keeps the
      optimizer the Trainer built instead of swapping in DeepSpeed's CPU Adam;
    - Muon: clipping off (only transformers' default ``max_grad_norm`` gets here: ``check`` refuses any other),
      with one warning; ZeRO-3: ``reduce_scatter`` false, which DeepSpeed's Muon needs.
    """
    plugin = getattr(getattr(trainer.accelerator, "state", None), "deepspeed_plugin", None)
    config = getattr(plugin, "deepspeed_config", None)
    if not isinstance(config, dict):
        return
    zero = config.setdefault("zero_optimization", {})
    stage = int(zero.get("stage", 0) or 0)
    norm = float(getattr(trainer.args, "max_grad_norm", 0.0) or 0.0)
    if "gradient_clipping" not in config and norm > 0:
        config["gradient_clipping"] = norm
    offload = (zero.get("offload_optimizer") or {}).get("device")
    if offload not in (None, "none") and "optimizer" not in config:
        # accelerate would replace the Trainer's optimizer, whatever it is, by DeepSpeed's CPU Adam (Adam with L2
        # decay for anything but torch's AdamW, and only lr / weight_decay carried over): SGD, 8-bit AdamW or
        # Muon trained as Adam without a word. False keeps the optimizer that was asked for (``check`` refuses
        # an explicit true).
        config.setdefault("zero_force_ds_cpu_optimizer", False)
    if spec is None or stage not in (1, 2, 3):
        return
    if spec.distributed.zero_math != "deepspeed_muon":
        return
    if float(config.get("gradient_clipping") or 0.0) > 0:
        warnings.warn(
            f"optim={spec.name!r} under DeepSpeed ZeRO stage {stage}: no gradient clipping is applied (max_grad_norm="
            f"{norm:g} is transformers' default). DeepSpeed's Muon measures the norm after orthogonalising, so "
            "clipping would shrink the update itself. Set max_grad_norm=0 to say no clipping is wanted, or train "
            "with FSDP2 or DDP to clip the gradients.",
            UserWarning,
            stacklevel=3,
        )
        config["gradient_clipping"] = 0.0
    if stage == 3:
        zero["reduce_scatter"] = False


def check_given(trainer: Any) -> None:
    """Refuse an optimizer or scheduler instance given to a Trainer under DeepSpeed: it would be replaced.

    transformers' ``deepspeed_init`` sets ``trainer.optimizer = None`` and builds one from the arguments (and
    a scheduler from them), so ``optimizers=(opt, sched)`` would train something else without a word.
    """
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return
    from accelerate.utils import DeepSpeedOptimizerWrapper

    given = []
    optimizer = getattr(trainer, "optimizer", None)
    if optimizer is not None and not isinstance(optimizer, DeepSpeedOptimizerWrapper):
        given.append(f"the optimizer {type(optimizer).__name__}")
    scheduler = getattr(trainer, "lr_scheduler", None)
    if scheduler is not None and not getattr(trainer, "_created_lr_scheduler", False):
        given.append(f"the scheduler {type(scheduler).__name__}")
    if not given:
        return
    stage = getattr(trainer.accelerator.state.deepspeed_plugin, "zero_stage", "?")
    cls = type(optimizer) if optimizer is not None and not isinstance(optimizer, DeepSpeedOptimizerWrapper) else None
    example = f"{cls.__module__}.{cls.__qualname__}" if cls is not None else "torch.optim.SGD"
    raise ValueError(
        f"{' and '.join(given)} given to the Trainer (optimizers=(...)) would not be used under DeepSpeed ZeRO "
        f"stage {stage}: transformers' deepspeed_init builds a new optimizer and scheduler from the arguments "
        "instead, without a word. Choose the optimizer by name (optim='sgd', optim_args='momentum=0.9'), or pass "
        f"its class and keyword arguments: optimizer_cls_and_kwargs=({example}, {{'lr': ...}}); choose the "
        "scheduler with lr_scheduler_type / lr_scheduler_kwargs."
    )


def attach(optimizer: Any) -> None:
    """Give a ``ZeroStepped`` optimizer inside DeepSpeed's wrappers the ZeRO optimizer that holds it."""
    holder, inner = None, optimizer
    while inner is not None and not isinstance(inner, ZeroStepped):
        holder, inner = inner, getattr(inner, "optimizer", None)
    if inner is not None and holder is not None and inner._registry_zero is None:
        inner._registry_zero = holder


# ----------------------------------------------------------------------------------------- "local"


class ZeroStepped:
    """Put in front of a library optimizer's class under ZeRO-3 or for the train/eval protocol.

    ``step``, ZeRO-3: the groups without parameters are hidden (as ZeRO-1/2 do themselves), and a group that
    ZeRO-3 split into several flat sub-groups starts each of them from the group-level values (counters such as
    schedule-free's ``k``, ``weight_sum``, ``lr_max``) it had before the first one of this step, so they
    advance once per step, as in one process.

    ``train()`` / ``eval()``: they move ZeRO's fp32 partitions; the model's weights are then copied from them,
    as after a step (ZeRO-1/2 ``update_lp_params``, ZeRO-3 each sub-group's partition), so evaluation and saving
    see the weights one process would.
    """

    _registry_zero: Any = None  # the engine's ZeRO optimizer (``attach``)
    _registry_zero_stage: int = 0

    def step(self, closure: Any = None) -> Any:
        if self._registry_zero_stage != 3:
            return super().step(closure)  # type: ignore[misc]
        groups = self.param_groups  # type: ignore[attr-defined]
        live = [g for g in groups if g["params"]]
        self._registry_one_count_per_step(live)
        self.param_groups = live
        try:
            return super().step(closure)  # type: ignore[misc]
        finally:
            self.param_groups = groups

    def _registry_one_count_per_step(self, live: list[dict[str, Any]]) -> None:
        # Within one ZeRO-3 step each sub-group of a group comes once, in order: a sub-group seen before starts
        # a new step; any other restores the values the group had before the step's first sub-group.
        marks = self.__dict__.setdefault("_registry_subgroups", {})
        for group in live:
            first = id(group["params"][0])
            seen, before = marks.get(id(group), (set(), None))
            if before is None or first in seen:
                before = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
                seen = {first}
            else:
                group.update(copy.deepcopy(before))
                seen.add(first)
            marks[id(group)] = (seen, before)

    def _registry_switch(self, mode: str) -> Any:
        zero = self._registry_zero
        switch = getattr(super(), mode)
        if zero is None:  # before DeepSpeed wrapped it: nothing to reach yet
            return switch()
        groups = self.param_groups  # type: ignore[attr-defined]
        before = [g.get("train_mode") for g in groups]
        saved = None
        if self._registry_zero_stage == 3:
            # Outside step() the groups hold no parameters: give them their fp32 sub-groups for the switch.
            saved = [g["params"] for g in groups]
            flats: dict[int, list[Any]] = {}
            for sub, gid in sorted(zero.sub_group_to_group_id.items()):
                flats.setdefault(gid, []).append(zero.fp32_partitioned_groups_flat[sub])
            for gid, group in enumerate(groups):
                group["params"] = flats.get(gid, [])
        try:
            result = switch()
        finally:
            if saved is not None:
                for group, params in zip(groups, saved, strict=True):
                    group["params"] = params
        if [g.get("train_mode") for g in groups] != before:
            _copy_to_model(zero, self._registry_zero_stage)
        return result


def _copy_to_model(zero: Any, stage: int) -> None:
    """The model's weights from ZeRO's fp32 partitions, as DeepSpeed does after a step (every rank calls it)."""
    import torch

    with torch.no_grad():
        if stage == 3:
            # As around DeepSpeed's own checkpointing: release every gathered copy first (small "persistent"
            # parameters stay gathered between steps, and gathering skips a parameter that is), write the new
            # partitions, then gather the persistent ones again.
            zero.checkpoint_event_prologue()
            for sub in range(len(zero.fp16_groups)):
                zero._reassign_or_swap_out_partitioned_parameters(sub)
            zero.checkpoint_event_epilogue()
        else:
            zero.update_lp_params()


def _train(self: Any) -> Any:
    return self._registry_switch("train")


def _eval(self: Any) -> Any:
    return self._registry_switch("eval")


def needs_stepping(spec: OptimizerSpec, kind: str) -> bool:
    """Whether ``spec`` under ``kind`` needs ``ZeroStepped`` (or ``ZeroViews``) in front of its class."""
    math = spec.distributed.zero_math
    return math == "views" or (math == "local" and (kind == "zero3" or spec.protocol == "train_eval"))


@functools.cache
def zero_stepped_class(cls: type, stage: int, views: bool = False) -> type:
    """``cls`` with ``ZeroStepped`` (``views``: ``ZeroViews``) in front; built with ``cls(params, **kwargs)``."""
    body: dict[str, Any] = {"__module__": __name__, "_registry_zero_stage": stage}
    if callable(getattr(cls, "train", None)) and callable(getattr(cls, "eval", None)):
        body.update(train=_train, eval=_eval)
    bases: tuple[type, ...] = (ZeroStepped, cls)
    if views:
        bases = (ZeroViews, cls)
        if callable(getattr(cls, "_new_buffer", None)):  # torchao: its state buffers follow the whole tensor
            bases = (ZeroViews, _TorchaoBuffers, cls)
    return type(f"ZeRO{stage}{cls.__name__}", bases, body)


# ----------------------------------------------------------------------------------------- "views"

#: Cut the piece of a tensor that starts mid-block (the second rank's part of a tensor split between two
#: partitions) at the tensor's next block boundary, so that its other blocks are the tensor's own, as in one
#: process. Only the block the split runs through differs then (each rank scales its part by its own maximum).
#: Switched off only to measure what it buys (``benchmarks/zero_agreement.py``).
ALIGN_BLOCKS = True


@dataclass(frozen=True)
class Piece:
    """The elements of one model tensor in this rank's flat fp32 partition (ZeRO-1/2) or sub-group (ZeRO-3)."""

    offset: int  # where they start in the flat partition
    length: int
    start: int  # where they start in the whole (flattened) tensor
    numel: int  # the whole tensor's size
    param: Any  # the model parameter (its overrides: 32-bit embeddings, bitsandbytes' override_config)


def partition_pieces(zero: Any, stage: int) -> list[tuple[Any, list[Piece]]]:
    """``[(flat fp32 partition, its pieces)]`` from DeepSpeed's own bookkeeping, in ZeRO's order.

    ZeRO-1/2 (``stage_1_and_2.py``): group ``i``'s parameters (``round_robin_bit16_groups``) lie one after the
    other in one flat buffer, each followed by its alignment padding (``round_robin_bit16_padding``); rank ``r``
    holds ``[r * partition_size, (r + 1) * partition_size)`` of it as ``single_partition_of_fp32_groups[i]``.
    ZeRO-3 (``stage3.py``): every parameter is split itself, rank ``r`` holding ``[r * n, (r + 1) * n)`` of it
    (``n = partition_numel()``, the last rank's part padded), and sub-group ``k``'s flat fp32 buffer
    (``fp32_partitioned_groups_flat[k]``) is its parameters' parts (``fp16_groups[k]``) one after the other.
    """
    import torch.distributed as dist

    out = []
    if stage == 3:
        for sub, flat in enumerate(zero.fp32_partitioned_groups_flat):
            rank = dist.get_rank(group=zero.sub_group_process_groups[sub])
            pieces, at = [], 0
            for param in zero.fp16_groups[sub]:
                size, numel = int(param.partition_numel()), int(param.ds_numel)
                start = size * rank
                length = max(0, min(size, numel - start))
                if length:
                    pieces.append(Piece(at, length, start, numel, param))
                at += size
            _check_covered(flat, at, f"ZeRO-3 sub-group {sub}")
            out.append((flat, pieces))
        return out
    metas = getattr(zero, "round_robin_bit16_meta", None)  # sizes that survive DeepSpeed's state offload
    for i, flat in enumerate(zero.single_partition_of_fp32_groups):
        size = int(zero.partition_size[i])
        low = size * dist.get_rank(group=zero.real_dp_process_group[i])
        params = zero.round_robin_bit16_groups[i]
        numels = [int(m.numel()) for m in metas[i]] if metas else [int(p.numel()) for p in params]
        paddings = getattr(zero, "round_robin_bit16_padding", None)
        pads = paddings[i] if paddings else [0] * len(params)
        pieces, at = [], 0
        for param, numel, pad in zip(params, numels, pads, strict=True):
            first, end = max(at, low), min(at + numel, low + size)
            if first < end:
                pieces.append(Piece(first - low, end - first, first - at, numel, param))
            at += numel + pad
        _check_covered(flat, size, f"ZeRO-{stage} group {i}")
        out.append((flat, pieces))
    return out


def _check_covered(flat: Any, size: int, where: str) -> None:
    if int(flat.numel()) != size:
        import deepspeed

        raise RuntimeError(
            f"{where}: the flat fp32 partition has {flat.numel()} elements where DeepSpeed's bookkeeping gives "
            f"{size}; optim_registry.engines.zero reads deepspeed 0.19's layout and this is deepspeed "
            f"{deepspeed.__version__}."
        )


def split_piece(piece: Piece, block: int | None) -> list[tuple[int, int, bool]]:
    """``[(offset in the piece, length, partial block)]``: the piece cut at the tensor's own block boundaries.

    A piece that starts mid-block gets that block's rest as a view of its own, and one that ends mid-block
    (the tensor goes on in the next rank's partition) the start of that block; the rest starts and ends on the
    tensor's block boundaries (or at its end), so its blocks are the ones one process quantises.
    """
    if not block or not ALIGN_BLOCKS:
        return [(0, piece.length, False)]
    first, end = piece.start, piece.start + piece.length
    head = min(end, -(-first // block) * block)
    body = end if end == piece.numel else max(head, end // block * block)
    out = []
    if head > first:
        out.append((0, head - first, True))
    if body > head:
        out.append((head - first, body - head, False))
    if end > body:
        out.append((body - first, end - body, True))
    return out


@dataclass
class View:
    """One view the library steps: a run of one model tensor's elements in a flat partition."""

    tensor: Any  # what the library steps and keys its state by: shares the flat partition's storage
    offset: int  # in the flat partition
    length: int
    param: Any  # the model parameter it is part of
    start: int  # its first element in that (flattened) parameter
    quantised: bool  # the whole tensor's decision, as one process takes it
    partial: bool  # a block the partition boundary runs through (quantised with this rank's part only)
    block: int | None  # the quantisation block of this view (its own length for a partial block)
    config: dict[str, Any]  # bitsandbytes: this view's override (optim_bits, min_8bit_size, the tensor's own)


class ZeroViews(ZeroStepped):
    """Step a library optimizer whose state is quantised in blocks of each tensor on per-tensor views of ZeRO's
    flat fp32 partitions, as one process steps the model's tensors.

    ZeRO hands the optimizer one flat partition per group (ZeRO-1/2) or flat sub-groups (ZeRO-3). Stepped on
    those, a block-quantised optimizer lays its blocks over them, across tensors, and quantises what one process
    keeps in 32 bits (tensors under ``min_8bit_size``, the embeddings): 1.8e-2 from one process after 3 steps
    here. Instead, every time the library steps, saves or loads, each flat partition is replaced in its group by
    views of it (``flat.narrow``: contiguous, sharing its storage, and its gradient likewise), one per model
    tensor piece in it (``partition_pieces``, from DeepSpeed's bookkeeping), and each view takes the whole
    tensor's decisions: bitsandbytes gets a per-view override (8-bit if the whole tensor is, with its own
    overrides), torchao a buffer quantised if the whole tensor's would be. A piece that starts or ends
    mid-block is cut there (``split_piece``). The library's state is keyed by the views and kept apart from
    ``self.state`` (which DeepSpeed reads by flat partition and finds empty); ``state_dict()`` /
    ``load_state_dict()`` are the library's own over the views, which is what DeepSpeed saves in its checkpoint
    and hands back on resume.
    """

    def step(self, closure: Any = None) -> Any:
        zero = self._registry_holder()
        groups = self.param_groups  # type: ignore[attr-defined]
        live = [g for g in groups if g["params"]]
        if self._registry_zero_stage == 3:
            self._registry_one_count_per_step(live)
        with self._registry_on_views(zero, live, [g["params"] for g in live], grads=True):
            self.param_groups = live
            try:
                return _library_step(type(self))(self, closure)
            finally:
                self.param_groups = groups

    def state_dict(self) -> dict[str, Any]:
        zero = self._registry_holder()
        if zero is None:  # not under ZeRO yet
            return super().state_dict()  # type: ignore[misc]
        groups = self.param_groups  # type: ignore[attr-defined]
        with self._registry_on_views(zero, groups, self._registry_group_flats(zero), grads=False):
            return super().state_dict()  # type: ignore[misc]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        zero = self._registry_holder()
        if zero is None:
            return super().load_state_dict(state_dict)  # type: ignore[misc]
        groups = self.param_groups  # type: ignore[attr-defined]
        params = [g["params"] for g in groups]
        with self._registry_on_views(zero, groups, self._registry_group_flats(zero), grads=False):
            views = [len(g["params"]) for g in groups]
            saved = [len(g["params"]) for g in state_dict.get("param_groups", ())]
            if saved != views:
                raise ValueError(
                    f"optim={getattr(self, 'optim_registry_name', type(self).__name__)!r} under DeepSpeed ZeRO "
                    f"stage {self._registry_zero_stage}: the checkpoint's optimizer state has {saved} tensor "
                    f"pieces per group where this run has {views}: it was saved with another number of ranks, "
                    "another model or DeepSpeed layout, or before the registry stepped block-quantised state on "
                    "per-tensor views (one flat partition per group). Resume it the way it was saved, or start "
                    "the optimizer afresh."
                )
            try:
                super().load_state_dict(state_dict)  # type: ignore[misc]
            finally:
                # The load made new group dicts (with the views as their parameters): give them ZeRO's back.
                for group, own in zip(self.param_groups, params, strict=True):  # type: ignore[attr-defined]
                    group["params"] = own
        return None

    # -- the views ------------------------------------------------------------------------------------

    def _registry_holder(self) -> Any:
        """The ZeRO optimizer that holds this one (``attach``; else found among its callers: DeepSpeed steps,
        saves and loads it from its own methods, before the Trainer may have attached it)."""
        zero = self._registry_zero
        if zero is None:
            frame = sys._getframe(1)
            for _ in range(16):
                if frame is None:
                    break
                holder = frame.f_locals.get("self")
                if holder is not self and getattr(holder, "optimizer", None) is self:
                    zero = self._registry_zero = holder
                    break
                frame = frame.f_back
        return zero

    def _registry_group_flats(self, zero: Any) -> list[list[Any]]:
        """Each group's flat partitions (ZeRO-3: all its sub-groups, also where ZeRO left the group empty)."""
        groups = self.param_groups  # type: ignore[attr-defined]
        if self._registry_zero_stage != 3:
            return [list(g["params"]) for g in groups]
        flats: list[list[Any]] = [[] for _ in groups]
        for sub, gid in sorted(zero.sub_group_to_group_id.items()):
            flats[gid].append(zero.fp32_partitioned_groups_flat[sub])
        return flats

    @contextlib.contextmanager
    def _registry_on_views(self, zero: Any, groups: list[dict[str, Any]], flats: list[list[Any]], grads: bool):
        """``groups`` hold the views of ``flats`` (and ``self.state`` the library's state) inside the block."""
        if zero is None:
            raise RuntimeError(
                f"{type(self).__name__} steps per-tensor views of DeepSpeed ZeRO's partitions and was not handed "
                "to a ZeRO optimizer; build it through optim_registry under DeepSpeed (OptimTrainer)."
            )
        table = self.__dict__.setdefault("_registry_views", {})
        if not table:
            self._registry_build_views(zero, table)
        used: list[View] = []
        own = [g["params"] for g in groups]
        for group, group_flats in zip(groups, flats, strict=True):
            tensors = []
            for flat in group_flats:
                entry = table.get(id(flat))
                if entry is None or entry[0] is not flat:
                    raise RuntimeError(f"{type(self).__name__}: a flat partition DeepSpeed did not lay out")
                grad = flat.grad if grads else None
                for view in entry[1]:
                    # the flat partition's storage as it is now, and this step's gradient
                    view.tensor.data = flat.data.narrow(0, view.offset, view.length)
                    view.tensor.grad = None if grad is None else grad.narrow(0, view.offset, view.length)
                    tensors.append(view.tensor)
                    used.append(view)
            group["params"] = tensors
        self._registry_before_library(used)
        outer = self.state  # type: ignore[has-type]
        self.state = self.__dict__.setdefault("_registry_view_state", defaultdict(dict))
        try:
            yield
        finally:
            self._registry_view_state = self.state  # a load replaces it
            self.state = outer
            for group, params in zip(groups, own, strict=True):
                group["params"] = params
            for view in used:
                view.tensor.grad = None

    def _registry_build_views(self, zero: Any, table: dict[int, Any]) -> None:
        import torch

        library = _library_of(self)
        pieces = partition_pieces(zero, self._registry_zero_stage)
        decide = library.decider(self, [p.param for _, ps in pieces for p in ps])
        buffers = self.__dict__.setdefault("_registry_buffers", {})
        for flat, flat_pieces in pieces:
            views = []
            for piece in flat_pieces:
                quantised, block, config = decide(piece)
                for offset, length, partial in split_piece(piece, block if quantised else None):
                    # requires_grad as the flat partition (DeepSpeed sets it; FlashOptim skips tensors without)
                    tensor = torch.empty(0, dtype=flat.dtype, device=flat.device).requires_grad_(flat.requires_grad)
                    view = View(tensor, piece.offset + offset, length, piece.param, piece.start + offset, quantised,
                                partial, length if partial else block, config)
                    buffers[id(tensor)] = view
                    views.append(view)
            table[id(flat)] = (flat, views)

    def _registry_before_library(self, views: list[View]) -> None:
        _library_of(self).before(self, views)

    def registry_views(self) -> list[View]:
        """The views this rank steps, in ZeRO's order (empty before DeepSpeed first stepped, saved or loaded)."""
        return [view for _, views in self.__dict__.get("_registry_views", {}).values() for view in views]


def _library_step(cls: type) -> Any:
    """The library's own ``step`` (past ``ZeroViews``), without torch's hook wrapper: its step hooks already ran
    around ``ZeroViews.step``, with ZeRO's groups, and must not run again with the views."""
    mro = cls.__mro__
    for klass in mro[mro.index(ZeroStepped) + 1:]:
        if "step" in klass.__dict__:
            step = klass.__dict__["step"]
            return step.__wrapped__ if getattr(step, "hooked", False) else step
    raise TypeError(f"{cls.__name__} has no step()")


class _Library:
    """How one library quantises: the block size and the per-tensor decision, and how a view is told it."""

    def decider(self, optimizer: Any, params: list[Any]) -> Any:
        return lambda piece: (False, None, {})

    def before(self, optimizer: Any, views: list[View]) -> None:
        pass


class _Bitsandbytes(_Library):
    """bitsandbytes 8-bit: blocks of 256; 8-bit state for tensors of ``min_8bit_size`` elements or more, unless
    an override (the registry's 32-bit embeddings, ``override_config``) says otherwise."""

    BLOCK = 256  # bitsandbytes' blockwise 8-bit optimizers (init_state's blocksize)

    def decider(self, optimizer: Any, params: list[Any]) -> Any:
        overrides = _take_bnb_overrides(optimizer, params)
        bits, threshold = int(optimizer.args.optim_bits), int(optimizer.args.min_8bit_size)

        def decide(piece: Piece) -> tuple[bool, int | None, dict[str, Any]]:
            own = overrides.get(id(piece.param), {})
            quantised = (int(own.get("optim_bits", bits)) == 8
                         and piece.numel >= int(own.get("min_8bit_size", threshold)))
            return quantised, self.BLOCK, {**own, "optim_bits": 8 if quantised else 32, "min_8bit_size": 0}

        return decide

    def before(self, optimizer: Any, views: list[View]) -> None:
        from bitsandbytes.optim import GlobalOptimManager

        manager = optimizer.mng
        if manager is GlobalOptimManager.get_instance():  # overrides of its own, never the process-wide ones
            manager = GlobalOptimManager.__new__(GlobalOptimManager)
            manager.initialize()
            optimizer.mng = manager
        for view in views:
            manager.pid2config[id(view.tensor)] = view.config


def _take_bnb_overrides(optimizer: Any, params: list[Any]) -> dict[int, dict[str, Any]]:
    """``id(param) -> override`` for the model's parameters, taken off bitsandbytes' process-wide lists.

    The bitsandbytes family registers 32-bit state for each ``nn.Embedding`` there (its 8-bit records'
    ``adapt_model``, ``keep_embeddings_32bit``), keyed by module; bitsandbytes would look for those parameters among
    the optimizer's, which under ZeRO holds none.
    """
    from bitsandbytes.optim import GlobalOptimManager

    shared = GlobalOptimManager.get_instance()
    mine = {id(p) for p in params}
    found: dict[int, dict[str, Any]] = {}
    kept = []
    for triple in shared.module_weight_config_triple:
        module, attr, config = triple
        target = id(getattr(module, attr, None))
        if target in mine:
            found.setdefault(target, {}).update(config)
        else:
            kept.append(triple)
    shared.module_weight_config_triple[:] = kept
    for manager in {id(m): m for m in (shared, optimizer.mng)}.values():
        for pid, config in manager.pid2config.items():
            if pid in mine:
                found.setdefault(pid, {}).update(config)
    return found


class _Torchao(_Library):
    """torchao: blocks of ``block_size``; quantised state for tensors of at least 4096 elements whose size is a
    multiple of it (``_AdamBase._new_buffer``)."""

    def decider(self, optimizer: Any, params: list[Any]) -> Any:
        block = int(optimizer.block_size)

        def decide(piece: Piece) -> tuple[bool, int | None, dict[str, Any]]:
            return piece.numel >= 4096 and piece.numel % block == 0, block, {}

        return decide


class _Flashoptim(_Library):
    """FlashOptim: every tensor's state in groups of 32 when it quantises (on CUDA), none on the CPU."""

    GROUP = 32  # flashoptim's quantize() group_size

    def decider(self, optimizer: Any, params: list[Any]) -> Any:
        quantise = bool(optimizer.defaults.get("quantize")) and any(getattr(p, "is_cuda", False) for p in params)
        return lambda piece: (quantise, self.GROUP, {})


def _library_of(optimizer: Any) -> _Library:
    modules = {klass.__module__.partition(".")[0] for klass in type(optimizer).__mro__}
    if "bitsandbytes" in modules:
        return _Bitsandbytes()
    if "torchao" in modules:
        return _Torchao()
    if "flashoptim" in modules:
        return _Flashoptim()
    return _Library()  # a per-tensor optimizer of no known block layout: one view per tensor piece


class _TorchaoBuffers:
    """torchao's state buffer for a view: quantised when the whole tensor's is, in the view's own blocks."""

    def _new_buffer(self, p: Any, signed: bool) -> Any:
        import torch

        view = self.__dict__.get("_registry_buffers", {}).get(id(p))
        if view is None:
            return super()._new_buffer(p, signed)  # type: ignore[misc]
        block = view.block
        from torchao.optim import Adam4bit, AdamW4bit

        # 4-bit codes pack two elements a byte: a partial block of odd length keeps 32-bit state
        packed = isinstance(self, (Adam4bit, AdamW4bit)) and block % 2
        if not view.quantised or p.numel() % block or packed:
            return torch.zeros_like(p)
        return self._subclass_zeros(p, signed, block)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------- Muon


def deepspeed_muon(ctx: Any, stage: int) -> tuple[type, dict[str, Any]]:
    """DeepSpeed's Muon over the registry's routed groups (``build.compose_groups``) under ZeRO ``stage``.

    Muon groups get ``momentum`` (unless a rule set it) and DeepSpeed's ``"standard"`` Newton-Schulz; AdamW
    groups ``betas`` / ``eps``; rates and weight decay are already in every group.
    """
    spec, opts, hp = ctx.spec, ctx.options, ctx.hparams
    flag = spec.routing.flag
    ctx.require_model()
    groups = []
    for group in ctx.groups or ():
        group = dict(group)
        if group[flag]:
            group.setdefault("momentum", float(opts["momentum"]))
            problems = muon_conflicts(group)
            if problems:
                raise ValueError(
                    f"optim={spec.name!r} under DeepSpeed ZeRO stage {stage} runs DeepSpeed's own Muon, which cannot "
                    f"follow the optim_groups setting {'; '.join(problems)}. Drop it from the rules, or train with "
                    f"FSDP2 ({FSDP2_WAY}) or DDP."
                )
            group["ns_method"] = NS_METHOD
        else:
            group.setdefault("betas", tuple(hp["betas"]))
            group.setdefault("eps", float(hp["eps"]))
        groups.append(group)
    momenta = sorted({float(g["momentum"]) for g in groups if g[flag]})
    if stage == 3 and len(momenta) > 1:
        raise ValueError(
            f"optim={spec.name!r} under DeepSpeed ZeRO stage 3: DeepSpeed's Muon takes one momentum for every "
            f"matrix, the optim_groups rules give {momenta}. Use one momentum, or ZeRO-1/2."
        )
    return deepspeed_muon_class(), {"params": groups}


@functools.cache
def deepspeed_muon_class() -> type:
    """A subclass of DeepSpeed's ``MuonWithAuxAdam`` (ZeRO recognises its class) built from the groups alone."""
    import torch
    from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam

    class ZeROMuonWithAdamW(MuonWithAuxAdam):
        """DeepSpeed's Muon on the ``use_muon`` groups, ``torch.optim.AdamW`` on the others.

        Each parameter's ``use_muon`` attribute (what ZeRO reads) is set from its group: the registry's route.
        """

        def __init__(self, params: Any) -> None:
            groups = [dict(g, params=list(g["params"])) for g in params]
            for group in groups:
                for p in group["params"]:
                    p.use_muon = bool(group["use_muon"])
            super().__init__(groups, adam_optimizer=torch.optim.AdamW, adam_w_mode=True)

    ZeROMuonWithAdamW.__module__ = __name__
    return ZeROMuonWithAdamW
