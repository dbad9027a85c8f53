"""LOMO and AdaLomo: fused-backward optimizers that clip for real, report their gradient norm and resume.

lomo_optim's classes update every weight inside ``loss.backward()`` (tensor hooks) and are driven by
``fused_backward(loss, lr)``, which accelerate calls for the names ``lomo`` / ``adalomo``. The library
leaves three gaps that the subclasses here close:

- global-norm clipping needs ``grad_norm(loss)`` (an extra backward) before every ``fused_backward``;
  transformers never calls it, so ``max_grad_norm`` did nothing. ``fused_backward`` here calls it;
- no ``.grad`` survives backward, so the Trainer logged ``grad_norm`` 0.0. The norm is recorded here
  (from the clipping pass, or from one extra per-parameter hook) and handed to the Trainer through
  ``logged_grad_norm()``;
- ``AdaLomo`` allocates its moments with ``.cuda()`` and keeps them outside ``state_dict()``. Here they
  live on each parameter's device and travel in ``state_dict()``, so a resumed run continues exactly;
- the library registers its update hooks on the model's parameters for good: they outlive the optimizer,
  pile up when a second optimizer is built on the same model, and move the weights on any later
  ``backward()`` (a bare one, or another Trainer's). Here the hooks exist only while this optimizer's own
  ``fused_backward`` / ``grad_norm`` runs, and are removed when it returns.

This module imports lomo_optim: it is loaded only when ``lomo`` / ``adalomo`` is resolved.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from lomo_optim import AdaLomo, Lomo

from ...context import BuildContext


class _FusedBackwardMixin:
    """Clipping before ``fused_backward`` and a recorded gradient norm, shared by both classes."""

    model: Any
    clip_grad_norm: float | None
    grad_norms: Any
    gather_norm: bool

    grad_func: Any

    def _scope_hooks(self) -> None:
        """Takes back the update hooks the library registered at construction; `_hooks` re-adds them per pass."""
        self._norm_sq: torch.Tensor | None = None
        self._tracking = False
        self._last_norm: torch.Tensor | None = None
        self._handles: list[Any] = []
        for p in self.model.parameters():
            # The library keeps no handle; torch's own handles remove a hook by deleting its key from
            # this (private) table, which is what is done here.
            table = getattr(p, "_backward_hooks", None) or {}
            for key in [k for k, hook in table.items() if hook is self.grad_func]:
                del table[key]

    @contextlib.contextmanager
    def _hooks(self) -> Iterator[None]:
        """The update and norm hooks, registered on the trainable parameters for the duration of one call."""
        if self._handles:  # re-entered (grad_norm inside fused_backward): already in place
            yield
            return
        try:
            for p in self.model.parameters():
                if p.requires_grad:
                    # The library's update hook first, then the norm hook: both see the same (whole) gradient.
                    self._handles.append(p.register_hook(self.grad_func))
                    self._handles.append(p.register_hook(self._accumulate_norm))
            yield
        finally:
            while self._handles:
                self._handles.pop().remove()

    def hook_count(self) -> int:
        """Hooks this optimizer has on the model now: 0 outside its own backward passes."""
        return len(self._handles)

    def grad_norm(self, loss: torch.Tensor) -> None:
        with self._hooks():
            super().grad_norm(loss)  # type: ignore[misc]

    def _accumulate_norm(self, grad: torch.Tensor) -> None:
        if self._tracking:
            sq = grad.detach().float().pow(2).sum()
            self._norm_sq = sq if self._norm_sq is None else self._norm_sq + sq

    def _grad_scale(self) -> float:
        """What the loss was multiplied by before backward (the hooks see scaled gradients)."""
        return 1.0

    def _clipping(self) -> bool:
        return self.clip_grad_norm is not None and self.clip_grad_norm > 0

    def _backward_with_norm(self, loss: torch.Tensor, lr: float, fused: Any) -> None:
        with self._hooks():
            self._clipped_backward(loss, lr, fused)

    def _clipped_backward(self, loss: torch.Tensor, lr: float, fused: Any) -> None:
        if self._clipping():
            # The library's first pass: per-parameter norms -> clip coefficient for the update pass.
            self.grad_norm(loss)  # type: ignore[attr-defined]
            norms = self.grad_norms
            if isinstance(norms, torch.Tensor):
                self._last_norm = torch.linalg.vector_norm(norms.float(), 2.0)
            else:  # fp16 overflow: the library skips this step
                self.gather_norm = False
                self._last_norm = torch.tensor(float("inf"))
            fused(loss, lr)
            return
        self._norm_sq = None
        self._tracking = True
        try:
            fused(loss, lr)
        finally:
            self._tracking = False
        total = self._norm_sq if self._norm_sq is not None else torch.zeros(())
        self._last_norm = total.sqrt() / self._grad_scale()

    def logged_grad_norm(self) -> torch.Tensor | None:
        """The whole model's gradient norm of the last step, before clipping (what the Trainer logs)."""
        return self._last_norm

    def step(self, closure: Any = None) -> Any:
        # accelerate's AcceleratedOptimizer.step returns before reaching here for LOMO classes; a hand
        # loop calling step() has missed the protocol, so say so.
        raise NotImplementedError(
            f"{type(self).__name__} updates the weights inside backward: call "
            "optimizer.fused_backward(loss, lr) instead of loss.backward() + optimizer.step()"
        )


class ClippedLomo(_FusedBackwardMixin, Lomo):
    """``lomo_optim.Lomo`` whose ``clip_grad_norm`` clips every step and whose gradient norm is logged.

    Example::

        opt = ClippedLomo(model, lr=1e-3, clip_grad_norm=1.0)
        opt.fused_backward(loss, lr=1e-3)   # clips, updates, records the norm
        opt.logged_grad_norm()
    """

    def __init__(self, model: Any, lr: float = 1e-3, clip_grad_norm: float | None = None,
                 clip_grad_value: float | None = None, weight_decay: float = 0.0,
                 loss_scale_args: dict[str, Any] | None = None) -> None:
        super().__init__(model, lr=lr, clip_grad_norm=clip_grad_norm, clip_grad_value=clip_grad_value,
                         weight_decay=weight_decay, loss_scale_args=dict(loss_scale_args or {}))
        self._scope_hooks()

    def _grad_scale(self) -> float:
        return float(self.loss_scaler.loss_scale) if self.loss_scaler else 1.0

    def fused_backward(self, loss: torch.Tensor, lr: float) -> None:
        if self.first_backward and loss.dtype == torch.float16 and self.clip_grad_norm is None:
            # What Lomo.fused_backward does for fp16 losses, done before the clipping pass needs it.
            self.clip_grad_norm = 1.0
        self._backward_with_norm(loss, lr, super().fused_backward)


class ClippedAdaLomo(_FusedBackwardMixin, AdaLomo):
    """``lomo_optim.AdaLomo`` that runs on any device, clips every step, logs its norm and resumes.

    The factored second moments (``exp_avg_sq_row`` / ``exp_avg_sq_col``, ``exp_avg_sq`` for vectors)
    and the step count are saved in ``state_dict()`` under each parameter's index and restored in
    fp32 by ``load_state_dict``.
    """

    def __init__(self, model: Any, lr: float = 1e-3, loss_scale: float = 2**10,
                 eps: tuple[float, float] = (1e-30, 1e-3), clip_threshold: float = 1.0,
                 decay_rate: float = -0.8, clip_grad_norm: float | None = None,
                 clip_grad_value: float | None = None, weight_decay: float = 0.0) -> None:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        # AdaLomo.__init__ puts its moments on the GPU unconditionally (.cuda()); this is the same
        # construction with the moments on each parameter's own device.
        if clip_grad_norm is not None and clip_grad_norm <= 0:
            raise ValueError(f"clip_grad_norm should be positive, got {clip_grad_norm}.")
        if is_deepspeed_zero3_enabled():
            raise ValueError(
                "adalomo under DeepSpeed ZeRO-3 is not supported: lomo_optim's ZeRO-3 path reads an "
                "attribute it never sets (dp_rank). Use ZeRO-1/2, or optim='lomo'."
            )
        self.model = model
        self.lr = lr
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self.weight_decay = weight_decay
        self.do_weight_decay = weight_decay > 0.0
        self.loss_scale = loss_scale
        self.eps = eps
        self.step_num = 0
        self.decay_rate = decay_rate
        self.clip_threshold = clip_threshold
        self.gather_norm = False
        self.grad_norms = []
        self.clip_coef = None
        self.zero3_enabled = False
        self.grad_func = self.fuse_update()
        self.exp_avg_sq: dict[str, torch.Tensor] = {}
        self.exp_avg_sq_row: dict[str, torch.Tensor] = {}
        self.exp_avg_sq_col: dict[str, torch.Tensor] = {}
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue  # the update hook never touches frozen parameters: no moments for them
            if p.dim() == 1:
                self.exp_avg_sq[n] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
            else:
                self.exp_avg_sq_row[n] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
                self.exp_avg_sq_col[n] = torch.zeros(p.shape[1], dtype=torch.float32, device=p.device)
        defaults = dict(lr=lr, eps=eps, weight_decay=weight_decay, clip_grad_norm=clip_grad_norm,
                        clip_grad_value=clip_grad_value)
        torch.optim.Optimizer.__init__(self, model.parameters(), defaults)
        self._scope_hooks()  # registers nothing here: the hooks are added per backward pass

    def _grad_scale(self) -> float:
        return float(self.loss_scale) if self.loss_scale else 1.0

    def fused_backward(self, loss: torch.Tensor, lr: float) -> None:
        self._backward_with_norm(loss, lr, super().fused_backward)

    # -- state ------------------------------------------------------------------------------------
    _KEYS = ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col")

    def _indexed_names(self) -> dict[int, str]:
        """state_dict index -> parameter name (torch numbers the groups' params in order)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        params = [p for group in self.param_groups for p in group["params"]]
        return {i: names[id(p)] for i, p in enumerate(params) if id(p) in names}

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        state = dict(sd["state"])
        step = torch.tensor(float(self.step_num))
        for i, n in self._indexed_names().items():
            entry = {key: getattr(self, key)[n] for key in self._KEYS if n in getattr(self, key)}
            if entry:
                state[i] = {**state.get(i, {}), **entry, "step": step}
        sd["state"] = state
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rest: dict[Any, Any] = {}
        moments: dict[int, dict[str, Any]] = {}
        for i, entry in state_dict["state"].items():
            ours = {k: v for k, v in entry.items() if k in self._KEYS or k == "step"}
            if ours and any(k in self._KEYS for k in ours):
                moments[i] = ours
                entry = {k: v for k, v in entry.items() if k not in ours}
            if entry:
                rest[i] = entry
        state_dict["state"] = rest
        # torch would cast the fp32 moments to the parameters' dtype (bf16): restore them ourselves.
        super().load_state_dict(state_dict)
        names = self._indexed_names()
        steps = set()
        for i, entry in moments.items():
            n = names.get(i)
            if n is None:
                raise ValueError(f"adalomo state holds moments for parameter index {i}, which this model lacks")
            for key in self._KEYS:
                if key in entry:
                    getattr(self, key)[n].copy_(entry[key])
            if "step" in entry:
                steps.add(int(round(float(entry["step"]))))
        if len(steps) > 1:
            raise ValueError(f"adalomo state holds different step counts {sorted(steps)}")
        if steps:
            self.step_num = steps.pop()


def lomo(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """``ClippedLomo`` / ``ClippedAdaLomo`` built with the model; ``max_grad_norm`` becomes ``clip_grad_norm``.

    LOMO has no parameter groups: the record's ``weight_decay_kwarg`` puts weight decay on every parameter.
    """
    kwargs = dict(ctx.kwargs)
    kwargs["model"] = ctx.require_model()
    max_grad_norm = float(getattr(ctx.args, "max_grad_norm", 0.0) or 0.0)
    if max_grad_norm > 0 and not math.isinf(max_grad_norm):
        kwargs["clip_grad_norm"] = max_grad_norm
    return ctx.target(), kwargs
