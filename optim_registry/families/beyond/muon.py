"""Muon on hidden 2-D weight matrices plus AdamW on everything else, as one optimizer.

`MuonWithAdamW` keeps every parameter in a single `torch.optim.Optimizer`, so a
Hugging Face Trainer's LR scheduler (a `LambdaLR` over `param_groups[i]["lr"]`)
drives both algorithms, and `state_dict()` is one flat dict of tensors and plain
Python values that survives `torch.load(weights_only=True)`.

The Muon math follows `torch.optim.Muon` (torch 2.13, `torch/optim/_muon.py`) op
for op, so results are bit-identical to it for float32 parameters:

* momentum is an exponential moving average, `buf.lerp_(grad, 1 - momentum)`,
  and the Nesterov update is `grad.lerp(buf, momentum)`. The textbook form
  `buf = momentum * buf + grad` / `grad + momentum * buf` differs from this
  only by the constant factor `1 - momentum`, which the Newton-Schulz step
  normalises away;
* Newton-Schulz runs in bfloat16 with the quintic coefficients, on the
  transpose when the matrix is tall (``matmul_dtype="bfloat16"``; the default
  ``"auto"`` does so where the device multiplies bfloat16 natively and runs
  it in float32 where bfloat16 would be emulated, see
  `optim_registry.families.beyond.precision`);
* decoupled weight decay `p *= 1 - lr * weight_decay` uses the unadjusted lr,
  and the step uses `lr` scaled by `adjust_lr_fn` ("original" / None:
  `sqrt(max(1, rows / cols))`, "match_rms_adamw": `0.2 * sqrt(max(rows, cols))`).

One deliberate difference: torch normalises the bfloat16 copy in place, which for
bfloat16 parameters with `nesterov=False` also rescales the momentum buffer
itself; here the normalisation never writes to the buffer. Float32 results are
unaffected.

The AdamW half follows `torch.optim.AdamW`'s single-tensor path (the one torch
uses on CPU) with the same state keys (`step`, `exp_avg`, `exp_avg_sq`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from optim_registry.families.beyond.precision import check_matmul_dtype, resolve_matmul_dtype

__all__ = ["MuonWithAdamW", "adamw_step", "split_muon_params"]

DEFAULT_EXCLUDE: tuple[str, ...] = ("embed", "lm_head", "wte", "wpe", "output")
ADJUST_LR_FNS: tuple[str | None, ...] = (None, "original", "match_rms_adamw")


def split_muon_params(
    model: nn.Module, *, exclude: Sequence[str] = DEFAULT_EXCLUDE
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Split a model's trainable parameters into (muon, adamw) lists of (name, param).

    The parameters' labels come from ``optim_registry.labels`` (the one place parameters are selected); a
    parameter goes to Muon only if all of these hold:

    * it requires grad (frozen parameters are left out of both lists);
    * it is 2-D, and not a norm weight or a bias;
    * it is not the weight of an `nn.Embedding` / `nn.EmbeddingBag` (decided by
      module type, not by name), nor the model's input or output embedding as returned by
      `get_input_embeddings()` / `get_output_embeddings()` (when the model has
      them), compared by identity, which also catches an LM head tied to the
      input embedding whatever its name;
    * it is not a MoE router (``mlp.gate``: the 2-D weight beside an ``experts`` module, one row per expert);
    * no pattern in `exclude` is a substring of the owning module's name or of
      the parameter's own name (the last two dotted components of its full
      name: `lm_head` and `weight` in `lm_head.weight`). The full path is not
      searched, because `output` would then also match hidden matrices such as
      BERT's `attention.output.dense.weight`.

    Everything else (norms, biases, embeddings, the LM head, routers, tensors with more
    than two dimensions) goes to AdamW. Both lists keep `named_parameters()`
    order, and tied parameters appear once.
    """
    from optim_registry.labels import label_parameters
    from optim_registry.param_groups import route

    table = label_parameters(model, exclude="|".join(re.escape(p) for p in exclude) or None)
    muon: list[tuple[str, nn.Parameter]] = []
    adamw: list[tuple[str, nn.Parameter]] = []
    for row, named in zip(table, table.named(), strict=True):
        (muon if route(row, lora_to_adamw=False) == "matrix" else adamw).append(named)
    return muon, adamw


def zeropower_via_newtonschulz(
    matrix: Tensor,
    ns_coefficients: Sequence[float],
    ns_steps: int,
    eps: float,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    """Approximately orthogonalise a 2-D matrix with torch.optim.Muon's Newton-Schulz.

    A 3-D tensor is a stack of matrices (a MoE layer's experts): each matrix along the leading
    dimension is orthogonalised on its own, in one batched computation.
    Returns a new tensor of `dtype` (bfloat16 as torch.optim.Muon; float32 where bfloat16
    products would be emulated); `matrix` is never modified.
    """
    if matrix.ndim == 3:
        return _batched_newtonschulz(matrix, ns_coefficients, ns_steps, eps, dtype)
    a, b, c = ns_coefficients
    ortho = matrix.to(dtype)
    tall = matrix.size(0) > matrix.size(1)
    if tall:
        ortho = ortho.T
    # Out of place: `.to(dtype)` returns the input itself when it already has that
    # dtype, and an in-place divide would then rescale the caller's momentum buffer.
    ortho = ortho / ortho.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = ortho @ ortho.T
        gram_update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        ortho = torch.addmm(ortho, gram_update, ortho, beta=a)
    if tall:
        ortho = ortho.T
    return ortho


def _batched_newtonschulz(
    stack: Tensor, ns_coefficients: Sequence[float], ns_steps: int, eps: float, dtype: torch.dtype
) -> Tensor:
    """The 2-D iteration on every matrix of a (batch, rows, cols) stack at once (baddbmm for addmm)."""
    a, b, c = ns_coefficients
    ortho = stack.to(dtype)
    tall = stack.size(1) > stack.size(2)
    if tall:
        ortho = ortho.mT
    norms = torch.linalg.vector_norm(ortho, dim=(1, 2), keepdim=True)
    ortho = ortho / norms.clamp(min=eps)
    for _ in range(ns_steps):
        gram = ortho @ ortho.mT
        gram_update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        ortho = torch.baddbmm(ortho, gram_update, ortho, beta=a)
    if tall:
        ortho = ortho.mT
    return ortho


def adjusted_muon_lr(
    lr: float, adjust_lr_fn: str | None, shape: Sequence[int]
) -> float:
    """Scale Muon's lr for a matrix of `shape` exactly as torch.optim.Muon does.

    For a stack of matrices (3-D) the scale is each matrix's: its last two dimensions.
    """
    rows, cols = shape[-2:] if len(shape) == 3 else shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    else:
        raise ValueError(
            f"adjust_lr_fn={adjust_lr_fn!r} is not supported; "
            f"use one of {ADJUST_LR_FNS}."
        )
    return lr * ratio


def adamw_step(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float,
    betas: Sequence[float],
    eps: float,
    weight_decay: float,
) -> None:
    """Apply one torch.optim.AdamW step (single-tensor path) to `param` in place.

    `state` is the parameter's optimizer state; it is filled on first use with
    the same keys and dtypes torch.optim.AdamW uses.
    """
    if "step" not in state:
        # float32 CPU scalar, as in torch.optim.AdamW without capturable/fused.
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(
            param, memory_format=torch.preserve_format
        )
    beta1, beta2 = betas
    step_t, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]

    step_t += 1
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

    step = step_t.item()
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


def as_float(value: float | Tensor) -> float:
    """Turn a scalar hyperparameter (a float or a one-element tensor) into a float."""
    return value.item() if isinstance(value, Tensor) else float(value)


def check_adamw_group(group: dict[str, Any], algorithm_key: str) -> None:
    """Raise ValueError if an AdamW param group has out-of-range hyperparameters."""
    betas = group["betas"]
    if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
        raise ValueError(
            f"betas={tuple(betas)} in a {algorithm_key}=False group must be two "
            "numbers in [0, 1); the usual value is (0.9, 0.999)."
        )
    if group["eps"] < 0:
        raise ValueError(f"eps={group['eps']} must be >= 0; the usual value is 1e-8.")


def check_common_group(group: dict[str, Any]) -> None:
    """Raise ValueError if a group's lr or weight_decay is negative."""
    if as_float(group["lr"]) < 0:
        raise ValueError(f"lr={group['lr']} must be >= 0.")
    if group["weight_decay"] < 0:
        raise ValueError(f"weight_decay={group['weight_decay']} must be >= 0.")


def check_matrix_params(
    group: dict[str, Any], algorithm_key: str, name: str, ndims: tuple[int, ...] = (2,)
) -> None:
    """Raise ValueError if a matrix-only group holds a parameter that is not 2-D (or a 3-D stack where allowed)."""
    for param in group["params"]:
        if param.ndim not in ndims:
            raise ValueError(
                f"A {algorithm_key}=True group holds a parameter of shape "
                f"{tuple(param.shape)}, but {name} only updates 2-D matrices. Move it "
                f"to a {algorithm_key}=False (AdamW) group, e.g. by building the "
                "groups with split_muon_params(model)."
            )


def require_flag(group: dict[str, Any], algorithm_key: str) -> bool:
    """Return the group's bool `algorithm_key` flag.

    Raises ValueError if the key is missing and TypeError if it is not a bool.
    """
    if not isinstance(group, dict) or algorithm_key not in group:
        raise ValueError(
            f"Every param group must be a dict with a bool {algorithm_key!r} key "
            f"(got {type(group).__name__} without it). Pass e.g. "
            f"[{{'params': matrices, {algorithm_key!r}: True}}, "
            f"{{'params': others, {algorithm_key!r}: False}}]; "
            "split_muon_params(model) produces the two lists."
        )
    flag = group[algorithm_key]
    if not isinstance(flag, bool):
        raise TypeError(f"{algorithm_key}={flag!r} must be True or False.")
    return flag


class MuonWithAdamW(Optimizer):
    """Muon for `use_muon=True` groups (2-D, or 3-D stacks of expert matrices), AdamW for the rest.

    Each group dict needs `"use_muon": bool` and may override any constructor
    hyperparameter (`lr`, `weight_decay`, `momentum`, `betas`, ...). AdamW groups
    without their own `lr` start at `adamw_lr`. `weight_decay` is decoupled in
    both halves. `eps` / `betas` are AdamW's; `muon_eps` is the Newton-Schulz
    norm floor (torch.optim.Muon's `eps`). `matmul_dtype` is the dtype Newton-Schulz
    multiplies in: "auto" (bfloat16 where the parameter's device multiplies it natively,
    float32 where it would be emulated), "bfloat16" (torch.optim.Muon's, bit for bit) or
    "float32".
    """

    def __init__(
        self,
        param_groups: Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
        muon_eps: float = 1e-7,
        adjust_lr_fn: str | None = None,
        adamw_lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        matmul_dtype: str | torch.dtype | None = "auto",
    ) -> None:
        if adamw_lr < 0:
            raise ValueError(f"adamw_lr={adamw_lr} must be >= 0.")
        # add_param_group (called by Optimizer.__init__) reads this.
        self._adamw_lr = adamw_lr
        # A property of the run on this machine, not a hyperparameter: kept out of the groups (and so
        # out of state_dict), so a checkpoint resumes with whatever this device does best.
        self.matmul_dtype = check_matmul_dtype(matmul_dtype)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "ns_coefficients": tuple(ns_coefficients),
            "muon_eps": muon_eps,
            "adjust_lr_fn": adjust_lr_fn,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
        }
        super().__init__(param_groups, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add and validate a group; an AdamW group's lr defaults to `adamw_lr`."""
        use_muon = require_flag(param_group, "use_muon")
        param_group = dict(param_group)
        if not use_muon:
            param_group.setdefault("lr", self._adamw_lr)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_common_group(group)
        if use_muon:
            # 3-D: a stack of expert matrices, each orthogonalised on its own.
            check_matrix_params(group, "use_muon", "Muon", ndims=(2, 3))
            _check_muon_group(group)
        else:
            check_adamw_group(group, "use_muon")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group_step(group)
            else:
                self._adamw_group_step(group)
        return loss

    def _muon_group_step(self, group: dict[str, Any]) -> None:
        lr = as_float(group["lr"])
        momentum = group["momentum"]
        # FSDP2 (DTensor) parameters: updates are collected, then orthogonalised once per whole matrix
        # across the ranks; one process orthogonalises each as it goes (no extra copy kept alive).
        sharded = any(hasattr(p, "device_mesh") for p in group["params"])
        pending: list[tuple[Tensor, Tensor]] = []
        for param in group["params"]:
            grad = param.grad
            if grad is None:
                continue
            _check_dense_real(param, grad)
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(
                    grad, memory_format=torch.preserve_format
                )
            buf = state["momentum_buffer"]
            buf.lerp_(grad, 1 - momentum)
            update = grad.lerp(buf, momentum) if group["nesterov"] else buf
            if sharded:
                pending.append((param, update))
            else:
                self._apply(param, self._newton_schulz(update, group), group, lr)
        if pending:
            from optim_registry.engines.fsdp2 import whole_matrix_map

            # Every rank names the dtype the owners compute in: it is the scatter's dtype.
            dtype = self._ns_dtype(pending[0][1].device)
            ortho = whole_matrix_map(
                [u for _, u in pending],
                lambda m: self._newton_schulz(m, group, dtype),
                out_dtype=dtype,
            )
            for (param, _), rows in zip(pending, ortho, strict=True):
                # `rows` is this rank's rows of the whole-matrix result.
                self._apply(param, rows, group, lr, local=True)

    def _ns_dtype(self, device: torch.device) -> torch.dtype:
        return resolve_matmul_dtype(self.matmul_dtype, device)

    def _newton_schulz(
        self, update: Tensor, group: dict[str, Any], dtype: torch.dtype | None = None
    ) -> Tensor:
        return zeropower_via_newtonschulz(
            update,
            group["ns_coefficients"],
            group["ns_steps"],
            group["muon_eps"],
            dtype if dtype is not None else self._ns_dtype(update.device),
        )

    @staticmethod
    def _apply(
        param: Tensor, update: Tensor, group: dict[str, Any], lr: float, local: bool = False
    ) -> None:
        param.mul_(1 - lr * group["weight_decay"])
        # param.shape is the global shape of an FSDP2 parameter: the scale is the unsharded one.
        alpha = -adjusted_muon_lr(lr, group["adjust_lr_fn"], param.shape)
        (param.to_local() if local else param).add_(update, alpha=alpha)

    def _adamw_group_step(self, group: dict[str, Any]) -> None:
        lr = as_float(group["lr"])
        for param in group["params"]:
            if param.grad is None:
                continue
            _check_dense_real(param, param.grad)
            adamw_step(
                param,
                param.grad,
                self.state[param],
                lr=lr,
                betas=group["betas"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
            )


def _check_muon_group(group: dict[str, Any]) -> None:
    if group["momentum"] < 0:
        raise ValueError(f"momentum={group['momentum']} must be >= 0; 0.95 is usual.")
    if not 0 <= group["ns_steps"] < 100:
        raise ValueError(
            f"ns_steps={group['ns_steps']} must be in [0, 100); 5 is usual."
        )
    if len(group["ns_coefficients"]) != 3:
        raise ValueError(
            f"ns_coefficients={group['ns_coefficients']} must be three numbers "
            "(a, b, c)."
        )
    if group["adjust_lr_fn"] not in ADJUST_LR_FNS:
        raise ValueError(
            f"adjust_lr_fn={group['adjust_lr_fn']!r} is not supported; use one of "
            f"{ADJUST_LR_FNS}."
        )


def _check_dense_real(param: Tensor, grad: Tensor) -> None:
    if grad.is_sparse or torch.is_complex(param):
        raise ValueError(
            f"Parameter of shape {tuple(param.shape)} has a sparse gradient or is "
            "complex; MuonWithAdamW and Dion support dense real tensors only."
        )
