"""The conformance harness: build, train, state round-trip and exact resume, for any registered name.

Plugin authors run it on their own optimizer::

    from optim_registry.testing import check_optimizer
    report = check_optimizer("my_sgd", optim_args="momentum=0.9")
    assert report.ok, report.failures

Everything runs for real through ``OptimTrainer`` on a tiny Llama built from a config (CPU, seconds).
"""

from __future__ import annotations

import io
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Resumed vs uninterrupted runs must agree to this (max absolute parameter difference).
RESUME_TOLERANCE = 1e-6

DEFAULT_TARGETS = [r".*attn.*", r".*mlp.*"]


@dataclass
class Report:
    """What ``check_optimizer`` found: each check's outcome and the measured figures."""

    name: str
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(self.checks.values()) and not self.failures

    def record(self, check: str, passed: bool, why: str = "") -> None:
        self.checks[check] = bool(passed)
        if not passed:
            self.failures.append(f"{check}: {why}" if why else check)


def tiny_model(seed: int = 0, vocab_size: int = 32, hidden: int = 16, layers: int = 2) -> Any:
    """A Llama small enough to train a step in milliseconds; same seed, same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


class TokenDataset:
    """Fixed random token sequences (labels = inputs); a torch-style map dataset."""

    def __init__(self, n: int = 64, seq_len: int = 16, vocab_size: int = 32, seed: int = 0) -> None:
        import torch

        g = torch.Generator().manual_seed(seed)
        # A learnable pattern (each sequence counts up from a random start) so the loss can fall.
        start = torch.randint(0, vocab_size, (n, 1), generator=g)
        self.data = (start + torch.arange(seq_len)) % vocab_size

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.data[i], "labels": self.data[i]}


def arguments(optim: str | None = None, output_dir: str = "unused", **kw: Any) -> Any:
    """``TrainingArguments`` for a quick check: no reporting, CPU, everything else as given.

    ``arguments("sgd", optim_args="momentum=0.9")``; ``training_args`` adds the settings of a whole run.
    """
    from .trainer import TrainingArguments

    kw.setdefault("report_to", [])
    kw.setdefault("use_cpu", True)
    if optim is not None:
        kw["optim"] = optim
    return TrainingArguments(output_dir=output_dir, **kw)


def training_args(name: str, output_dir: str, optim_args: Any = None, **overrides: Any) -> Any:
    from .registry import optimizers
    from .trainer import TrainingArguments

    spec = optimizers.get(name)
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir, optim=name, optim_args=optim_args, learning_rate=1e-2,
        per_device_train_batch_size=8, max_steps=4, save_strategy="no", logging_steps=1, report_to=[],
        use_cpu=True, seed=0, data_seed=0, disable_tqdm=True, lr_scheduler_type="constant",
        weight_decay=0.01,
    )
    if spec.target_modules:
        kwargs["optim_target_modules"] = DEFAULT_TARGETS
    if spec.layerwise:
        kwargs["max_grad_norm"] = 0.0
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def run(name: str, output_dir: str, optim_args: Any = None, *, model: Any = None, resume: str | None = None,
        dataset: Any = None, **overrides: Any) -> Any:
    """Train ``name`` on the tiny model through ``OptimTrainer``; returns the trainer."""
    from .trainer import OptimTrainer

    args = training_args(name, output_dir, optim_args, **overrides)
    trainer = OptimTrainer(
        model=model if model is not None else tiny_model(), args=args,
        train_dataset=dataset if dataset is not None else TokenDataset(),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def max_param_diff(a: Any, b: Any) -> float:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return max((pa[n].detach().float() - pb[n].detach().float()).abs().max().item() for n in pa)


def state_round_trip(optimizer: Any) -> tuple[bool, str]:
    """``state_dict()`` through ``torch.save`` / ``torch.load(weights_only=True)`` and back."""
    import torch

    from .trainer import unwrap_optimizer

    inner = unwrap_optimizer(optimizer)
    before = inner.state_dict()
    buffer = io.BytesIO()
    torch.save(before, buffer)
    buffer.seek(0)
    try:
        loaded = torch.load(buffer, weights_only=True)
    except Exception as exc:  # the message is the finding
        return False, f"torch.load(weights_only=True) refused the state: {exc}"
    inner.load_state_dict(loaded)
    after = inner.state_dict()
    same = _same(before, after)
    return same, "" if same else "state differs after load_state_dict(state_dict())"


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return False
        try:
            return bool(torch.equal(a.cpu(), b.cpu()))
        except Exception:  # tensor subclasses that cannot be compared count as a difference  # noqa: BLE001
            return False
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def check_optimizer(
    name: str, optim_args: Any = None, *, steps: int = 4, resume: bool = True, workdir: str | None = None,
    model_factory: Any = None, **overrides: Any,
) -> Report:
    """Build ``name``, train ``steps`` real steps and check it.

    Checks: the loss is finite; every trainable parameter moved; ``state_dict`` round-trips through
    ``torch.load(weights_only=True)``; and (``resume=True``) a run saved half-way and resumed from the
    checkpoint directory ends within ``RESUME_TOLERANCE`` of an uninterrupted one.

    ``model_factory`` (a zero-argument callable returning the same model each call) replaces the tiny
    Llama, e.g. ``lambda: tiny_model(vocab_size=512)`` to pass the 4096-element thresholds 8-bit
    optimizers use before they quantise.
    """
    report = Report(name)
    make_model = model_factory or tiny_model
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        model = make_model()
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        half = max(1, steps // 2)
        straight = run(name, str(root / "straight"), optim_args, model=model, max_steps=steps,
                       save_strategy="steps", save_steps=half, **overrides)
        losses = [h["loss"] for h in straight.state.log_history if "loss" in h]
        report.figures["final_loss"] = losses[-1] if losses else float("nan")
        report.record("finite_loss", bool(losses) and all(math.isfinite(v) for v in losses), f"losses {losses}")
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        unmoved = [
            n for n, p in model.named_parameters()
            if p.requires_grad and bool((p.detach() == start[n]).all())
        ]
        report.record("all_params_moved", not unmoved, f"unchanged: {unmoved[:5]}")
        report.figures["frozen"] = len(frozen)
        ok, why = state_round_trip(straight.optimizer)
        report.record("state_round_trip", ok, why)
        if resume:
            checkpoint = root / "straight" / f"checkpoint-{half}"
            resumed = run(name, str(root / "resumed"), optim_args, model=make_model(), max_steps=steps,
                          resume=str(checkpoint), **overrides)
            diff = max_param_diff(straight.model, resumed.model)
            report.figures["resume_max_diff"] = diff
            report.record("exact_resume", diff < RESUME_TOLERANCE, f"max |resumed - straight| = {diff:.3g}")
    return report
