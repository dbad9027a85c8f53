"""GaLore, APOLLO and Q-GaLore: checkpointable subclasses, CPU-capable 8-bit steps, and their builders.

What the libraries (galore-torch 1.0, apollo-torch 1.0.3, q-galore-torch 1.0 over bitsandbytes 0.50) leave
open, and what the classes here add:

- their state holds Python projector objects, which ``torch.load(weights_only=True)`` (the Trainer's resume)
  refuses. ``state_dict()`` here stores each projector as a dict of tensors and plain values (its matrix, rank,
  gap, scale, type, APOLLO's current random seed, Q-GaLore's adaptive gap and cosine queue), and
  ``load_state_dict()`` rebuilds it, so a resumed run refreshes its projection exactly as the uninterrupted one;
- torch's ``load_state_dict`` casts floating state to the parameter's dtype; the dtypes that were saved are kept
  (GaLore's Adafactor keeps fp32 moments for bf16 weights);
- ``GaLoreAdamW8bit`` / ``QGaLoreAdamW8bit`` call ``torch.cuda.synchronize()`` every step (fails on CPU) and pass
  ``percentile_clipping`` / ``block_wise`` positionally into bitsandbytes' ``max_unorm`` / ``skip_zeros``. Q-GaLore's
  own ``update_step`` also calls bitsandbytes functions removed or re-ordered since 0.44 (``percentile_clipping``,
  a positional ``optimizer_update_32bit`` call that silently turns weight decay off). The 8-bit classes here keep
  the libraries' projection step and delegate the Adam update to bitsandbytes' own ``update_step``.

Classes are made on first use (module ``__getattr__``), so resolving ``galore_adamw`` imports galore_torch only.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from itertools import chain
from typing import Any

import torch

from ...context import BuildContext
from ..bitsandbytes import builders as bitsandbytes_family

#: Projector classes a checkpoint may name; nothing else is ever imported from a state dict.
_PROJECTORS = frozenset({
    "galore_torch.galore_projector:GaLoreProjector",
    "apollo_torch.svd_projector:GaLoreProjector",
    "apollo_torch.random_projector:GradientProjector",
    "q_galore_torch.q_galore_projector:GaLoreProjector",
})
_PACK_TAG = "__low_rank_projector__"


# ------------------------------------------------------------------------------------ projector state


def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _plain(value: Any, where: str) -> Any:
    """A projector attribute as tensors and plain Python values (what weights_only accepts)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, torch.Size):
        return {"__size__": list(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    raise TypeError(f"cannot save projector attribute {where} of type {type(value).__name__}")


def _restore(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict) and "__size__" in value:
        return torch.Size(value["__size__"])
    if isinstance(value, list):
        return [_restore(v, device) for v in value]
    return value


def pack_projector(projector: Any) -> dict[str, Any]:
    """``{"__low_rank_projector__": "module:Class", "attrs": {...}}`` for one projector object."""
    path = _class_path(projector)
    if path not in _PROJECTORS:
        raise TypeError(f"unknown projector class {path}; known: {sorted(_PROJECTORS)}")
    attrs = {k: _plain(v, f"{path}.{k}") for k, v in vars(projector).items()}
    return {_PACK_TAG: path, "attrs": attrs}


def unpack_projector(packed: dict[str, Any], device: torch.device) -> Any:
    """The projector object ``pack_projector`` described, its tensors on ``device`` in their saved dtype."""
    path = packed[_PACK_TAG]
    if path not in _PROJECTORS:
        raise ValueError(f"checkpoint names an unknown projector class {path!r}; known: {sorted(_PROJECTORS)}")
    module_name, _, qualname = path.partition(":")
    cls = getattr(importlib.import_module(module_name), qualname)
    projector = cls.__new__(cls)
    projector.__dict__.update({k: _restore(v, device) for k, v in packed["attrs"].items()})
    return projector


def _is_packed(value: Any) -> bool:
    return isinstance(value, dict) and _PACK_TAG in value


class ProjectorStateMixin:
    """``state_dict`` with projectors as plain data; ``load_state_dict`` rebuilds them and keeps saved dtypes.

    Mixed in before a GaLore / APOLLO / Q-GaLore optimizer class; the projector lives in
    ``state[p]["projector"]``.
    """

    state: Any
    param_groups: list[dict[str, Any]]

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()  # type: ignore[misc]
        packed_state = {}
        for index, param_state in state_dict["state"].items():
            if isinstance(param_state, dict) and "projector" in param_state:
                # torch's state_dict shares the live per-parameter dicts: copy before replacing.
                param_state = dict(param_state)
                param_state["projector"] = pack_projector(param_state["projector"])
            packed_state[index] = param_state
        return {**state_dict, "state": packed_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_state = state_dict["state"]
        projectors: dict[Any, dict[str, Any]] = {}
        stripped: dict[Any, Any] = {}
        for index, param_state in saved_state.items():
            if isinstance(param_state, dict) and _is_packed(param_state.get("projector")):
                param_state = dict(param_state)
                # Kept away from the parent loader: it would cast (and bitsandbytes would mangle strings).
                projectors[index] = param_state.pop("projector")
            stripped[index] = param_state
        super().load_state_dict({**state_dict, "state": stripped})  # type: ignore[misc]
        by_index = dict(
            zip(
                chain.from_iterable(g["params"] for g in state_dict["param_groups"]),
                chain.from_iterable(g["params"] for g in self.param_groups),
            )
        )
        for index, param_state in saved_state.items():
            param = by_index.get(index)
            if param is None or not isinstance(param_state, dict):
                continue
            live = self.state[param]
            for key, value in param_state.items():
                saved_float = isinstance(value, torch.Tensor) and value.is_floating_point()
                current = live.get(key)
                if saved_float and isinstance(current, torch.Tensor) and current.dtype != value.dtype:
                    # torch cast it to the parameter's dtype; an fp32 moment of a bf16 weight stays fp32.
                    live[key] = value.to(device=param.device, copy=True)
            if index in projectors:
                live["projector"] = unpack_projector(projectors[index], param.device)


# ------------------------------------------------------------------------------------ 8-bit step


def _sync(p: torch.Tensor) -> None:
    # What bitsandbytes' own step does; the libraries call torch.cuda.synchronize() unconditionally.
    if p.device.type == "cuda":
        torch.cuda.synchronize()


class LowRank8bitMixin(bitsandbytes_family.OwnOverrides):
    """GaLore's 8-bit AdamW step over bitsandbytes' ``Optimizer2State``, without CUDA-only calls.

    Config overrides (32-bit embedding state) apply to this optimizer's own parameters only
    (``OwnOverrides``: bitsandbytes keys them by position for the whole process).

    Parameters in a group with ``rank`` are stepped in the projected space: the gradient is projected,
    bitsandbytes' Adam update runs on a zero tensor of the projected shape (weight decay held back), the
    result is projected back onto the weight, then decoupled weight decay is applied; as in galore_torch.
    """

    state: Any
    param_groups: list[dict[str, Any]]
    initialized: bool

    def _init_2state(self, params: Any, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                     args: Any, min_8bit_size: int, is_paged: bool) -> None:
        from bitsandbytes.optim.optimizer import Optimizer2State

        # Keywords, not positions: the libraries' positional call lands in max_unorm / skip_zeros.
        Optimizer2State.__init__(
            self, "adam", params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optim_bits=8,
            args=args, min_8bit_size=min_8bit_size, is_paged=is_paged,
        )

    def _make_projector(self, group: dict[str, Any]) -> Any:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self.initialized:
            self.check_overrides()  # type: ignore[attr-defined]
            self.to_gpu()  # type: ignore[attr-defined]
            self.initialized = True
        for gindex, group in enumerate(self.param_groups):
            for pindex, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if "rank" in group:
                    self._projected_step(group, p, gindex, pindex)
                else:
                    self._plain_step(group, p, gindex, pindex)
        return loss

    def _plain_step(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
        state = self.state[p]
        if "state1" not in state:
            self.init_state(group, p, gindex, pindex)  # type: ignore[attr-defined]
        self.prefetch_state(p)  # type: ignore[attr-defined]
        self.update_step(group, p, gindex, pindex)  # type: ignore[attr-defined]
        _sync(p)

    def _projected_step(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
        state = self.state[p]
        state.setdefault("step", 0)
        if "projector" not in state:
            state["projector"] = self._make_projector(group)
        full_grad = p.grad
        low_rank_grad = state["projector"].project(full_grad, state["step"])
        weight = p.data
        weight_decay = group["weight_decay"]
        # bitsandbytes updates `p` in place: let it update a zero tensor of the projected shape.
        p.data = torch.zeros_like(low_rank_grad, dtype=weight.dtype)
        p.grad = low_rank_grad.to(weight.dtype)
        group["weight_decay"] = 0.0
        try:
            self._plain_step(group, p, gindex, pindex)
            update = p.data
        finally:
            group["weight_decay"] = weight_decay
            p.data = weight
            p.grad = full_grad
        weight.add_(state["projector"].project_back(update).to(weight.dtype))
        if weight_decay > 0.0:
            weight.add_(weight, alpha=-group["lr"] * weight_decay)


def keep_embeddings_32bit(optimizer: Any, model: Any) -> int:
    """The 8-bit records' ``adapt_model``: their classes are bitsandbytes optimizers, whose ``nn.Embedding`` state
    stays 32-bit as with bitsandbytes' own 8-bit names."""
    return bitsandbytes_family.keep_embeddings_32bit(optimizer, model)


# ------------------------------------------------------------------------------------ classes (lazy)


def _galore_adamw() -> type:
    from galore_torch import GaLoreAdamW

    class SafeGaLoreAdamW(ProjectorStateMixin, GaLoreAdamW):
        """``galore_torch.GaLoreAdamW`` whose state_dict loads with ``weights_only=True`` and resumes exactly."""

        def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                     eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True,
                     no_deprecation_warning: bool = True) -> None:
            # The library's deprecation warning is about transformers' old AdamW, not GaLore.
            super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                             correct_bias=correct_bias, no_deprecation_warning=no_deprecation_warning)

    return SafeGaLoreAdamW


def _galore_adafactor() -> type:
    from galore_torch import GaLoreAdafactor

    class SafeGaLoreAdafactor(ProjectorStateMixin, GaLoreAdafactor):
        """``galore_torch.GaLoreAdafactor`` with a weights_only state_dict and fp32 moments kept on resume."""

    return SafeGaLoreAdafactor


def _apollo_adamw() -> type:
    from apollo_torch import APOLLOAdamW

    class SafeAPOLLOAdamW(ProjectorStateMixin, APOLLOAdamW):
        """``apollo_torch.APOLLOAdamW`` with a weights_only state_dict; the random projector's seed is saved,
        so a refresh after resuming draws the same matrix as the uninterrupted run."""

    return SafeAPOLLOAdamW


def _galore_adamw_8bit() -> type:
    from galore_torch import GaLoreAdamW8bit
    from galore_torch.galore_projector import GaLoreProjector

    class SafeGaLoreAdamW8bit(ProjectorStateMixin, LowRank8bitMixin, GaLoreAdamW8bit):
        """``galore_torch.GaLoreAdamW8bit`` that runs on CPU, passes its arguments to bitsandbytes by name and
        saves a weights_only state_dict."""

        def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                     eps: float = 1e-8, weight_decay: float = 1e-2, args: Any = None, min_8bit_size: int = 4096,
                     is_paged: bool = False) -> None:
            self._init_2state(params, lr, betas, eps, weight_decay, args, min_8bit_size, is_paged)

        def _make_projector(self, group: dict[str, Any]) -> Any:
            return GaLoreProjector(group["rank"], update_proj_gap=group["update_proj_gap"], scale=group["scale"],
                                   proj_type=group["proj_type"])

    return SafeGaLoreAdamW8bit


def _q_galore_adamw8bit() -> type:
    from q_galore_torch import QGaLoreAdamW8bit
    from q_galore_torch.q_galore_projector import GaLoreProjector

    class SafeQGaLoreAdamW8bit(ProjectorStateMixin, LowRank8bitMixin, QGaLoreAdamW8bit):
        """``q_galore_torch.QGaLoreAdamW8bit`` working with current bitsandbytes, on CPU too, with a weights_only
        state_dict. Projector: q_galore_torch's (INT-n projection matrices, adaptive refresh gap).

        Q-GaLore's INT8-weight training (``float_grad`` on the parameters, from its own QLinear layers) is not
        supported: the weights are ordinary bf16 parameters.
        """

        def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                     eps: float = 1e-8, weight_decay: float = 1e-2, args: Any = None, min_8bit_size: int = 4096,
                     is_paged: bool = False) -> None:
            self._init_2state(params, lr, betas, eps, weight_decay, args, min_8bit_size, is_paged)

        def update_step(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
            from bitsandbytes.optim.optimizer import Optimizer2State

            # q_galore_torch's own update_step targets bitsandbytes < 0.44 (see the module docstring).
            Optimizer2State.update_step(self, group, p, gindex, pindex)

        def _make_projector(self, group: dict[str, Any]) -> Any:
            return GaLoreProjector(
                group["rank"], update_proj_gap=group["update_proj_gap"], scale=group["scale"],
                proj_type=group["proj_type"], quant=group["quant"], group_size=group["quant_group_size"],
                n_bit=group["quant_n_bit"], cos_threshold=group["cos_threshold"], gamma_proj=group["gamma_proj"],
                queue_size=group["queue_size"],
            )

    return SafeQGaLoreAdamW8bit


_FACTORIES: dict[str, Callable[[], type]] = {
    "SafeGaLoreAdamW": _galore_adamw,
    "SafeGaLoreAdafactor": _galore_adafactor,
    "SafeGaLoreAdamW8bit": _galore_adamw_8bit,
    "SafeAPOLLOAdamW": _apollo_adamw,
    "SafeQGaLoreAdamW8bit": _q_galore_adamw8bit,
}


def __getattr__(name: str) -> Any:
    factory = _FACTORIES.get(name)
    if factory is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = factory()
    cls.__module__ = __name__
    cls.__qualname__ = name
    globals()[name] = cls  # made once; pickling finds it by module and name
    return cls


# ------------------------------------------------------------------------------------ builders


def _with_groups(ctx: BuildContext) -> dict[str, Any]:
    kwargs = dict(ctx.kwargs)
    kwargs["params"] = [dict(g) for g in ctx.groups or []]
    return kwargs


#: Our optim_args names -> q_galore_torch's group keys.
_Q_GALORE_KEYS = {"proj_quant": "quant", "proj_bits": "quant_n_bit", "proj_group_size": "quant_group_size"}


def _adapter_modules(ctx: BuildContext) -> list[str]:
    from ...labels import peft_modules

    names = peft_modules(ctx.model)
    if not names and getattr(ctx.model, "peft_config", None):
        names = ["(peft_config is set)"]
    return names


def _quantized_weights(ctx: BuildContext) -> list[str]:
    model, table = ctx.model, ctx.labels
    found = []
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        found.append("(model loaded in 4/8-bit)")
    elif getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        found.append("(model has a quantization config)")
    for row in table.all_rows:  # frozen ones too: a quantized base under adapters
        p = table.param(row.name)
        if not p.is_floating_point() or type(p).__name__ in ("Params4bit", "Int8Params"):
            found.append(f"{row.name} ({type(p).__name__}, {p.dtype})")
    return found


def _projection_last_dim(shape: torch.Size, rank: int) -> int:
    rows, cols = shape[0], shape[1]
    r = min(rank, rows, cols)
    # proj_type=std keeps the smaller side: (r, cols) when rows >= cols, else (rows, r).
    return cols if rows >= cols else r


def _check_q_galore_model(ctx: BuildContext, targeted: list[tuple[str, torch.Tensor]]) -> None:
    name = ctx.spec.name
    ctx.require_model()
    adapters = _adapter_modules(ctx)
    if adapters:
        raise ValueError(
            f"optim={name!r} trains full weights through low-rank gradient projections and cannot be combined "
            f"with LoRA/PEFT adapters (found {', '.join(adapters[:4])}). Train the base weights without adapters, "
            "or use an ordinary optimizer (e.g. optim='adamw_torch') for the adapters."
        )
    quantized = _quantized_weights(ctx)
    if quantized:
        raise ValueError(
            f"optim={name!r} cannot train weights loaded in 4/8-bit ({', '.join(quantized[:4])}): it updates "
            "dense bf16 weights. Load the model in bf16 (from_pretrained(..., dtype=torch.bfloat16)) without a "
            "quantization_config."
        )
    not_bf16 = [f"{n} ({p.dtype})" for n, p in targeted if p.dtype != torch.bfloat16]
    if not_bf16:
        raise ValueError(
            f"optim={name!r} needs bf16 weights in the target modules; found {', '.join(not_bf16[:4])}"
            f"{' ...' if len(not_bf16) > 4 else ''}. Load the model with dtype=torch.bfloat16 or call "
            "model.to(torch.bfloat16) (TrainingArguments(bf16=True) only autocasts; it leaves fp32 weights)."
        )
    if any(hasattr(p, "float_grad") for _, p in targeted):
        raise ValueError(
            f"optim={name!r}: parameters carrying `float_grad` (Q-GaLore's own INT8 QLinear layers) are not "
            "supported; use ordinary bf16 nn.Linear weights"
        )


def _check_group_size(ctx: BuildContext, targeted: list[tuple[str, torch.Tensor]]) -> None:
    options = ctx.options
    group_size = int(options["proj_group_size"])
    # positive or -1: the record's check refused anything else when the arguments were created
    if not options.get("proj_quant") or group_size == -1:
        return
    rank = int(options["rank"])
    bad = []
    dims = []
    for n, p in targeted:
        last = _projection_last_dim(p.shape, rank)
        dims.append(last)
        if last % group_size:
            proj = (min(rank, *p.shape), p.shape[1]) if p.shape[0] >= p.shape[1] else (p.shape[0], min(rank, *p.shape))
            bad.append(f"{n} {tuple(p.shape)} -> projection {proj}")
    if bad:
        common = math.gcd(*dims)
        hint = f"proj_group_size={common} (or a divisor of it)" if common > 1 else "proj_group_size=-1"
        raise ValueError(
            f"optim_args proj_group_size={group_size} for optim={ctx.spec.name!r} must divide the last dimension "
            f"of every projection matrix, which it does not for: {'; '.join(bad[:4])}"
            f"{' ...' if len(bad) > 4 else ''}. Use {hint}, another rank, or proj_quant=false."
        )


def q_galore(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """Q-GaLore: bf16 weights, no adapters, no 4/8-bit loading; projection group size checked up front."""
    ctx.require_model()
    targeted = ctx.labels.named([row for row in ctx.labels if row.target])
    _check_q_galore_model(ctx, targeted)
    _check_group_size(ctx, targeted)
    kwargs = _with_groups(ctx)
    for group in kwargs["params"]:
        for ours, theirs in _Q_GALORE_KEYS.items():
            if ours in group:
                group[theirs] = group.pop(ours)
    return ctx.target(), kwargs
