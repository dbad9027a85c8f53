"""Time to resolve and construct the optimizer: the registry against the stock transformers Trainer.

For Llama-shaped models built on the ``meta`` device (7B: 291 parameter tensors, 70B: 723; 7B shapes
with 1x/2x/4x the layers to show the cost is linear) and a synthetic model with ~32k tiny tensors
(where transformers' list-membership test makes its weight-decay split quadratic), each optimizer is
built three ways, interleaved, fresh model every time, median of the repetitions:

- ``stock``:    ``transformers.Trainer(...).create_optimizer(model)``
- ``trainer``:  ``optim_registry.OptimTrainer(...).create_optimizer(model)`` (what a user runs)
- ``function``: ``optim_registry.create_optimizer(args, model)`` (the registry alone)

Everything counted is what happens inside ``create_optimizer``: the weight-decay split, target-module
matching, the optimizer constructor(s) and, for layer-wise names, one inner optimizer and one hook per
tensor. Meta tensors have no storage, so nothing is allocated and no step ever runs. Each name is
built once untimed first, so importing its library is not counted (see import_cost.py for that).

    python benchmarks/build_time.py            # full run, a few minutes
    python benchmarks/build_time.py --quick    # seconds, checks the script works
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable
from typing import Any

import _common as C

DEFAULT_OPTIMS = ("adamw_torch", "galore_adamw", "apollo_adamw_layerwise", "muon")
TARGETS = [r".*attn.*", r".*mlp.*"]
IMPLS = ("stock", "trainer", "function")


# -- models -------------------------------------------------------------------------------------
def llama_on_meta(preset: str, layers: int | None = None) -> Callable[[], Any]:
    def build() -> Any:
        from optim_registry import demo

        shape = demo.model_presets[preset]
        config = shape.to_config(**({"num_hidden_layers": layers} if layers else {}))
        return demo.build_meta_model(config)

    return build


def synthetic_on_meta(n_tensors: int) -> Callable[[], Any]:
    """``n_tensors`` tiny tensors (Linear(8, 8) weight + bias pairs): the cost is all in the bookkeeping."""

    def build() -> Any:
        import torch
        from torch import nn

        class Synthetic(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(n_tensors // 2))

        with torch.device("meta"):
            return Synthetic()

    return build


def real_tiny_llama(layers: int = 4) -> Callable[[], Any]:
    def build() -> Any:
        from optim_registry import demo

        return demo.build_tiny_llama(layers=layers)

    return build


def model_rows(quick: bool, synthetic: int) -> list[tuple[str, str, Callable[[], Any], bool]]:
    """``(label, scaling series, builder, every optimizer?)``."""
    if quick:
        return [
            ("tiny (meta)", "", llama_on_meta("tiny"), True),
            ("tiny x2 layers (meta)", "scaling", llama_on_meta("tiny", 4), True),
            (f"synthetic {synthetic} tensors (meta)", "synthetic", synthetic_on_meta(synthetic), False),
        ]
    return [
        ("llama-7b (meta)", "scaling", llama_on_meta("llama-7b"), True),
        ("llama-70b (meta)", "", llama_on_meta("llama-70b"), True),
        ("llama-7b x2 layers (meta)", "scaling", llama_on_meta("llama-7b", 64), True),
        ("llama-7b x4 layers (meta)", "scaling", llama_on_meta("llama-7b", 128), True),
        (f"synthetic {synthetic} tensors (meta)", "synthetic", synthetic_on_meta(synthetic), False),
    ]


# -- the three ways of building -----------------------------------------------------------------
def arg_kwargs(name: str, tmp: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(output_dir=tmp, optim=name, report_to=[], use_cpu=True, save_strategy="no")
    from optim_registry.registry import optimizers

    spec = optimizers.get(name)
    if spec.target_modules:
        kwargs["optim_target_modules"] = TARGETS
    if spec.layerwise:
        kwargs["max_grad_norm"] = 0.0  # the registry refuses global clipping with layer-wise stepping
    return kwargs


class Builders:
    """One Trainer per side, built once with a real tiny model; ``create_optimizer(model=...)`` is timed."""

    def __init__(self, name: str, tmp: str) -> None:
        import transformers
        from transformers.training_args import OptimizerNames

        import optim_registry
        from optim_registry import demo

        kwargs = arg_kwargs(name, tmp)
        host = demo.build_tiny_llama()
        self.name = name
        self.stock_missing = None
        if name in {m.value for m in OptimizerNames}:
            self.stock = transformers.Trainer(model=host, args=transformers.TrainingArguments(**kwargs))
        else:
            self.stock = None
            self.stock_missing = f"{name!r} is not an optim name of transformers {transformers.__version__}"
        self.args = optim_registry.TrainingArguments(**kwargs)
        self.ours = optim_registry.OptimTrainer(model=host, args=self.args)
        self._create = optim_registry.create_optimizer

    def available(self) -> tuple[str, ...]:
        return IMPLS if self.stock is not None else IMPLS[1:]

    def build(self, impl: str, model: Any) -> Any:
        if impl == "stock":
            self.stock.optimizer = None
            try:
                return self.stock.create_optimizer(model=model)
            finally:
                self.stock.optimizer = None
        if impl == "trainer":
            self.ours.optimizer = None
            try:
                return self.ours.create_optimizer(model=model)
            finally:
                self.ours.optimizer = None
        return self._create(self.args, model)


def measure_row(
    builders: Builders, make_model: Callable[[], Any], repeat: int, budget: float
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Interleaved timings (the order rotates every repetition); stops adding repetitions past ``budget`` s."""
    impls = builders.available()
    times: dict[str, list[float]] = {i: [] for i in impls}
    errors: dict[str, str] = {}
    spent = 0.0
    for rep in range(repeat):
        order = impls[rep % len(impls):] + impls[: rep % len(impls)]
        for impl in order:
            if impl in errors:
                continue
            model = make_model()
            gc.collect()
            try:
                with C.Timer() as t:
                    optimizer = builders.build(impl, model)
            except Exception as exc:  # noqa: BLE001 - reported in the row
                errors[impl] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                continue
            times[impl].append(t.seconds)
            spent += t.seconds
            del optimizer, model
        if spent > budget:
            break
    return times, errors


def count(model: Any) -> tuple[int, int]:
    params = list(model.parameters())
    return len(params), sum(p.numel() for p in params)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    with C.quiet():
        return _main(argv)


def _main(argv: list[str] | None) -> dict[str, Any]:
    p = C.parser("build_time", __doc__.splitlines()[0])
    p.add_argument("--optims", default=",".join(DEFAULT_OPTIMS), help="comma-separated optim names")
    p.add_argument("--repeat", type=int, default=5, help="repetitions per row (median reported)")
    p.add_argument("--budget", type=float, default=30.0, help="stop repeating a row after this many seconds")
    p.add_argument("--synthetic", type=int, default=32768, help="tensors in the synthetic model")
    a = p.parse_args(argv)
    if a.quick:
        a.repeat, a.budget, a.synthetic = 1, 5.0, 2000
        if a.optims == ",".join(DEFAULT_OPTIMS):
            a.optims = "adamw_torch,sgd_layerwise"  # one stock-comparable name, one layer-wise build
    before = C.machine()

    from optim_registry.registry import optimizers

    names = [n.strip() for n in a.optims.split(",") if n.strip()]
    notes: list[str] = []
    skipped: dict[str, str] = {}
    runnable = []
    for name in names:
        if name not in optimizers:
            skipped[name] = "not registered (yet) in optim_registry"
        else:
            runnable.append(name)
    for name, why in skipped.items():
        notes.append(f"skipped {name}: {why}")

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        builders = {}
        for name in runnable:
            try:
                builders[name] = Builders(name, tmp)
            except Exception as exc:  # noqa: BLE001
                skipped[name] = f"cannot set up: {type(exc).__name__}: {exc}"
                notes.append(f"skipped {name}: {skipped[name]}")
                continue
            # Untimed first build on a small real model: imports the optimizer's library.
            warm = real_tiny_llama(2)()
            for impl in builders[name].available():
                try:
                    builders[name].build(impl, warm)
                except Exception:  # noqa: BLE001 - the timed rows report it
                    pass
            if builders[name].stock_missing:
                notes.append(f"{name}: no stock figure, {builders[name].stock_missing}")

        for label, series, make_model, every in model_rows(a.quick, a.synthetic):
            model_counts = count(make_model())
            for name, b in builders.items():
                n_tensors, n_params = model_counts
                if not every and name != "adamw_torch":
                    continue
                times, errors = measure_row(b, make_model, a.repeat, a.budget)
                fallback = ""
                if errors and any("meta" in e.lower() for e in errors.values()):
                    # A library that refuses meta tensors: the same row on a real small CPU model instead.
                    make_real = real_tiny_llama(4)
                    times, errors = measure_row(b, make_real, a.repeat, a.budget)
                    n_tensors, n_params = count(make_real())
                    fallback = "refused meta tensors: measured on a real tiny Llama (4 layers, CPU) instead"
                row = row_for(label, series, name, n_tensors, n_params, times, errors, b.stock_missing, fallback)
                rows.append(row)
                print(
                    f"{label:34s} {name:24s} stock {C.fmt(row['stock_s'])} s  trainer {C.fmt(row['trainer_s'])} s "
                    f"({C.fmt(row['ratio_trainer'])}x)  function {C.fmt(row['function_s'])} s "
                    f"({C.fmt(row['ratio_function'])}x)" + (f"  errors {errors}" if errors else ""),
                    flush=True,
                )

    notes.append(
        "ratio = ours / stock (lower is faster); per-tensor figures in microseconds; each figure is the median "
        "of the repetitions shown, builds interleaved, a fresh meta model for every build"
    )
    print()
    print(render(rows))
    return C.finish(
        "build_time", a.out, machine_before=before, rows=rows, notes=notes,
        settings={"optims": names, "repeat": a.repeat, "budget_s": a.budget, "synthetic_tensors": a.synthetic,
                  "quick": a.quick, "optim_target_modules": TARGETS},
        skipped=skipped,
    )


def row_for(label: str, series: str, name: str, n_tensors: int, n_params: int, times: dict[str, list[float]],
            errors: dict[str, str], stock_missing: str | None, fallback: str) -> dict[str, Any]:
    med = {impl: (C.median(v) if v else None) for impl, v in times.items()}
    stock = med.get("stock")
    row: dict[str, Any] = {
        "model": label,
        "series": series,
        "optim": name,
        "tensors": n_tensors,
        "params": n_params,
        "stock_s": stock,
        "trainer_s": med.get("trainer"),
        "function_s": med.get("function"),
        "ratio_trainer": C.ratio(med.get("trainer"), stock),
        "ratio_function": C.ratio(med.get("function"), stock),
        "repetitions": {impl: len(v) for impl, v in times.items()},
        "samples_s": times,
        "errors": errors,
    }
    for impl in IMPLS:
        value = med.get(impl)
        row[f"{impl}_us_per_tensor"] = value / n_tensors * 1e6 if value is not None and n_tensors else None
    if stock_missing:
        row["stock_note"] = stock_missing
    if fallback:
        row["note"] = fallback
    return row


def render(rows: list[dict[str, Any]]) -> str:
    return C.table(rows, [
        ("model", "model", ""),
        ("optim", "optim", ""),
        ("tensors", "tensors", "d"),
        ("stock_s", "stock s", ".3g"),
        ("trainer_s", "OptimTrainer s", ".3g"),
        ("ratio_trainer", "ratio", ".2f"),
        ("function_s", "create_optimizer s", ".3g"),
        ("ratio_function", "ratio", ".2f"),
        ("stock_us_per_tensor", "stock us/tensor", ".3g"),
        ("trainer_us_per_tensor", "ours us/tensor", ".3g"),
    ])


if __name__ == "__main__":
    main()
