"""Training steps per second of ``OptimTrainer`` against the stock ``transformers.Trainer``, same optimizer.

Same tiny Llama (``demo.build_tiny_llama``, seed 0), same bundled corpus, same arguments; only the
Trainer class (and its arguments class) differs. Runs alternate stock / ours and swap which goes first
every repetition; a callback stamps the end of every optimizer step, the first ``--warmup`` steps of a
run are dropped and a run's rate is 1 / median step time. Reported per optimizer: the median rate of
each side over the repetitions, their ratio (ours / stock, goal >= 0.98), the median of the per-repetition
ratios, and the ratio of the best runs (least disturbed by other load). ``torch.set_num_threads(1)``:
the tiny model's matrices are too small for threads to help, and one thread is less disturbed.

    python benchmarks/step_overhead.py
    python benchmarks/step_overhead.py --optims adamw_torch,sgd --repeat 9 --steps 80
"""

from __future__ import annotations

import gc
import sys
import tempfile
from typing import Any

import _common as C

DEFAULT_OPTIMS = ("adamw_torch", "sgd", "adafactor", "lion_32bit", "adamw_8bit")
GOAL = 0.98


def _call_counter(first: int, last: int) -> Any:
    """Counts Python function calls from the start of step ``first`` to the end of step ``last``.

    A noise-free measure of what one side adds per step (the timings on a busy machine are not).
    """
    from collections import Counter

    from transformers import TrainerCallback

    class CallCounter(TrainerCallback):
        def __init__(self) -> None:
            self.calls: Counter[tuple[str, str]] = Counter()
            self.steps = last - first + 1

        def _profile(self, frame: Any, event: str, arg: Any) -> None:
            if event == "call":
                code = frame.f_code
                where = code.co_filename.rpartition("site-packages/")[2].removeprefix(f"{C.REPO}/")
                self.calls[(where, code.co_name)] += 1

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step + 1 == first:
                sys.setprofile(self._profile)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == last:
                sys.setprofile(None)

    return CallCounter()


def _trainer(side: str, name: str, dataset: Any, tmp: str, max_steps: int) -> Any:
    import transformers
    from transformers.trainer_callback import PrinterCallback

    import optim_registry
    from optim_registry import demo

    kwargs = dict(
        output_dir=tmp, optim=name, learning_rate=1e-3, per_device_train_batch_size=8,
        max_steps=max_steps, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        seed=0, data_seed=0, dataloader_num_workers=0, logging_steps=20,
    )
    model = demo.build_tiny_llama(seed=0)
    if side == "stock":
        trainer: Any = transformers.Trainer(model=model, args=transformers.TrainingArguments(**kwargs),
                                            train_dataset=dataset)
    else:
        trainer = optim_registry.OptimTrainer(model=model, args=optim_registry.TrainingArguments(**kwargs),
                                              train_dataset=dataset)
    trainer.remove_callback(PrinterCallback)  # printing logs is not what is measured
    return trainer


def count_calls(name: str, dataset: Any, tmp: str, steps: int = 5) -> dict[str, Any]:
    """Python calls per training step on each side (steps 2..steps+1 of a short run), and what ours adds."""
    counted = {}
    for side in ("stock", "ours"):
        trainer = _trainer(side, name, dataset, tmp, steps + 1)
        counter = _call_counter(2, steps + 1)
        trainer.add_callback(counter)
        try:
            trainer.train()
        finally:
            sys.setprofile(None)
        counted[side] = counter.calls
        del trainer
        gc.collect()
    extra = counted["ours"].copy()
    extra.subtract(counted["stock"])
    return {
        "stock_calls_per_step": sum(counted["stock"].values()) / steps,
        "ours_calls_per_step": sum(counted["ours"].values()) / steps,
        "extra_calls": {f"{f}:{fn}": n / steps for (f, fn), n in extra.most_common() if n > 0},
        "fewer_calls": {f"{f}:{fn}": -n / steps for (f, fn), n in extra.items() if n < 0},
    }


def one_run(side: str, name: str, dataset: Any, tmp: str, warmup: int, steps: int) -> dict[str, float]:
    """One training run; returns its steps per second from the median step time."""
    trainer = _trainer(side, name, dataset, tmp, warmup + steps)
    model = trainer.model
    clock = C.step_clock()
    trainer.add_callback(clock)
    out = trainer.train()
    deltas = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])][max(0, warmup - 1):]
    step_s = C.median(deltas)
    loss = float(out.training_loss)  # equal on both sides when they trained the same thing
    del trainer, model
    gc.collect()
    return {"steps_per_s": 1.0 / step_s if step_s else float("nan"), "median_step_ms": step_s * 1e3, "loss": loss}


def runnable(name: str) -> str | None:
    """Why ``name`` cannot be compared here, or None."""
    from transformers.training_args import OptimizerNames

    from optim_registry import deps
    from optim_registry.registry import optimizers

    if name not in optimizers:
        return "not registered in optim_registry"
    spec = optimizers.get(name)
    missing = deps.missing(spec.requires)
    if missing:
        return "not installed: " + ", ".join(r.pip for r in missing)
    if spec.needs_gpu:
        return f"needs a GPU: {spec.needs_gpu}"
    if name not in {m.value for m in OptimizerNames}:
        return "not an optim name of the stock transformers Trainer"
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    with C.quiet():
        return _main(argv)


def _main(argv: list[str] | None) -> dict[str, Any]:
    p = C.parser("step_overhead", __doc__.splitlines()[0])
    p.add_argument("--optims", default=",".join(DEFAULT_OPTIMS), help="comma-separated optim names")
    p.add_argument("--repeat", type=int, default=5, help="runs per side and optimizer (interleaved)")
    p.add_argument("--steps", type=int, default=40, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of each run")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for the run")
    a = p.parse_args(argv)
    if a.quick:
        a.repeat, a.steps, a.warmup = 1, 3, 1
        if a.optims == ",".join(DEFAULT_OPTIMS):
            a.optims = "sgd"
    before = C.machine()

    import torch

    from optim_registry import demo

    threads_before = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    names = [n.strip() for n in a.optims.split(",") if n.strip()]
    skipped = {n: why for n in names if (why := runnable(n))}
    notes = [f"skipped {n}: {why}" for n, why in skipped.items()]
    dataset, _, _ = demo.make_datasets(seq_len=64)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                if name in skipped:
                    continue
                runs: dict[str, list[dict[str, float]]] = {"stock": [], "ours": []}
                error = None
                for rep in range(a.repeat):
                    for side in (("stock", "ours") if rep % 2 == 0 else ("ours", "stock")):
                        try:
                            runs[side].append(one_run(side, name, dataset, tmp, a.warmup, a.steps))
                        except Exception as exc:  # noqa: BLE001 - reported in the row
                            error = f"{side}: {type(exc).__name__}: {exc}"
                            break
                    if error:
                        break
                rows.append(row_for(name, runs, error))
                r = rows[-1]
                if not error:
                    r.update(count_calls(name, dataset, tmp))
                    r["extra_calls_per_step"] = r["ours_calls_per_step"] - r["stock_calls_per_step"]
                print(f"{name:14s} stock {C.fmt(r['stock_steps_per_s'])} steps/s  ours {C.fmt(r['ours_steps_per_s'])}"
                      f" steps/s  ratio {C.fmt(r['ratio'], '.3f')}" + (f"  error {error}" if error else ""), flush=True)
    finally:
        torch.set_num_threads(threads_before)

    print()
    print(C.table(rows, [
        ("optim", "optim", ""),
        ("stock_steps_per_s", "stock steps/s", ".1f"),
        ("ours_steps_per_s", "OptimTrainer steps/s", ".1f"),
        ("ratio", "ratio", ".3f"),
        ("ratio_paired", "paired ratio", ".3f"),
        ("ratio_best", "best/best", ".3f"),
        ("meets_goal", f">= {GOAL}", ""),
        ("stock_calls_per_step", "stock py calls/step", ".0f"),
        ("extra_calls_per_step", "ours adds", ".0f"),
    ]))
    notes.append(
        "py calls/step: Python function calls in one training step (sys.setprofile, separate short runs): a "
        "noise-free measure of what OptimTrainer adds per step; 'extra_calls' in the JSON lists them"
    )
    notes.append(
        f"ratio = ours / stock steps per second (higher is better, goal >= {GOAL}); medians over "
        f"{a.repeat} interleaved runs of {a.steps} measured steps each"
    )
    return C.finish(
        "step_overhead", a.out, machine_before=before, rows=rows, notes=notes, skipped=skipped,
        settings={"optims": names, "repeat": a.repeat, "steps": a.steps, "warmup": a.warmup, "threads": a.threads,
                  "batch_size": 8, "seq_len": 64, "model": "demo.build_tiny_llama(seed=0)", "goal": GOAL,
                  "quick": a.quick},
    )


def row_for(name: str, runs: dict[str, list[dict[str, float]]], error: str | None) -> dict[str, Any]:
    stock = [r["steps_per_s"] for r in runs["stock"]]
    ours = [r["steps_per_s"] for r in runs["ours"]]
    s_med = C.median(stock) if stock else None
    o_med = C.median(ours) if ours else None
    paired = [C.ratio(o, s) for o, s in zip(ours, stock)]
    paired = [x for x in paired if x is not None]
    ratio = C.ratio(o_med, s_med)
    return {
        "optim": name,
        "stock_steps_per_s": s_med,
        "ours_steps_per_s": o_med,
        "ratio": ratio,
        "ratio_paired": C.median(paired) if paired else None,
        "ratio_best": C.ratio(max(ours), max(stock)) if ours and stock else None,
        "meets_goal": None if ratio is None else ratio >= GOAL,
        "stock_runs": stock,
        "ours_runs": ours,
        "training_loss": {"stock": runs["stock"][-1]["loss"] if runs["stock"] else None,
                       "ours": runs["ours"][-1]["loss"] if runs["ours"] else None},
        "error": error,
    }


if __name__ == "__main__":
    main()
