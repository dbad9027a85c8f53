"""Dion (arXiv 2504.05295) on one device: low-rank orthonormal updates for matrices.

Microsoft's Dion is not on PyPI, so this is a single-device implementation of
the paper's centralized Algorithm 1, cross-checked against the update rule in
microsoft/dion's `dion_reference.py` / `dion_simple.py`. For a matrix X (m x n)
with gradient G, momentum M and right factor Q (rank r), one step is::

    B = M + G                          # in place: M holds B from here on
    P = orth(B Q)                      # one power-iteration step, Householder QR
    R = B^T P
    M = B - (1 - mu) P R^T             # error feedback: keep what rank r missed
    Q = R / (column norms of R + eps)  # column-normalise: warm start for next step
    X = X (1 - lr wd) - lr sqrt(m / n) P Q^T

Choices and deviations, all on purpose:

* Shape scaling is exactly `sqrt(m / n)` (fan_out / fan_in of the original
  weight, no `max(1, .)`), as in the paper and the reference code.
* When m < n the steps run on B^T, as the reference does, so QR always acts on
  the tall side and Q lives on the smaller dimension: Q has shape
  (min(m, n), r). The update is transposed back; the scale stays sqrt(m / n).
* r = `rank` if given, else ceil(rank_fraction * min(m, n)), capped at min(m, n).
* Q starts orthonormal: the QR factor of a Gaussian matrix drawn from a
  `torch.Generator` seeded from (`seed`, the parameter's index in the
  optimizer). The reference uses an un-orthonormalised `randn`. Q is created
  when the param group is added and lives in `self.state`, so it round-trips
  through `state_dict()`; since each parameter's seed depends only on `seed`
  and its index, no generator state needs saving.
* QR is `torch.linalg.qr` in float32 (the reference defaults to randomised
  Cholesky QR, a speed trick for large sharded matrices); the column norms are
  also taken in float32.
* If B is all zeros the matrix step is skipped (weight decay still applies) and
  Q is kept, matching the reference's guard against NaNs from QR of zeros.
* No sharding, compressed all-reduce or multiple power iterations.
* The power iteration's products (B Q, B^T P) run in `matmul_dtype`: by default
  ("auto") the state's dtype, except 16-bit state on a device that would emulate
  16-bit products (a CPU without AVX512-BF16/AMX), where they run in float32;
  "bfloat16" / "float32" force one. The error feedback and the weight update are
  computed in the wider of that dtype and the state's (weights') dtype and rounded
  once, so forcing bfloat16 never rounds float32 momentum.

Non-matrix parameters (groups with `use_dion=False`) get torch.optim.AdamW's
update, shared with `muon.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from optim_registry.families.beyond.muon import (
    adamw_step,
    as_float,
    check_adamw_group,
    check_common_group,
    check_matrix_params,
    require_flag,
)
from optim_registry.families.beyond.precision import check_matmul_dtype, resolve_matmul_dtype

__all__ = ["Dion", "dion_rank"]

# Spreads (seed, parameter index) pairs apart so that seed s, index i+1 and
# seed s+1, index i do not draw the same initial Q.
_SEED_STRIDE = 1_000_003


def dion_rank(
    shape: tuple[int, ...] | torch.Size, rank: int | None, rank_fraction: float
) -> int:
    """Return the low rank r Dion uses for a matrix of `shape`."""
    small = min(shape[0], shape[1])
    wanted = rank if rank is not None else math.ceil(rank_fraction * small)
    return max(1, min(wanted, small))


class Dion(Optimizer):
    """Dion for `use_dion=True` groups (2-D only), AdamW for `use_dion=False` groups.

    Each group dict needs `"use_dion": bool` and may override `lr`,
    `weight_decay`, `momentum`, `rank`, `rank_fraction`, `dion_eps` (Dion
    groups) or `lr`, `weight_decay`, `betas`, `eps` (AdamW groups). AdamW groups
    without their own `lr` start at `adamw_lr`. Weight decay is decoupled.
    `matmul_dtype` ("auto", "bfloat16", "float32") is the dtype of the power
    iteration's products (see the module docstring).
    """

    def __init__(
        self,
        param_groups: Iterable[dict[str, Any]],
        lr: float = 0.01,
        momentum: float = 0.95,
        rank: int | None = None,
        rank_fraction: float = 1.0,
        weight_decay: float = 0.0,
        dion_eps: float = 1e-8,
        seed: int = 0,
        adamw_lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        matmul_dtype: str | torch.dtype | None = "auto",
    ) -> None:
        if adamw_lr < 0:
            raise ValueError(f"adamw_lr={adamw_lr} must be >= 0.")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r} must be a non-negative int.")
        # A property of the run on this machine, not a hyperparameter: kept out of the groups (and so
        # out of state_dict), so a checkpoint resumes with whatever this device does best.
        self.matmul_dtype = check_matmul_dtype(matmul_dtype)
        # add_param_group (called by Optimizer.__init__) reads these.
        self._adamw_lr = adamw_lr
        self._seed = seed
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "rank": rank,
            "rank_fraction": rank_fraction,
            "dion_eps": dion_eps,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
        }
        super().__init__(param_groups, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, validate it, and create Q for each of its matrices."""
        use_dion = require_flag(param_group, "use_dion")
        param_group = dict(param_group)
        if not use_dion:
            param_group.setdefault("lr", self._adamw_lr)
        first_index = sum(len(group["params"]) for group in self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_common_group(group)
        if not use_dion:
            check_adamw_group(group, "use_dion")
            return
        check_matrix_params(group, "use_dion", "Dion")
        _check_dion_group(group)
        for offset, param in enumerate(group["params"]):
            self.state[param]["Q"] = self._initial_q(param, group, first_index + offset)

    def _initial_q(self, param: Tensor, group: dict[str, Any], index: int) -> Tensor:
        r = dion_rank(param.shape, group["rank"], group["rank_fraction"])
        generator = torch.Generator().manual_seed(self._seed * _SEED_STRIDE + index)
        gaussian = torch.randn(
            min(param.shape), r, generator=generator, dtype=torch.float32
        )
        q = torch.linalg.qr(gaussian).Q
        return q.to(device=param.device, dtype=param.dtype)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = as_float(group["lr"])
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if grad.is_sparse or torch.is_complex(param):
                    raise ValueError(
                        f"Parameter of shape {tuple(param.shape)} has a sparse "
                        "gradient or is complex; Dion supports dense real tensors only."
                    )
                state = self.state[param]
                if group["use_dion"]:
                    self._dion_update(param, grad, state, group, lr)
                else:
                    adamw_step(
                        param,
                        grad,
                        state,
                        lr=lr,
                        betas=group["betas"],
                        eps=group["eps"],
                        weight_decay=group["weight_decay"],
                    )
        return loss

    def _dion_update(
        self,
        param: Tensor,
        grad: Tensor,
        state: dict[str, Any],
        group: dict[str, Any],
        lr: float,
    ) -> None:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param)
        momentum, q = state["momentum_buffer"], state["Q"]
        rows, cols = param.shape
        transposed = rows < cols

        momentum.add_(grad)
        param.mul_(1 - lr * group["weight_decay"])
        if not momentum.any():
            return

        b = momentum.T if transposed else momentum
        dtype = resolve_matmul_dtype(self.matmul_dtype, param.device, reference=b.dtype)
        bm = b.to(dtype)  # b itself when the dtypes agree (the usual case): no copy
        p = torch.linalg.qr((bm @ q.to(dtype)).float()).Q.to(dtype)
        r = bm.T @ p
        # Error feedback, written through the (possibly transposed) view into M.
        _addmm_into(b, bm, p, r.T, alpha=-(1 - group["momentum"]))
        r32 = r.float()
        q.copy_(r32 / (r32.norm(dim=0, keepdim=True) + group["dion_eps"]))

        alpha = -lr * math.sqrt(rows / cols)
        qm = q.to(dtype)
        if transposed:
            _addmm_into(param, param, qm, p.T, alpha=alpha)
        else:
            _addmm_into(param, param, p, qm.T, alpha=alpha)


def _addmm_into(target: Tensor, same: Tensor, a: Tensor, b: Tensor, alpha: float) -> None:
    """``target += alpha * a @ b``, multiplied in the wider of the two dtypes and rounded into ``target`` once.

    ``same`` is ``target`` or a copy of it in the dtype of ``a`` and ``b`` (reused rather than copied again).
    """
    wide = torch.promote_types(target.dtype, a.dtype)
    if wide == target.dtype:
        target.addmm_(a.to(wide), b.to(wide), alpha=alpha)
    else:
        base = same if same.dtype == wide and same is not target else target.to(wide)
        target.copy_(base.addmm_(a, b, alpha=alpha))


def _check_dion_group(group: dict[str, Any]) -> None:
    if not 0 <= group["momentum"] < 1:
        raise ValueError(
            f"momentum={group['momentum']} must be in [0, 1); it is the error-feedback "
            "decay mu, 0.95 is usual."
        )
    rank = group["rank"]
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise ValueError(
            f"rank={rank!r} must be a positive int, or None to use rank_fraction."
        )
    if not 0 < group["rank_fraction"] <= 1:
        raise ValueError(
            f"rank_fraction={group['rank_fraction']} must be in (0, 1]; "
            "1.0 means full rank."
        )
    if group["dion_eps"] < 0:
        raise ValueError(f"dion_eps={group['dion_eps']} must be >= 0; 1e-8 is usual.")
