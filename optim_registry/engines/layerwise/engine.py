"""Layer-wise optimizer engine: step each parameter inside backward as soon as its gradient is ready.

`LayerwiseOptimizer` owns one inner optimizer per trainable parameter and runs it from a
``register_post_accumulate_grad_hook`` hook, then frees that gradient, so the gradients of the whole
model never exist at once. Unlike the transformers 5.x layer-wise path it is an ordinary
``torch.optim.Optimizer`` to the outside: torch LR schedulers drive its ``param_groups``, its
``state_dict`` has the torch layout (loadable with ``torch.load(weights_only=True)``), gradient
accumulation is supported through ``should_step``, the gradient norm is reported in
``last_grad_norm`` and the hooks live exactly as long as the optimizer.

Exact global-norm clipping (``max_grad_norm=``) needs the norm before the first parameter steps, so
``backward(loss)`` runs backward twice, as LOMO's ``grad_norm`` does: the first pass only measures (and frees
each gradient), the second steps with the clip coefficient.

Under DDP the gradient a parameter's hook sees is this process's own, not yet averaged: there
``attach_ddp(ddp_model)`` moves the stepping into a DDP communication hook, so each parameter is
stepped as soon as its gradient bucket has been all-reduced (see ``ddp.py``).

Pure torch: nothing here imports the registry. ``factory.py`` builds one for a ``_layerwise`` name from the
arguments' plan, ``trainer.py`` holds what a Trainer does with one.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import gc
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

InnerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]

# Group keys that describe the group rather than configure the update.
_NOT_HYPERPARAMS = frozenset({"params", "param_names"})
_MISSING = object()


#: Bytes of freed CPU gradients after which the engine hands free heap memory back to the operating system.
#: glibc keeps freed chunks below its (adaptive, up to 32 MiB) mmap threshold in its heap, resident; a
#: gradient freed between two optimizer states leaves such a hole, and on a 134M-parameter Llama the holes
#: held 150-250 MiB of peak RSS, the very saving layer-wise stepping exists for. Memory given back is
#: faulted in again when the next gradient lands there, so trimming costs time (measured on that model,
#: batch 1 x 64 tokens, 1 thread: +7% per step every 256 MiB, +11% every 64 MiB, +21% every 32 MiB, for
#: peaks 2555 / 2537 / 2535 MiB against 2671-2716 MiB without); 64 MiB is the knee.
TRIM_EVERY_BYTES: int | None = 64 * 2**20  # None: never trim


@functools.cache
def _malloc_trim() -> Callable[[], Any] | None:
    """glibc's ``malloc_trim(0)`` (releases free heap pages anywhere in every arena), or ``None`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return functools.partial(trim, 0)


def _always_true() -> bool:
    return True


def _hyperparams(group: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in _NOT_HYPERPARAMS}


def _plain_backward(loss: torch.Tensor, **kwargs: Any) -> None:
    loss.backward(**kwargs)


def _remove_handles(handles: list[RemovableHandle]) -> None:
    # Module level on purpose: the finalizer must not reference the optimizer, or it would keep it alive.
    while handles:
        handles.pop().remove()


def _make_hook(owner: weakref.ref[LayerwiseOptimizer]) -> Callable[[torch.Tensor], None]:
    # Parameters outlive optimizers; holding only a weakref means a dead optimizer can never step.
    def hook(param: torch.Tensor) -> None:
        optimizer = owner()
        if optimizer is not None:
            optimizer._on_grad_ready(param)

    hook._layerwise_owner = owner  # type: ignore[attr-defined]
    return hook


def _refuse_unaveraged(optimizer: LayerwiseOptimizer) -> None:
    """A hook in a multi-process run without ``attach_ddp`` would step on this process's own gradient."""
    if optimizer._checked_world:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError(
            f"a layer-wise optimizer is stepping inside backward in a run of {dist.get_world_size()} processes "
            "without DDP's averaged gradients: wrap the model in DistributedDataParallel and call "
            "optimizer.attach_ddp(ddp_model) before the first backward (OptimTrainer does this)."
        )
    optimizer._checked_world = True


def _live_owners(param: torch.Tensor) -> list[LayerwiseOptimizer]:
    # Read from the tensor's own hook table (private torch attribute; without it the check is skipped).
    hooks = getattr(param, "_post_accumulate_grad_hooks", None) or {}
    owners = (getattr(h, "_layerwise_owner", None) for h in hooks.values())
    return [opt for ref in owners if ref is not None and (opt := ref()) is not None]


def _active_owners(param: torch.Tensor) -> list[LayerwiseOptimizer]:
    return [o for o in _live_owners(param) if o.should_step is _always_true or o.should_step is True]


class _InnerStateView(Mapping[torch.Tensor, dict[str, Any]]):
    """Read-only ``param -> state`` view over the inner optimizers, so ``optimizer.state[p]`` keeps working."""

    def __init__(self, inner: Mapping[torch.Tensor, torch.optim.Optimizer]) -> None:
        self._inner = inner

    def __getitem__(self, param: torch.Tensor) -> dict[str, Any]:
        inner = self._inner.get(param)
        if inner is None or param not in inner.state:
            raise KeyError(param)
        return inner.state[param]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (p for p, inner in self._inner.items() if p in inner.state)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Runs one inner optimizer per trainable parameter from that parameter's post-accumulate-grad hook.

    Args:
        param_groups: ordinary torch param groups (or an iterable of tensors). Frozen parameters may be
            listed; they get no inner optimizer and no hook.
        inner_factory: called once per trainable parameter with ``[{**group_hyperparams, "params": [p]}]``;
            must return an optimizer owning exactly that one parameter.
        clip_per_param: if set, each parameter's gradient is clipped to this L2 norm before its step.
        max_grad_norm: if set, exact global-norm clipping as ``torch.nn.utils.clip_grad_norm_``. Call
            ``optimizer.backward(loss)`` instead of ``loss.backward()``: it runs a measuring pass, then the
            stepping pass. A plain ``loss.backward()`` still clips exactly, but then the hooks hold every
            gradient until ``step()`` (the memory layer-wise stepping saves is spent).

    Attributes:
        should_step: a bool or a zero-argument callable; while it is false the hooks leave gradients to
            accumulate in ``.grad`` (non-final micro-batches of gradient accumulation).
        last_grad_norm: L2 norm (float tensor, before clipping) over the gradients stepped since the
            previous ``step()``; ``None`` before the first ``step()``.
    """

    def __init__(
        self,
        param_groups: Iterable[dict[str, Any]] | Iterable[torch.Tensor],
        inner_factory: InnerFactory,
        *,
        clip_per_param: float | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        if clip_per_param is not None and not clip_per_param > 0:
            raise ValueError(f"clip_per_param must be a positive norm, got {clip_per_param}")
        if max_grad_norm is not None and not (0 < max_grad_norm < float("inf")):
            raise ValueError(f"max_grad_norm must be a positive finite norm, got {max_grad_norm}")
        if max_grad_norm is not None and clip_per_param is not None:
            raise ValueError("choose one of max_grad_norm (global-norm clipping) and clip_per_param, not both")
        # Set before torch's __init__, which calls add_param_group for the constructor's groups.
        self._initialised = False
        self._inner_factory = inner_factory
        self._clip_per_param = clip_per_param
        self._max_grad_norm = max_grad_norm
        # Global clipping: None outside backward(), else "measure" (first pass) or "apply" (second pass).
        self._phase: str | None = None
        self._clip_coef: torch.Tensor | None = None
        self._inner: dict[torch.Tensor, torch.optim.Optimizer] = {}
        self._group_index: dict[torch.Tensor, int] = {}
        # Per parameter: the outer-group values its inner optimizer last received. Only keys whose outer
        # value changed since are pushed, so values an inner optimizer keeps in its own group (schedule-free's
        # k/train_mode/weight_sum, Prodigy's d) are not reset every step.
        self._synced: dict[torch.Tensor, dict[str, Any]] = {}
        # Per group: the parameter whose inner group speaks for the group when inner-owned values are copied
        # back to the outer group (the most recently stepped one, as a parameter without gradients lags).
        self._representative: dict[int, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._hooks_active = True
        # Per-parameter gradient norms of the step in progress (before clipping).
        self._norms: list[torch.Tensor] = []
        self.should_step: Callable[[], bool] | bool = _always_true
        self.last_grad_norm: torch.Tensor | None = None
        # Set by attach_ddp: parameters are stepped from DDP's communication hook on averaged gradients.
        self._ddp: Any = None
        self._checked_world = False
        self._stepped_in_backward: set[torch.Tensor] = set()
        # Bytes of gradients freed in backward since free heap memory was last handed back (TRIM_EVERY_BYTES).
        self._freed_bytes = 0

        # Copies: torch rewrites the group dicts it is given, and the caller's dicts stay theirs.
        groups = [dict(g) if isinstance(g, dict) else g for g in param_groups]
        super().__init__(groups, defaults={})
        self._finalizer = weakref.finalize(self, _remove_handles, self._handles)
        # At interpreter exit there is nothing left to protect, and torch may already be half torn down.
        self._finalizer.atexit = False
        self._attach(range(len(self.param_groups)))
        self.state = _InnerStateView(self._inner)  # type: ignore[assignment]
        self._initialised = True

    # ----------------------------------------------------------------------------------------- set-up

    def _attach(self, group_indices: Iterable[int]) -> None:
        """Builds the inner optimizers of these groups, then hooks their parameters: all or nothing."""
        built: dict[torch.Tensor, tuple[int, torch.optim.Optimizer, dict[str, Any]]] = {}
        for gi in group_indices:
            group = self.param_groups[gi]
            hyper = _hyperparams(group)
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                if p in built or p in self._inner:
                    raise ValueError("a parameter appears more than once in the layer-wise optimizer")
                if self._hooks_active:
                    self._check_not_owned(p)
                inner = self._inner_factory([{**hyper, "params": [p]}])
                inner_groups = getattr(inner, "param_groups", None)
                if (
                    not inner_groups
                    or len(inner_groups) != 1
                    or len(inner_groups[0]["params"]) != 1
                    or inner_groups[0]["params"][0] is not p
                ):
                    raise ValueError(
                        "inner_factory must return an optimizer with exactly one param group holding "
                        f"exactly the given parameter, got {type(inner).__name__}"
                    )
                built[p] = (gi, inner, hyper)

        handles: list[RemovableHandle] = []
        if self._hooks_active:
            hook = _make_hook(weakref.ref(self))
            try:
                for p in built:
                    handles.append(p.register_post_accumulate_grad_hook(hook))
            except BaseException:
                _remove_handles(handles)
                raise

        for p, (gi, inner, hyper) in built.items():
            group = self.param_groups[gi]
            synced = dict(hyper)
            for k, v in _hyperparams(inner.param_groups[0]).items():
                # The inner optimizer's defaults become visible (and schedulable) on the outer group.
                group.setdefault(k, v)
                synced.setdefault(k, v)
            self._inner[p] = inner
            self._group_index[p] = gi
            self._synced[p] = synced
            self._representative.setdefault(gi, p)
        self._handles.extend(handles)

    def _check_not_owned(self, param: torch.Tensor) -> None:
        """Refuses a parameter another live, ungated layer-wise optimizer steps: the first hook would win.

        An owner whose ``should_step`` was replaced (a Trainer gates it to its own training steps) is
        inert outside them, so a second optimizer on the same model may coexist with it.
        """
        if not _active_owners(param):
            return
        # An unreachable optimizer stuck in a reference cycle is not a real owner: collect it and look again.
        gc.collect()
        if _active_owners(param):
            raise ValueError(
                "a parameter is already stepped in backward by another live LayerwiseOptimizer; "
                "call remove_hooks() on that one (or drop every reference to it) first"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group and, once constructed, builds and hooks inner optimizers for its trainable params."""
        if not self._initialised:
            # torch's __init__ adding the constructor's groups; __init__ attaches them all at once.
            super().add_param_group(param_group)
            return
        super().add_param_group(dict(param_group))
        try:
            self._attach([len(self.param_groups) - 1])
        except BaseException:
            self.param_groups.pop()
            raise

    # ----------------------------------------------------------------------------------------- stepping

    def _stepping_enabled(self) -> bool:
        should_step = self.should_step
        return bool(should_step()) if callable(should_step) else bool(should_step)

    def _on_grad_ready(self, param: torch.Tensor) -> None:
        if self._ddp is not None:
            return  # DDP's communication hook steps it, once the gradient is averaged
        if not self._stepping_enabled():
            return
        _refuse_unaveraged(self)
        inner = self._inner.get(param)
        if inner is None or param.grad is None:
            return
        # Only glibc's heap needs the hand-back; accelerators have their own caching allocators.
        nbytes = param.grad.numel() * param.grad.element_size() if param.grad.device.type == "cpu" else 0
        if self._max_grad_norm is None or self._phase == "apply":
            self._step_param(param, inner)
        elif self._phase == "measure":
            # Only the norm is needed from this pass; the second pass recomputes the gradient.
            self._norms.append(self._grad_norm_of(param.grad))
            param.grad = None
        else:
            return  # global clipping outside backward(): the gradient is held, and step() clips and steps it
        self._gradient_freed(nbytes)

    def _gradient_freed(self, nbytes: int) -> None:
        """Counts a gradient freed in backward; every TRIM_EVERY_BYTES, returns free heap pages to the OS."""
        if TRIM_EVERY_BYTES is None or nbytes == 0:
            return
        self._freed_bytes += nbytes
        if self._freed_bytes < TRIM_EVERY_BYTES:
            return
        self._freed_bytes = 0
        trim = _malloc_trim()
        if trim is not None:
            trim()

    @property
    def clips_globally(self) -> bool:
        """Whether this optimizer clips to a global gradient norm (``max_grad_norm=`` was given)."""
        return self._max_grad_norm is not None

    def backward(self, loss: torch.Tensor, backward_fn: Callable[..., Any] | None = None, **kwargs: Any) -> None:
        """``loss.backward()`` that also clips to ``max_grad_norm`` exactly when that is set.

        With global clipping the norm must be known before the first parameter steps, so this runs
        backward twice: a measuring pass (``retain_graph=True``; each gradient is freed once measured),
        then the stepping pass with torch's clip coefficient ``min(1, max_norm / (norm + 1e-6))``. When
        gradients from earlier micro-batches are held (gradient accumulation), the accumulated gradient is
        what gets clipped: one pass adds this micro-batch, then every parameter is clipped and stepped.
        ``backward_fn(loss, **kwargs)`` replaces ``loss.backward(**kwargs)`` (accelerate's ``backward``).
        """
        run = backward_fn if backward_fn is not None else _plain_backward
        if self._max_grad_norm is None or not self._stepping_enabled():
            run(loss, **kwargs)
            return
        if any(p.grad is not None for p in self._inner):
            run(loss, **kwargs)
            self._step_held()
            return
        self._norms = []
        self._phase = "measure"
        try:
            run(loss, **{**kwargs, "retain_graph": True})
            self._clip_coef = self._coefficient(self._pending_grad_norm())
            self._phase = "apply"
            run(loss, **kwargs)
        finally:
            self._phase = None
            self._clip_coef = None

    def _coefficient(self, total_norm: torch.Tensor) -> torch.Tensor:
        # torch.nn.utils.clip_grads_with_norm_'s formula, so a layer-wise run ends where a whole-model one does.
        max_norm = float(self._max_grad_norm or 0.0)  # only called when global clipping is on
        return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)

    def _step_held(self) -> None:
        """Global clipping over the gradients the parameters hold now, then a step of each."""
        held = [(p, inner) for p, inner in self._inner.items() if p.grad is not None]
        if not held:
            return
        self._norms.extend(self._grad_norm_of(p.grad) for p, _ in held)  # type: ignore[arg-type]
        self._clip_coef = self._coefficient(self._pending_grad_norm())
        try:
            for p, inner in held:
                self._step_param(p, inner)
        finally:
            self._clip_coef = None

    @staticmethod
    def _grad_norm_of(grad: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.linalg.vector_norm(grad, dtype=torch.promote_types(grad.dtype, torch.float32))

    def _sync_hyperparams(self, param: torch.Tensor, inner: torch.optim.Optimizer) -> None:
        group = self.param_groups[self._group_index[param]]
        inner_group = inner.param_groups[0]
        synced = self._synced[param]
        for k, v in group.items():
            if k not in _NOT_HYPERPARAMS and synced.get(k, _MISSING) is not v:
                inner_group[k] = v
                synced[k] = v

    def _step_param(self, param: torch.Tensor, inner: torch.optim.Optimizer) -> None:
        self._sync_hyperparams(param, inner)
        grad = param.grad
        if grad is None:
            return
        with torch.no_grad():
            coef = self._clip_coef
            if coef is not None:
                # Global clipping: the norm was recorded when it was measured.
                grad.mul_(coef.to(grad.device))
            else:
                norm = self._grad_norm_of(grad)
                self._norms.append(norm)
                if self._clip_per_param is not None:
                    torch.nn.utils.clip_grads_with_norm_([param], self._clip_per_param, norm)
        inner.step()
        param.grad = None
        self._representative[self._group_index[param]] = param

    def _pull_inner_values(self) -> None:
        """Copies values inner optimizers changed in their own group back to the outer groups.

        Schedule-free keeps k/train_mode/weight_sum in its group, Prodigy keeps d: the outer groups must show
        them, for state_dict (resume) and for callers reading ``param_groups[0]["train_mode"]``. A value the
        outer group changed since the last push (a scheduler's new lr) wins over the inner one.
        """
        for gi, group in enumerate(self.param_groups):
            rep = self._representative.get(gi)
            if rep is None:
                continue
            synced = self._synced[rep]
            changed: dict[str, Any] = {}
            for k, v in _hyperparams(self._inner[rep].param_groups[0]).items():
                last_pushed = synced.get(k, _MISSING)
                if v is last_pushed or (k in group and group[k] is not last_pushed):
                    continue
                changed[k] = v
            if not changed:
                continue
            group.update(changed)
            # The other inner optimizers hold these values already (they stepped alongside), so marking them
            # as pushed keeps the next hook from writing them back over their own.
            for p in group["params"]:
                if p in self._synced:
                    self._synced[p].update(changed)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Finalises a step whose updates already happened in backward.

        The closure (forward + backward, which does the updates) runs first, as in torch optimizers.
        Trainable parameters that still hold a gradient (set by hand, or produced while the hooks were
        removed) are stepped now; parameters without a gradient are left alone.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._stepping_enabled():
            stepped = self._stepped_in_backward
            if self._max_grad_norm is not None:
                self._step_held()  # global clipping is refused under DDP (attach_ddp), so nothing was stepped there
            else:
                for p, inner in self._inner.items():
                    if p in stepped:
                        p.grad = None  # DDP copied the averaged gradient back after the hook had stepped it
                    elif p.grad is not None and self._ddp is None:
                        self._step_param(p, inner)
        self._stepped_in_backward = set()

        self.last_grad_norm = self._pending_grad_norm()
        self._norms = []
        self._pull_inner_values()
        return loss

    def _pending_grad_norm(self) -> torch.Tensor:
        norms = self._norms
        if not norms:
            return torch.zeros((), device=self._any_device())
        device = norms[0].device
        # As torch.nn.utils.get_total_norm combines per-tensor norms.
        return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))

    def grad_norm(self) -> torch.Tensor:
        """Norm of the gradients of the current step, usable between backward and ``step()``.

        The HF Trainer reads the gradient norm before calling ``step()``; once ``step()`` has run (and until
        the next hook fires) this is ``last_grad_norm``.
        """
        if self._norms or self.last_grad_norm is None:
            return self._pending_grad_norm()
        return self.last_grad_norm

    def _any_device(self) -> torch.device:
        for group in self.param_groups:
            for p in group["params"]:
                return p.device
        return torch.device("cpu")

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    def train(self) -> None:
        """Forwards to inner optimizers that have a train mode (schedule-free); a no-op otherwise."""
        self._forward_mode("train")

    def eval(self) -> None:
        """Forwards to inner optimizers that have an eval mode (schedule-free); a no-op otherwise."""
        self._forward_mode("eval")

    def _forward_mode(self, name: str) -> None:
        for inner in self._inner.values():
            method = getattr(inner, name, None)
            if callable(method):
                method()
        self._pull_inner_values()

    def attach_ddp(self, ddp_model: Any) -> None:
        """Step each parameter from ``ddp_model``'s communication hook, on its averaged gradient.

        Call once, after wrapping the model in ``DistributedDataParallel`` and before the first backward
        (``OptimTrainer`` does this itself). Replaces DDP's default all-reduce with the same average,
        followed by the steps of that bucket's parameters.
        """
        from .ddp import register_layerwise_comm_hook

        if self._ddp is ddp_model:
            return
        if self._ddp is not None:
            raise ValueError("this layer-wise optimizer is already attached to another DDP model")
        if self._max_grad_norm is not None:
            # DDP's hook steps each bucket as soon as it is averaged: no pass can see the global norm first.
            raise ValueError(
                "layer-wise global-norm clipping (clip=global) cannot run under DDP: the communication hook steps "
                "each gradient bucket as soon as it is averaged. Use optim_args='clip_per_param=...', "
                "max_grad_norm=0, or the whole-model optimizer name."
            )
        register_layerwise_comm_hook(ddp_model, self)
        self._ddp = ddp_model

    def _step_averaged(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        """Steps ``param`` with DDP's averaged ``grad`` (called from the communication hook)."""
        inner = self._inner.get(param)
        if inner is None or not self._stepping_enabled():
            return
        param.grad = grad
        self._step_param(param, inner)
        self._stepped_in_backward.add(param)

    # ----------------------------------------------------------------------------------------- lifetime

    def remove_hooks(self) -> None:
        """Detaches from autograd for good; ``step()`` then steps whatever gradients are present."""
        self._hooks_active = False
        _remove_handles(self._handles)

    @property
    def hooks_installed(self) -> bool:
        return bool(self._handles)

    @property
    def inner_optimizers(self) -> Mapping[torch.Tensor, torch.optim.Optimizer]:
        return MappingProxyType(self._inner)

    def __getstate__(self) -> dict[str, Any]:
        # A copy would share parameters but not hooks, and so would silently never step.
        raise TypeError(f"{type(self).__name__} cannot be pickled or copied; save its state_dict() instead")

    def __repr__(self) -> str:
        inner_names = "/".join(sorted({type(o).__name__ for o in self._inner.values()})) or "none"
        n_params = sum(len(g["params"]) for g in self.param_groups)
        return (
            f"{type(self).__name__}(inner={inner_names}, params={len(self._inner)}, "
            f"frozen={n_params - len(self._inner)}, groups={len(self.param_groups)}, "
            f"hooks={'installed' if self.hooks_installed else 'removed'})"
        )

    # ----------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Torch-layout state: per-parameter inner state under torch's parameter index."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        self._pull_inner_values()
        packed_groups: list[dict[str, Any]] = []
        state: dict[int, dict[str, Any]] = {}
        index = 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(index, index + len(group["params"])))
            packed_groups.append(packed)
            for p in group["params"]:
                inner = self._inner.get(p)
                if inner is not None:
                    inner_state = inner.state_dict()["state"]
                    if len(inner_state) > 1:
                        raise RuntimeError(f"{type(inner).__name__} holds state for more than its one parameter")
                    if inner_state:
                        state[index] = next(iter(inner_state.values()))
                index += 1
        state_dict: dict[str, Any] = {"state": state, "param_groups": packed_groups}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the outer groups' hyperparameters, then each inner optimizer through its own loader."""
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError("loaded state dict contains a parameter group of a different size")

        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            # Deep copy as torch does: the caller may reuse its dict, and containers must not be shared.
            loaded = copy.deepcopy({k: v for k, v in saved.items() if k != "params"})
            if "param_names" in group and "param_names" not in loaded:
                loaded["param_names"] = group["param_names"]
            params = group["params"]
            # In place: the group dicts' identity is kept for anything holding on to them.
            group.clear()
            group.update(loaded)
            group["params"] = params
            hyper = _hyperparams(group)
            for p, saved_index in zip(params, saved["params"], strict=True):
                inner = self._inner.get(p)
                if inner is None:
                    continue
                one_param_state = {}
                if saved_index in saved_state:
                    one_param_state[0] = saved_state[saved_index]
                inner.load_state_dict({"state": one_param_state, "param_groups": [{**hyper, "params": [0]}]})
                # Share the outer objects again (the inner loader deep-copied them), so in-place changes
                # such as a scheduler filling a tensor lr keep reaching the inner optimizer.
                inner_group = inner.param_groups[0]
                # Tensors an optimizer updates in place as its own counter (optimi's group "step") stay its
                # own copy; only the lr is shared, for schedulers that fill a tensor lr in place.
                inner_group.update({k: v for k, v in hyper.items() if k == "lr" or not isinstance(v, torch.Tensor)})
                self._synced[p] = {**_hyperparams(inner_group), **hyper}

        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
