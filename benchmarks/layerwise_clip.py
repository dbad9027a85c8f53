"""What exact global-norm clipping (``optim_args="clip=global"``) costs a layer-wise run, per training step.

Three runs through ``OptimTrainer`` on the same Llama (``demo.build_tiny_llama``, seed 0), the same bundled
corpus (batch 8 x 64 characters) and the same arguments, ``torch.set_num_threads(1)``:

- ``whole``: ``adamw_torch``, ``max_grad_norm=1.0`` (torch's ``clip_grad_norm_`` after backward);
- ``layerwise``: ``adamw_torch_layerwise``, ``max_grad_norm=0`` (no clipping, one backward);
- ``clip=global``: ``adamw_torch_layerwise``, ``optim_args="clip=global"``, ``max_grad_norm=1.0`` (a measuring
  backward, then the stepping backward: the norm must be known before the first parameter steps).

Runs rotate their order every repetition; a callback stamps every step end, the first ``--warmup`` steps of a
run are dropped and a run's step time is the median of the rest. Reported per model: the median over the
repetitions of each run's step time, and the ratios clip=global / layerwise and clip=global / whole (also the
median of the per-repetition ratios, steadier on a busy machine). Two model sizes: the tiny demo model
(hidden 64, 2 layers), where fixed per-step costs weigh most, and a small one (hidden 256, 4 layers), where
backward dominates.

    python benchmarks/layerwise_clip.py
    python benchmarks/layerwise_clip.py --models small --repeat 7 --steps 40
"""

from __future__ import annotations

import gc
import tempfile
from typing import Any

import _common as C

#: name -> build_tiny_llama keyword arguments
MODELS = {
    "tiny": {},
    "small": {"hidden_size": 256, "layers": 4, "intermediate_size": 512},
}

#: run -> (optim, optim_args, max_grad_norm)
RUNS = {
    "whole": ("adamw_torch", None, 1.0),
    "layerwise": ("adamw_torch_layerwise", None, 0.0),
    "clip=global": ("adamw_torch_layerwise", "clip=global", 1.0),
}


def one_run(run: str, model_kwargs: dict[str, Any], dataset: Any, tmp: str, warmup: int, steps: int) -> dict[str, Any]:
    """One training run; its median step time (ms) after the warm-up, and its final parameters' checksum."""
    from transformers.trainer_callback import PrinterCallback

    import optim_registry
    from optim_registry import demo

    optim, optim_args, max_grad_norm = RUNS[run]
    args = optim_registry.TrainingArguments(
        output_dir=tmp, optim=optim, optim_args=optim_args, max_grad_norm=max_grad_norm, learning_rate=1e-3,
        per_device_train_batch_size=8, max_steps=warmup + steps, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0, data_seed=0, dataloader_num_workers=0, logging_steps=10_000,
        lr_scheduler_type="constant",
    )
    model = demo.build_tiny_llama(seed=0, **model_kwargs)
    trainer = optim_registry.OptimTrainer(model=model, args=args, train_dataset=dataset)
    trainer.remove_callback(PrinterCallback)
    clock = C.step_clock()
    trainer.add_callback(clock)
    out = trainer.train()
    deltas = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])][max(0, warmup - 1):]
    params = sum(p.numel() for p in model.parameters())
    result = {"step_ms": C.median(deltas) * 1e3, "loss": float(out.training_loss), "params": params}
    del trainer, model
    gc.collect()
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    with C.quiet():
        return _main(argv)


def _main(argv: list[str] | None) -> dict[str, Any]:
    p = C.parser("layerwise_clip", __doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--repeat", type=int, default=5, help="runs of each kind per model (order rotates)")
    p.add_argument("--steps", type=int, default=30, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of each run")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for the run")
    a = p.parse_args(argv)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    if a.quick:
        a.repeat, a.steps, a.warmup = 1, 3, 1
        models = ["tiny"]
    before = C.machine()

    import torch

    from optim_registry import demo

    threads_before = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    dataset, _, _ = demo.make_datasets(seq_len=64)
    order = list(RUNS)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for model_name in models:
                samples: dict[str, list[dict[str, Any]]] = {run: [] for run in order}
                for rep in range(a.repeat):
                    rotated = order[rep % len(order):] + order[: rep % len(order)]
                    for run in rotated:
                        samples[run].append(one_run(run, MODELS[model_name], dataset, tmp, a.warmup, a.steps))
                rows.extend(rows_for(model_name, samples))
                for r in rows[-len(order):]:
                    print(f"{model_name:6s} {r['run']:12s} {C.fmt(r['step_ms'], '.2f')} ms/step  "
                          f"x{C.fmt(r['ratio_to_layerwise'], '.2f')} of layerwise  "
                          f"x{C.fmt(r['ratio_to_whole'], '.2f')} of whole", flush=True)
    finally:
        torch.set_num_threads(threads_before)

    print()
    print(C.table(rows, [
        ("model", "model", ""),
        ("params", "params", ",.0f"),
        ("run", "run", ""),
        ("step_ms", "ms/step", ".2f"),
        ("ratio_to_layerwise", "/ layerwise", ".2f"),
        ("ratio_to_layerwise_paired", "paired", ".2f"),
        ("ratio_to_whole", "/ whole", ".2f"),
        ("ratio_to_whole_paired", "paired", ".2f"),
    ]))
    notes = [
        "ratios: this run's median step time / that run's (above 1: slower); 'paired' is the median of the "
        f"per-repetition ratios; {a.repeat} repetitions of {a.steps} measured steps, order rotating",
        "clip=global pays a second backward pass per step; the whole-model run pays the gradients' memory instead",
    ]
    return C.finish(
        "layerwise_clip", a.out, machine_before=before, rows=rows, notes=notes,
        settings={"models": {m: MODELS[m] for m in models}, "runs": {k: list(v) for k, v in RUNS.items()},
                  "repeat": a.repeat, "steps": a.steps, "warmup": a.warmup, "threads": a.threads,
                  "batch_size": 8, "seq_len": 64, "quick": a.quick},
    )


def rows_for(model_name: str, samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    medians = {run: C.median(s["step_ms"] for s in runs) for run, runs in samples.items()}

    def paired(run: str, other: str) -> float | None:
        ratios = [C.ratio(x["step_ms"], y["step_ms"]) for x, y in zip(samples[run], samples[other])]
        ratios = [r for r in ratios if r is not None]
        return C.median(ratios) if ratios else None

    return [
        {
            "model": model_name,
            "params": runs[0]["params"],
            "run": run,
            "optim": RUNS[run][0],
            "optim_args": RUNS[run][1],
            "max_grad_norm": RUNS[run][2],
            "step_ms": medians[run],
            "ratio_to_layerwise": C.ratio(medians[run], medians["layerwise"]),
            "ratio_to_layerwise_paired": paired(run, "layerwise"),
            "ratio_to_whole": C.ratio(medians[run], medians["whole"]),
            "ratio_to_whole_paired": paired(run, "whole"),
            "runs_ms": [s["step_ms"] for s in runs],
            "training_loss": runs[-1]["loss"],
        }
        for run, runs in samples.items()
    ]


if __name__ == "__main__":
    main()
