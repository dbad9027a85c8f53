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

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = [
    "Layout",
    "OwnerStepped",
    "assign_owners",
    "fsdp2_parameters",
    "gather_to_owners",
    "is_dtensor",
    "layout_of",
    "owner_stepped_class",
    "scatter_from_owners",
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


class OwnerStepped(Optimizer):
    """A per-parameter optimizer run on whole tensors on their owner rank, for FSDP2-sharded parameters.

    The library optimizer (``inner_cls``) is built once per rank on the same param groups in the same
    order as in one process, each parameter replaced by a plain tensor of its global shape: a real
    tensor for the parameters this rank owns, a storage-free ``meta`` placeholder for the rest (they
    never get a gradient, so the library skips them). Each step gathers every owned parameter and its
    gradient whole, runs the library's own ``step`` and scatters the new values back into the shards.
    ``param_groups`` hold the real (sharded) parameters, so the Trainer's scheduler and
    ``zero_grad`` act on them; their hyperparameters are copied into the library's groups each step.

    The state of each parameter lives on its owner: ``state_dict()`` is this rank's part and resumes on
    the same number of ranks.
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

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Gather each owned parameter and gradient whole, step the library optimizer, scatter the shards."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._sync_groups(into_library=True)
        real = [p for g in self.param_groups for p in g["params"]]
        if not self.__dict__.get("_overrides_carried"):
            _carry_bnb_overrides(real, self._shadow)
            self._overrides_carried = True
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
        for i, p in enumerate(real):
            if i not in self._owner:
                self._shadow[i].grad = p.grad  # the replicated parameter is its own shadow
        self.inner.step()
        self._sync_groups(into_library=False)
        results = {j: self._shadow[idx[j]] for j in range(n) if j in full}
        new = scatter_from_owners(results, layouts, owners, [real[i].to_local() for i in idx])
        for j, i in enumerate(idx):
            real[i].to_local().copy_(new[j])
            if self._owner[i] == self._rank:
                self._shadow[i].grad = None
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The library's state of the parameters this rank owns (keyed as in one process)."""
        sd = self.inner.state_dict()
        sd["state"] = {k: v for k, v in sd["state"].items() if not _on_meta(v)}
        sd["fsdp2_owner_rank"] = self._rank
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rank = state_dict.pop("fsdp2_owner_rank", self._rank)
        if rank != self._rank:
            raise ValueError(
                f"this optimizer state was saved by rank {rank} of an FSDP2 run and is loaded on rank "
                f"{self._rank}; each rank loads its own part (same number of ranks)."
            )
        self.inner.load_state_dict(state_dict)
        for outer, inner in zip(self.param_groups, self.inner.param_groups, strict=True):
            outer.update({k: v for k, v in inner.items() if k != "params"})

    def __getattr__(self, name: str) -> Any:
        # Public library extras (schedule-free's train()/eval(), ...) act on the library optimizer;
        # private names never do, so torch's own bookkeeping (step hooks, scheduler counters) stays here.
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(inner, name)


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


def _on_meta(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.device.type == "meta"
    if isinstance(value, dict):
        return any(_on_meta(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_on_meta(v) for v in value)
    return False


def _as_groups(params: Any) -> list[dict[str, Any]]:
    items = list(params)
    if items and isinstance(items[0], dict):
        return [dict(g, params=list(g["params"])) for g in items]
    return [{"params": items}]


def owner_stepped_class(inner_cls: type) -> type:
    """An :class:`OwnerStepped` subclass that builds ``inner_cls``; the Trainer calls it as ``cls(params, **kw)``."""
    return type(f"FSDP2{inner_cls.__name__}", (OwnerStepped,), {"inner_cls": inner_cls,
                                                               "__module__": __name__})
