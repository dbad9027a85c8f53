"""Which parameters get what: the weight-decay split, the targeted groups, matrix routing. Pure functions over
the labels table (``labels.ParamTable``): nothing here looks at a parameter's name.

Everything here is linear in the number of parameter tensors (sets and dicts, never list membership), and
none of it changes the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .labels import ParamLabels, ParamTable


def build_groups(
    table: ParamTable, *, weight_decay: float, target_options: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Trainable parameters as param groups: (other, targeted) x (decay, no decay), empties dropped.

    Targeted groups carry ``target_options`` (GaLore's ``rank`` ...). The decay split is kept inside
    the targeted groups too (transformers drops it there).
    """
    buckets: dict[tuple[bool, bool], list[Any]] = {
        (False, True): [], (False, False): [], (True, True): [], (True, False): [],
    }
    for row, p in zip(table, (p for _, p in table.named()), strict=True):
        buckets[(row.target, row.decay)].append(p)
    groups = []
    for (targeted, decayed), params in buckets.items():
        if not params:
            continue
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
        if targeted:
            group.update(target_options or {})
        groups.append(group)
    return groups


# ------------------------------------------------------------------------------------ matrix routing

#: Name parts (the owning module's and the parameter's own) that keep a 2-D weight off the matrix side.
DEFAULT_MATRIX_EXCLUDE = r"embed|lm_head|wte|wpe|output"

#: Why a parameter went where it went (``optim-registry show muon`` / ``groups`` print these).
ROUTES = {
    "matrix": "hidden 2-D weight -> matrix side",
    "experts": "3-D expert stack (experts.gate_up_proj / down_proj) -> matrix side, one matrix per expert",
    "embedding": "nn.Embedding or the input embedding -> AdamW",
    "head": "the output head (lm_head) -> AdamW",
    "router": "MoE router (mlp.gate) -> AdamW (router_to_adamw=false puts it on the matrix side)",
    "excluded": "name matches the exclude pattern -> AdamW",
    "lora": "LoRA factor (lora_A / lora_B) -> AdamW (lora_to_adamw=false puts it on the matrix side)",
    "other": "norm, bias, scalar or other non-matrix tensor -> AdamW",
}
#: The routes that take the matrix side.
MATRIX_ROUTES = frozenset({"matrix", "experts"})


def route(row: ParamLabels, *, lora_to_adamw: bool = True, experts: bool = False, router_to_adamw: bool = True) -> str:
    """A parameter's route (a key of ``ROUTES``) from its labels; only ``matrix`` / ``experts`` take the matrix side.

    A 2-D weight takes the matrix side unless it is an embedding or the output head (by identity, which
    catches a tied head), a MoE router while ``router_to_adamw``, matched by the ``exclude`` pattern in its
    last two name parts (``lm_head`` / ``weight`` of ``lm_head.weight``: the full path would catch BERT's
    ``attention.output.dense``), or a LoRA factor while ``lora_to_adamw``. With ``experts``, a 3-D expert
    stack takes it too (each expert's matrix is orthogonalised on its own).
    """
    if lora_to_adamw and row.lora is not None:
        return "lora"
    if row.embedding:
        return "embedding"
    if row.head:
        return "head"
    if row.router and router_to_adamw:
        return "router"
    if row.norm or row.bias or row.ndim not in (2, 3) or (row.ndim == 3 and not (experts and row.expert_stack)):
        return "other"
    if row.excluded:
        return "excluded"
    return "experts" if row.ndim == 3 else "matrix"


def routes(table: ParamTable, **policy: bool) -> dict[str, str]:
    """Each trainable parameter's route under ``policy`` (``route``'s keywords)."""
    return {row.name: route(row, **policy) for row in table}


def split_matrix_groups(
    groups: Iterable[dict[str, Any]],
    table: ParamTable,
    routed: Mapping[str, str],
    *,
    flag: str,
    matrix_lr: float,
    other_lr: float,
    matrix_weight_decay: float | None = None,
    other_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Each group split into its matrix-side part (``flag=True``, first) and the rest (``flag=False``).

    Every part carries its own ``lr`` (a scheduler scales each from its own start); a decayed
    part takes ``matrix_weight_decay`` / ``other_weight_decay`` when given.
    """
    matrices: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for group in groups:
        for is_matrix, out in ((True, matrices), (False, others)):
            params = [p for p in group["params"] if (routed.get(table.name_of(p)) in MATRIX_ROUTES) == is_matrix]
            if not params:
                continue
            part = {k: v for k, v in group.items() if k != "params"}
            part.update({"lr": matrix_lr if is_matrix else other_lr, flag: is_matrix})
            decay = matrix_weight_decay if is_matrix else other_weight_decay
            if decay is not None and part.get("weight_decay", 0.0) > 0:
                part["weight_decay"] = decay
            out.append({"params": params, **part})
    return matrices + others


def split_by_dtype(groups: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each group split so that every part holds parameters of one dtype (FlashOptim needs that)."""
    out: list[dict[str, Any]] = []
    for group in groups:
        by_dtype: dict[Any, list[Any]] = {}
        for p in group["params"]:
            by_dtype.setdefault(p.dtype, []).append(p)
        out.extend({**group, "params": params} for params in by_dtype.values())
    return out
