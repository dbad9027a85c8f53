"""Whole-matrix optimizer math on FSDP2-sharded parameters: each matrix on one rank, results scattered back.

FSDP2 (``torch.distributed.fsdp.fully_shard``) turns every parameter into a ``DTensor`` split by rows
(``Shard(0)``) over a 1-D mesh. Elementwise updates are right on the local rows as they are; anything
that looks at a whole matrix (Newton-Schulz, a low-rank projection, a factored second moment) is not.
This module gives such math the whole matrix without making every rank repeat it:

* every sharded tensor gets one owner rank, assigned greedily by size (largest first, to the least
  loaded rank) from the global shapes, so every rank computes the same assignment without talking;
* :func:`gather_to_owners` sends each rank's rows of every tensor to that tensor's owner, one
  ``gather`` per owner rank and dtype for all tensors at once (shards padded to equal length);
* the owner computes on the whole tensor, and :func:`scatter_from_owners` sends every rank its rows of
  the result, again one ``scatter`` per owner rank and dtype.

Each rank therefore receives the whole of roughly ``1 / world`` of the matrices and computes only on
those, so the extra work per rank shrinks as ranks are added (the design of Dion's and Moonlight's
distributed Muon). Two users: the registry's Muon calls :func:`whole_matrix_map` for its
orthogonalisation (momentum stays sharded), and :class:`OwnerStepped` runs any per-parameter library
optimizer (GaLore, APOLLO, Adafactor, Dion, ...) on whole tensors on their owners. Both give the
single-process update exactly, because the owner computes on the very tensor one process would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = [
    "Layout",
    "OwnerStepped",
    "TrainModeInit",
    "assign_owners",
    "fsdp2_parameters",
    "gather_to_owners",
    "is_dtensor",
    "layout_of",
    "owner_stepped_class",
    "scatter_from_owners",
    "train_mode_init_class",
    "whole_matrix_map",
]


def is_dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor (an FSDP2-sharded parameter or its gradient)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return isinstance(tensor, DTensor)


def fsdp2_parameters(model: Any) -> list[tuple[str, Any]]:
    """The trainable parameters of ``model`` that FSDP2 has sharded (empty for an unsharded model)."""
    if model is None or not hasattr(model, "named_parameters"):
        return []
    return [(n, p) for n, p in model.named_parameters() if is_dtensor(p)]


@dataclass(frozen=True)
class Layout:
    """Where one sharded tensor's rows live: its global shape and each rank's row count."""

    shape: torch.Size
    rows: tuple[int, ...]  # rows held by each rank of the mesh (torch.chunk semantics: ceil-sized, last short)
    group: Any  # the process group of the mesh
    rank: int  # this process's rank in that group

    @property
    def world(self) -> int:
        return len(self.rows)

    @property
    def row_numel(self) -> int:
        return int(torch.Size(self.shape[1:]).numel())

    @property
    def padded(self) -> int:
        """Elements per rank once every shard is padded to the longest."""
        return max(self.rows) * self.row_numel


def _chunk_rows(n: int, world: int) -> tuple[int, ...]:
    size = -(-n // world) if n else 0
    return tuple(max(0, min(size, n - r * size)) for r in range(world))


def layout_of(tensor: Any, what: str = "a parameter") -> Layout:
    """The :class:`Layout` of a DTensor sharded as FSDP2 does; ``ValueError`` naming FSDP2 otherwise."""
    from torch.distributed.tensor import Shard

    mesh = tensor.device_mesh
    if mesh.ndim != 1 or tuple(tensor.placements) != (Shard(0),):
        raise ValueError(
            f"{what} of shape {tuple(tensor.shape)} is a DTensor placed {tuple(tensor.placements)} on a "
            f"{mesh.ndim}-D mesh; the registry's FSDP2 support handles FSDP2's default layout (rows sharded, "
            "Shard(0), over a 1-D mesh). Use fully_shard over a 1-D device mesh."
        )
    group = mesh.get_group()
    world = mesh.size()
    rank = mesh.get_local_rank()
    rows = _chunk_rows(tensor.shape[0], world) if tensor.ndim else (0,) * world
    local = tensor.to_local()
    if tensor.ndim == 0 or local.shape[0] != rows[rank]:
        raise ValueError(
            f"{what} of shape {tuple(tensor.shape)} holds {tuple(local.shape)} on rank {rank}, not the "
            f"{rows[rank]} rows FSDP2's even chunking gives; the registry's FSDP2 support needs that layout."
        )
    return Layout(tensor.shape, rows, group, rank)


def assign_owners(layouts: Sequence[Layout]) -> list[int]:
    """One owner rank per tensor: largest first, each to the rank with the least work so far.

    Work is the element count (a matrix's Newton-Schulz or projection cost grows with it). Ties go to
    the lower index, so every rank computes the same assignment from the global shapes alone.
    """
    if not layouts:
        return []
    world = layouts[0].world
    load = [0] * world
    owners = [0] * len(layouts)
    order = sorted(range(len(layouts)), key=lambda i: (-layouts[i].shape.numel(), i))
    for i in order:
        owner = min(range(world), key=lambda r: (load[r], r))
        owners[i] = owner
        load[owner] += int(layouts[i].shape.numel())
    return owners


def _global(layout: Layout, rank: int) -> int:
    import torch.distributed as dist

    return dist.get_global_rank(layout.group, rank)


def _buckets(indices: Iterable[int], owners: Sequence[int], locals_: Sequence[Tensor]) -> dict[tuple[int, Any], list[int]]:
    """Tensor indices grouped by (owner rank, dtype): one collective per bucket."""
    out: dict[tuple[int, Any], list[int]] = {}
    for i in indices:
        out.setdefault((owners[i], locals_[i].dtype), []).append(i)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))))


def gather_to_owners(locals_: Sequence[Tensor], layouts: Sequence[Layout], owners: Sequence[int]) -> dict[int, Tensor]:
    """Each tensor made whole on its owner: ``{index: full tensor}`` for the tensors this rank owns.

    ``locals_[i]`` is this rank's rows of tensor ``i`` (``DTensor.to_local()``). Every rank must call
    this with the same layouts and owners; one ``gather`` runs per (owner, dtype).
    """
    import torch.distributed as dist

    if not locals_:
        return {}
    first = layouts[0]
    world, rank, group = first.world, first.rank, first.group
    full: dict[int, Tensor] = {}
    for (owner, dtype), idx in _buckets(range(len(locals_)), owners, locals_).items():
        sizes = [layouts[i].padded for i in idx]
        send = torch.zeros(sum(sizes), dtype=dtype, device=locals_[idx[0]].device)
        offset = 0
        for i, size in zip(idx, sizes, strict=True):
            piece = locals_[i].reshape(-1)
            send[offset : offset + piece.numel()] = piece
            offset += size
        recv = [torch.empty_like(send) for _ in range(world)] if rank == owner else None
        dist.gather(send, recv, dst=_global(first, owner), group=group)
        if recv is None:
            continue
        offset = 0
        for i, size in zip(idx, sizes, strict=True):
            lay = layouts[i]
            parts = [
                recv[r][offset : offset + lay.rows[r] * lay.row_numel].view(lay.rows[r], *lay.shape[1:])
                for r in range(world)
            ]
            full[i] = torch.cat(parts, dim=0)
            offset += size
    return full


def scatter_from_owners(
    full: dict[int, Tensor], layouts: Sequence[Layout], owners: Sequence[int], like: Sequence[Tensor]
) -> list[Tensor]:
    """Every rank's rows of each owner's whole result; ``like[i]`` gives tensor ``i``'s local dtype and device.

    The owner of tensor ``i`` passes ``full[i]`` (other ranks need not); returns this rank's rows of every
    tensor, in order. One ``scatter`` runs per (owner, dtype).
    """
    import torch.distributed as dist

    if not like:
        return []
    first = layouts[0]
    world, rank, group = first.world, first.rank, first.group
    out: list[Tensor | None] = [None] * len(like)
    for (owner, dtype), idx in _buckets(range(len(like)), owners, like).items():
        sizes = [layouts[i].padded for i in idx]
        recv = torch.empty(sum(sizes), dtype=dtype, device=like[idx[0]].device)
        send = None
        if rank == owner:
            send = [torch.zeros_like(recv) for _ in range(world)]
            offset = 0
            for i, size in zip(idx, sizes, strict=True):
                lay = layouts[i]
                chunks = full[i].to(dtype).split(list(lay.rows), dim=0)
                for r in range(world):
                    piece = chunks[r].reshape(-1)
                    send[r][offset : offset + piece.numel()] = piece
                offset += size
        dist.scatter(recv, send, src=_global(first, owner), group=group)
        offset = 0
        for i, size in zip(idx, sizes, strict=True):
            lay = layouts[i]
            n = lay.rows[rank] * lay.row_numel
            out[i] = recv[offset : offset + n].view(lay.rows[rank], *lay.shape[1:])
            offset += size
    return [t for t in out if t is not None]


def whole_matrix_map(
    tensors: Sequence[Any], fn: Callable[[Tensor], Tensor], out_dtype: torch.dtype | None = None
) -> list[Tensor]:
    """``fn`` applied once to each whole DTensor (on its owner); returns this rank's rows of every result.

    The registry's Muon orthogonalises its sharded momentum updates with this: ``fn`` is Newton-Schulz
    and ``out_dtype`` its result dtype (Muon's ``matmul_dtype`` on this device: bfloat16 or float32),
    which ranks that own no result must know for the scatter; ``None`` means the input's dtype. Every rank
    must pass the same tensors, in the same order, with the same ``out_dtype``.
    """
    layouts = [layout_of(t, "a matrix") for t in tensors]
    owners = assign_owners(layouts)
    locals_ = [t.to_local() for t in tensors]
    full = gather_to_owners(locals_, layouts, owners)
    results = {i: fn(t) for i, t in full.items()}
    like = [torch.empty(0, dtype=out_dtype or t.dtype, device=t.device) for t in locals_]
    return scatter_from_owners(results, layouts, owners, like)


#: The first param group's key for library state that is not keyed by a parameter (see ``OwnerStepped.state_dict``).
GLOBAL_STATE = "optim_registry_global_state"


class OwnerStepped(Optimizer):
    """A per-parameter optimizer run on whole tensors on their owner rank, for FSDP2-sharded parameters.

    The library optimizer (``inner_cls``) is built once per rank on the same param groups in the same
    order as in one process, each parameter replaced by a plain tensor of its global shape: a real
    tensor for the parameters this rank owns, a storage-free ``meta`` placeholder for the rest (they
    never get a gradient, so the library skips them). Each step gathers every owned parameter and its
    gradient whole, runs the library's own ``step`` and scatters the new values back into the shards.
    ``param_groups`` hold the real (sharded) parameters, so the Trainer's scheduler and
    ``zero_grad`` act on them; their hyperparameters are copied into the library's groups each step.

    The library's state of each parameter lives on its owner. The standard surface that
    ``torch.distributed.checkpoint``'s ``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` (what
    accelerate's FSDP2 checkpointing calls) relies on is kept:

    * ``state`` is keyed by the real parameters and holds every parameter stepped so far, on every rank
      (``state[p]`` is the library's state of the whole tensor on ``p``'s owner, ``{}`` elsewhere), so DCP
      never "initialises" a stepped optimizer with a hidden zero-gradient step;
    * ``state_dict()`` is collective (every rank calls it, as DCP does) and the same on any number of
      ranks: each parameter's state laid out like the parameter. A state tensor of the parameter's shape
      is a DTensor sharded like it (the owner scatters the rows); every other tensor (a projector, a
      factored moment, a step count, quantisation blocks) is a plain tensor replicated on every rank; other
      values are the same on every rank. DCP can therefore save it sharded and load it on another
      number of ranks;
    * ``load_state_dict()`` takes that layout from any rank count (DTensors, or whole plain tensors as a
      full state dict holds them) and rebuilds each parameter's state on its owner here;
    * the step DCP runs on a fresh optimizer (every gradient zero, every rate 0) steps the library on the
      owners' whole copies only and never writes the parameters back: it must not move a model that was
      just loaded.
    """

    inner_cls: Any = None

    def __init__(self, params: Any, **kwargs: Any) -> None:
        groups = _as_groups(params)
        real = [p for g in groups for p in g["params"]]
        self._layouts = [layout_of(p) if is_dtensor(p) else None for p in real]
        sharded = [i for i, lay in enumerate(self._layouts) if lay is not None]
        owners = assign_owners([self._layouts[i] for i in sharded])
        self._owner = {i: o for i, o in zip(sharded, owners, strict=True)}
        self._rank = self._layouts[sharded[0]].rank if sharded else 0
        self._group = self._layouts[sharded[0]].group if sharded else None
        self._index = {id(p): i for i, p in enumerate(real)}
        #: Positions of the parameters with library state: stepped (or loaded) on every rank alike.
        self._has_state: set[int] = set()
        self._shadow: list[Tensor] = []
        for i, p in enumerate(real):
            if i not in self._owner:
                self._shadow.append(p)  # unsharded (replicated): every rank steps it alike
            elif self._owner[i] == self._rank:
                self._shadow.append(torch.empty(p.shape, dtype=p.dtype, device=p.to_local().device,
                                                requires_grad=p.requires_grad))
            else:
                self._shadow.append(torch.empty(p.shape, dtype=p.dtype, device="meta", requires_grad=p.requires_grad))
        self._refresh_owned(real)
        inner_groups, k = [], 0
        for g in groups:
            n = len(g["params"])
            inner_groups.append({**g, "params": self._shadow[k : k + n]})
            k += n
        self.inner = self.inner_cls(inner_groups, **kwargs)
        k, outer = 0, []
        for ig in self.inner.param_groups:
            n = len(ig["params"])
            outer.append({**ig, "params": real[k : k + n]})
            k += n
        super().__init__(outer, dict(self.inner.defaults))

    @property  # type: ignore[override]
    def state(self) -> Mapping[Any, Any]:
        return _OwnerState(self)

    @state.setter
    def state(self, value: Any) -> None:
        # torch's Optimizer.__init__ (and unpickling) assign an empty state: the library's is the one kept.
        pass

    def _real(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _refresh_owned(self, real: Sequence[Tensor]) -> None:
        """Copy the current weights into this rank's whole copies (they may have been loaded or edited)."""
        idx = sorted(self._owner)
        if not idx:
            return
        layouts = [self._layouts[i] for i in idx]
        owners = [self._owner[i] for i in idx]
        full = gather_to_owners([real[i].to_local() for i in idx], layouts, owners)
        with torch.no_grad():
            for j, t in full.items():
                self._shadow[idx[j]].copy_(t)

    def _sync_groups(self, into_library: bool) -> None:
        """Keep both sets of groups alike: the scheduler writes the outer ones, some libraries count
        steps in their own (``group["step"]``), so values go in before a step and come back after."""
        for outer, inner in zip(self.param_groups, self.inner.param_groups, strict=True):
            src, dst = (outer, inner) if into_library else (inner, outer)
            for key, value in src.items():
                if key != "params":
                    dst[key] = value

    def _initialising(self, real: Sequence[Tensor]) -> bool:
        """Whether this is the step DCP's ``_init_optim_state`` runs on a fresh optimizer: nothing stepped
        yet, every rate 0 and every gradient zero on every rank (a real first step at a warm-up's lr 0
        has gradients, and Adafactor's relative step moves weights whatever the rate)."""
        if self._has_state:
            return False
        for group in self.param_groups:
            lr = group.get("lr")
            if lr is not None and float(lr) != 0.0:
                return False
        nonzero = any(bool((p.grad.to_local() if is_dtensor(p.grad) else p.grad).any())
                      for p in real if p.grad is not None)
        if self._group is not None:
            import torch.distributed as dist

            flag = torch.tensor([float(nonzero)], device=_local_device(real))
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
            nonzero = bool(flag.item())
        return not nonzero

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Gather each owned parameter and gradient whole, step the library optimizer, scatter the shards."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._sync_groups(into_library=True)
        real = self._real()
        if not self.__dict__.get("_overrides_carried"):
            _carry_bnb_overrides(real, self._shadow)
            self._overrides_carried = True
        initialising = self._initialising(real)
        idx = [i for i in sorted(self._owner) if real[i].grad is not None]
        layouts = [self._layouts[i] for i in idx]
        owners = [self._owner[i] for i in idx]
        # Weights and gradients in one gather per owner: the owner's copy is refreshed every step, so a
        # loaded checkpoint or an edited weight is always what the library sees.
        locals_ = [real[i].to_local() for i in idx] + [real[i].grad.to_local() for i in idx]
        full = gather_to_owners(locals_, layouts + layouts, owners + owners)
        n = len(idx)
        for j in range(n):
            if j in full:
                shadow = self._shadow[idx[j]]
                shadow.copy_(full[j])
                shadow.grad = full[j + n].to(shadow.dtype)
        replicated = [i for i, p in enumerate(real) if i not in self._owner and p.grad is not None]
        for i in replicated:
            self._shadow[i].grad = real[i].grad  # the replicated parameter is its own shadow
        kept = {i: real[i].detach().clone() for i in replicated} if initialising else {}
        self.inner.step()
        self._sync_groups(into_library=False)
        self._has_state.update(idx, replicated)
        if initialising:
            # DCP's initialising step: the library's state now exists, the model stays as it is.
            for i, value in kept.items():
                real[i].copy_(value)
            for i in idx:
                self._shadow[i].grad = None
            return loss
        results = {j: self._shadow[idx[j]] for j in range(n) if j in full}
        new = scatter_from_owners(results, layouts, owners, [real[i].to_local() for i in idx])
        for j, i in enumerate(idx):
            real[i].to_local().copy_(new[j])
            if self._owner[i] == self._rank:
                self._shadow[i].grad = None
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The library's state of every parameter, laid out like the parameters (collective: every rank calls it).

        Keyed by position, as torch's ``state_dict``; the same on every rank but for each DTensor's rows.
        State-dict hooks registered on this optimizer (a record's adapter) act on the library's whole state.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        self._sync_groups(into_library=True)  # the rates the scheduler set since the last step
        inner = self.inner.state_dict()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            inner = post_hook(self, inner) or inner
        real = self._real()
        mine = {i: v for i, v in inner["state"].items() if i in self._has_state and i in self._owner
                and self._owner[i] == self._rank}
        state = {i: v for i, v in inner["state"].items() if i in self._has_state and i not in self._owner}
        state.update(_laid_out(mine, real, self._layouts, self._owner, self._rank, self._group,
                               getattr(self, "optim_registry_name", type(self.inner).__name__)))
        groups = inner["param_groups"]
        shared = {k: v for k, v in inner["state"].items() if not isinstance(k, int)}
        if shared and groups:
            # State not keyed by a parameter (MADGRAD's step count "k"): every rank steps the library alike, so it is
            # the same everywhere; DCP maps every state key to a parameter name, so it travels in the first group.
            groups = [{**groups[0], GLOBAL_STATE: shared}, *groups[1:]]
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what ``state_dict()`` gives, from any number of ranks (collective: every rank calls it)."""
        groups = state_dict["param_groups"]
        ids = [pid for g in groups for pid in g["params"]]
        real = self._real()
        if len(ids) != len(real):
            raise ValueError(
                f"this optimizer state holds {len(ids)} parameters in {len(groups)} param group(s); the "
                f"optimizer has {len(real)} in {len(self.param_groups)}: it was saved by another model or group layout."
            )
        position = {pid: k for k, pid in enumerate(ids)}
        saved = state_dict["state"]
        unknown = [pid for pid in saved if pid not in position]
        if unknown:
            raise ValueError(f"this optimizer state holds state for parameters its param groups do not list: {unknown[:4]}")
        _same_on_every_rank(saved, self._group)
        if not saved and not self._has_state:
            # A fresh optimizer's state dict loaded into a fresh optimizer, as accelerate's AcceleratedOptimizer does
            # when the Trainer prepares it (device placement): the settings are taken, the library keeps what it
            # built (Dion's seeded right factors), which torch's load would drop.
            for outer, inner, given in zip(self.param_groups, self.inner.param_groups, groups, strict=True):
                values = {k: v for k, v in given.items() if k not in ("params", GLOBAL_STATE)}
                inner.update(values)
                outer.update(values)
            return
        whole: dict[str, Any] = {"state": _owned_state(saved, position, self._owner, self._rank), "param_groups": groups}
        if groups and GLOBAL_STATE in groups[0]:
            first = dict(groups[0])
            whole["state"].update(first.pop(GLOBAL_STATE))
            whole["param_groups"] = [first, *groups[1:]]
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            whole = pre_hook(self, whole) or whole
        self.inner.load_state_dict(whole)
        for outer, inner in zip(self.param_groups, self.inner.param_groups, strict=True):
            outer.update({k: v for k, v in inner.items() if k != "params"})
        self._has_state = {position[pid] for pid in saved}
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __getattr__(self, name: str) -> Any:
        # Public library extras (schedule-free's train()/eval(), ...) act on the library optimizer;
        # private names never do, so torch's own bookkeeping (step hooks, scheduler counters) stays here.
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(inner, name)


class _OwnerState(Mapping):
    """``OwnerStepped.state``: the parameters with library state, keyed by the real (sharded) parameters.

    The same keys on every rank; ``state[p]`` is the library's state of the whole tensor on ``p``'s owner
    and ``{}`` on the other ranks (and for a parameter without state, as a ``defaultdict`` would give).
    """

    def __init__(self, optimizer: OwnerStepped) -> None:
        self._opt = optimizer

    def __len__(self) -> int:
        return len(self._opt._has_state)

    def __iter__(self) -> Iterator[Tensor]:
        real = self._opt._real()
        return iter([real[i] for i in sorted(self._opt._has_state)])

    def __contains__(self, param: object) -> bool:
        return self._opt._index.get(id(param)) in self._opt._has_state

    def __getitem__(self, param: Any) -> dict[str, Any]:
        i = self._opt._index.get(id(param))
        if i is None or i not in self._opt._has_state:
            return {}
        shadow = self._opt._shadow[i]
        if shadow.device.type == "meta":
            return {}
        return self._opt.inner.state.get(shadow, {})

    def __repr__(self) -> str:
        return f"<state of {len(self)} parameters, each on its owner rank>"


# ----------------------------------------------------------------------------------------- state layout


@dataclass(frozen=True)
class _Slot:
    """Where a tensor of one parameter's state goes in the exchange: scattered like the parameter
    (``shard``) or broadcast whole from the owner; its shape and dtype."""

    shard: bool
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class _Scalar:
    """A 0-d state tensor (a step count) sent with the structure; ``cpu``: where it lived on the owner."""

    value: Tensor
    cpu: bool


def _skeleton(value: Any, shape: torch.Size, tensors: list[Tensor]) -> Any:
    """``value`` with each tensor of one or more dimensions replaced by a ``_Slot`` (appended to ``tensors``)."""
    if isinstance(value, Tensor) and type(value) not in (Tensor, torch.nn.Parameter):
        raise TypeError(type(value).__name__)
    if isinstance(value, Tensor):
        if value.ndim == 0:
            return _Scalar(value.detach().cpu().clone(), value.device.type == "cpu")
        tensors.append(value)
        return _Slot(tuple(value.shape) == tuple(shape), tuple(value.shape), value.dtype)
    if isinstance(value, dict):
        return {k: _skeleton(v, shape, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_skeleton(v, shape, tensors) for v in value)
    return value


def _fill(skeleton: Any, tensors: Iterator[Any], device: torch.device) -> Any:
    if isinstance(skeleton, _Slot):
        return next(tensors)
    if isinstance(skeleton, _Scalar):
        return skeleton.value.clone() if skeleton.cpu else skeleton.value.to(device)
    if isinstance(skeleton, dict):
        return {k: _fill(v, tensors, device) for k, v in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(_fill(v, tensors, device) for v in skeleton)
    return skeleton


def _slots(skeleton: Any) -> list[_Slot]:
    if isinstance(skeleton, _Slot):
        return [skeleton]
    if isinstance(skeleton, dict):
        return [s for v in skeleton.values() for s in _slots(v)]
    if isinstance(skeleton, (list, tuple)):
        return [s for v in skeleton for s in _slots(v)]
    return []


def _local_device(real: Sequence[Tensor]) -> torch.device:
    for p in real:
        return p.to_local().device if is_dtensor(p) else p.device
    return torch.device("cpu")


def _laid_out(mine: dict[int, Any], real: Sequence[Tensor], layouts: Sequence[Layout | None],
              owners: dict[int, int], rank: int, group: Any, name: str) -> dict[int, Any]:
    """Every sharded parameter's state on every rank, from the owners' whole state (``mine``: this rank's).

    One ``all_gather_object`` carries the structure (keys, plain values, step counts, each tensor's shape and
    dtype); then one ``scatter`` per (owner, dtype) sends every rank its rows of the parameter-shaped tensors
    and one ``broadcast`` per (owner, dtype) sends the other tensors whole.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    if group is None:
        return {}
    device = _local_device(real)
    own_tensors: dict[int, list[Tensor]] = {}
    skeletons: dict[int, Any] = {}
    problem = None
    try:
        for i, value in mine.items():
            own_tensors[i] = []
            skeletons[i] = _skeleton(value, real[i].shape, own_tensors[i])
    except TypeError as exc:  # refused below on every rank alike, not on the owner alone
        problem = str(exc)
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, (skeletons, problem), group=group)
    problems = sorted({p for _, p in everyone if p})
    if problems:
        raise ValueError(
            f"optim={name!r} under FSDP2: its state holds {', '.join(problems)} tensors (a tensor subclass), which "
            "cannot be laid out like the parameters for torch.distributed.checkpoint, so its FSDP2 checkpoints are "
            "not supported. Train it unsharded, or choose a name whose FSDP2 checkpoints work (docs/distributed.md)."
        )
    structure = {i: s for part, _ in everyone for i, s in part.items()}
    order = sorted(structure)
    # Parameter-shaped tensors: this rank's rows, scattered by the owner as a step scatters weights.
    shard_keys = [(i, k) for i in order for k, slot in enumerate(_slots(structure[i])) if slot.shard]
    full = {j: own_tensors[i][k] for j, (i, k) in enumerate(shard_keys) if owners[i] == rank}
    like = [torch.empty(0, dtype=_slots(structure[i])[k].dtype, device=device) for i, k in shard_keys]
    rows = scatter_from_owners(full, [layouts[i] for i, _ in shard_keys], [owners[i] for i, _ in shard_keys], like)
    sent: dict[tuple[int, int], Tensor] = {}
    for (i, k), local in zip(shard_keys, rows, strict=True):
        p = real[i]
        sent[i, k] = DTensor.from_local(local.clone(), p.device_mesh, p.placements, run_check=False,
                                        shape=p.shape, stride=p.stride())
    # Everything else whole on every rank: one flat buffer per (owner, dtype).
    whole_keys = [(i, k) for i in order for k, slot in enumerate(_slots(structure[i])) if not slot.shard]
    buckets: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for i, k in whole_keys:
        buckets.setdefault((owners[i], str(_slots(structure[i])[k].dtype)), []).append((i, k))
    for (owner, _), keys in sorted(buckets.items()):
        slots = [_slots(structure[i])[k] for i, k in keys]
        sizes = [math.prod(s.shape) for s in slots]
        if owner == rank:
            flat = torch.cat([own_tensors[i][k].detach().reshape(-1).to(device) for i, k in keys])
        else:
            flat = torch.empty(sum(sizes), dtype=slots[0].dtype, device=device)
        dist.broadcast(flat, src=dist.get_global_rank(group, owner), group=group)
        for (i, k), slot, piece in zip(keys, slots, flat.split(sizes), strict=True):
            sent[i, k] = piece.view(slot.shape).clone()
    out = {}
    for i in order:
        count = len(_slots(structure[i]))
        out[i] = _fill(structure[i], iter([sent[i, k] for k in range(count)]), device)
    return out


def _signature(value: Any) -> Any:
    """What must agree between ranks before a load's collectives: structure, shapes, dtypes, DTensor or not."""
    if isinstance(value, Tensor):
        return ("DTensor" if is_dtensor(value) else "Tensor", tuple(value.shape), str(value.dtype))
    if isinstance(value, dict):
        return {str(k): _signature(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_signature(v) for v in value]
    return type(value).__name__


def _same_on_every_rank(saved: dict[Any, Any], group: Any) -> None:
    """Refuse, on every rank alike, a state dict that is not the same on every rank (one rank's part missing)."""
    if group is None:
        return
    import torch.distributed as dist

    mine = {str(pid): _signature(v) for pid, v in saved.items()}
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    for r, theirs in enumerate(everyone):
        if theirs != everyone[0]:
            missing = sorted(set(everyone[0]) ^ set(theirs))
            differing = missing or sorted(k for k in theirs if theirs[k] != everyone[0].get(k))
            raise ValueError(
                f"the optimizer state given to rank {r} differs from rank 0's (parameters {differing[:4]}): an "
                "FSDP2 optimizer state dict holds every parameter's state on every rank, so a part is missing "
                "(a checkpoint with one rank's state dropped?). Resume from a complete checkpoint."
            )


def _owned_state(saved: dict[Any, Any], position: dict[Any, int], owners: dict[int, int], rank: int) -> dict[Any, Any]:
    """The library state this rank keeps: whole tensors of the parameters it owns (and of unsharded ones).

    DTensor entries are gathered to the owner, one ``gather`` per (owner, dtype) for all of them.
    """
    gathered: list[tuple[Any, list[Any]]] = []
    for pid in sorted(saved, key=lambda q: position[q]):
        leaves: list[Any] = []
        _leaves(saved[pid], leaves)
        gathered.append((pid, leaves))
    dts = [(pid, j, leaf) for pid, leaves in gathered for j, leaf in enumerate(leaves) if is_dtensor(leaf)]
    for _, _, leaf in dts:
        layout_of(leaf, "a state tensor")  # FSDP2's layout, as the template gives it
    whole = gather_to_owners([leaf.to_local() for _, _, leaf in dts], [layout_of(leaf) for _, _, leaf in dts],
                             [owners.get(position[pid], rank) for pid, _, _ in dts])
    replace = {(pid, j): whole.get(n) for n, (pid, j, _) in enumerate(dts)}
    out = {}
    for pid, leaves in gathered:
        i = position[pid]
        if i in owners and owners[i] != rank:
            continue
        fixed = [replace[pid, j] if (pid, j) in replace else leaf for j, leaf in enumerate(leaves)]
        out[pid] = _rebuild(saved[pid], iter(fixed))
    return out


def _leaves(value: Any, out: list[Any]) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _leaves(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _leaves(v, out)
    elif isinstance(value, Tensor):
        out.append(value)


def _rebuild(value: Any, leaves: Iterator[Any]) -> Any:
    if isinstance(value, dict):
        return {k: _rebuild(v, leaves) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_rebuild(v, leaves) for v in value)
    if isinstance(value, Tensor):
        return next(leaves)
    return value


def _carry_bnb_overrides(real: Sequence[Tensor], shadow: Sequence[Tensor]) -> None:
    """bitsandbytes' per-module overrides (32-bit embedding state) name the real parameters: give them
    to the whole copies the library optimizer actually steps."""
    import sys

    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return
    manager = bnb.optim.GlobalOptimManager.get_instance()
    index = {id(p): i for i, p in enumerate(real)}
    for module, attr, config in manager.module_weight_config_triple:
        i = index.get(id(getattr(module, attr, None)))
        if i is not None and shadow[i] is not real[i]:
            manager.override_config(shadow[i], key_value_dict=dict(config))


def _as_groups(params: Any) -> list[dict[str, Any]]:
    items = list(params)
    if items and isinstance(items[0], dict):
        return [dict(g, params=list(g["params"])) for g in items]
    return [{"params": items}]


class TrainModeInit:
    """A schedule-free optimizer whose FSDP2 checkpoints load: DCP's initialising step is taken in train mode,
    and switching modes leaves no empty state behind.

    Schedule-free optimizers are built in eval mode and refuse ``step()`` there; a fresh one is exactly what
    ``torch.distributed.checkpoint``'s ``_init_optim_state`` steps (no state yet, every gradient zero, every rate
    0) when accelerate loads an FSDP2 checkpoint, before the Trainer's first ``train()``. That step is taken in
    train mode and the mode put back: with no state, zero gradients and lr 0 neither the switches nor the step
    move a weight, and the checkpoint's groups (mode included) and state replace what it created. Any other
    step in eval mode is refused by the library as before.

    The library's ``train()`` / ``eval()`` read ``self.state[p]`` for every parameter, which leaves an empty entry
    for each: ``_init_optim_state`` then takes the optimizer for initialised, the template DCP loads into holds
    no ``z`` and no second moment, and the resumed run silently restarts them (1.6e-2 off after 2 steps here).
    Those empty entries are removed.
    """

    state: Any
    param_groups: list[dict[str, Any]]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        initialising = (
            not any(self.state.values())
            and not all(g.get("train_mode", True) for g in self.param_groups)
            and all(float(g.get("lr") or 0.0) == 0.0 for g in self.param_groups)
            and not any(bool((p.grad.to_local() if is_dtensor(p.grad) else p.grad).any())
                        for g in self.param_groups for p in g["params"] if p.grad is not None)
        )
        if not initialising:
            return super().step(closure)  # type: ignore[misc]
        self.train()
        try:
            return super().step(closure)  # type: ignore[misc]
        finally:
            self.eval()

    def train(self) -> None:
        super().train()  # type: ignore[misc]
        self._drop_empty_state()

    def eval(self) -> None:
        super().eval()  # type: ignore[misc]
        self._drop_empty_state()

    def _drop_empty_state(self) -> None:
        for param in [p for p, s in self.state.items() if not s]:
            del self.state[param]


def train_mode_init_class(cls: type) -> type:
    """``cls`` (a schedule-free optimizer) with :class:`TrainModeInit`; the Trainer calls it as ``cls(params, **kw)``."""
    return type(f"FSDP2{cls.__name__}", (TrainModeInit, cls), {"__module__": __name__})


def owner_stepped_class(inner_cls: type) -> type:
    """An :class:`OwnerStepped` subclass that builds ``inner_cls``; the Trainer calls it as ``cls(params, **kw)``."""
    return type(f"FSDP2{inner_cls.__name__}", (OwnerStepped,), {"inner_cls": inner_cls,
                                                               "__module__": __name__})
