"""``optim-registry compare``: train the bundled tiny Llama with several optimizers and compare them.

Every name trains the same model (same seed, same initial weights) on the same batches of the bundled
corpus through ``OptimTrainer``, then is evaluated on the held-out tail of the corpus. The table holds
the final training loss, the evaluation loss, the time per step, the optimizer state measured from the
optimizer's tensors and the peak resident memory during the run; it is printed and written to
``results.md`` / ``results.json`` beside a loss-curve picture (``loss_curves.png``).

Names that cannot run here (not registered, package missing, GPU needed) are skipped with the reason;
a name that fails while training is reported as failed and the others still run.

Importing this module imports nothing heavy; torch and transformers are imported when ``compare`` runs.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_OPTIMS = (
    "adamw_torch",
    "adafactor",
    "lion_32bit",
    "apollo_mini",
    "galore_adamw",
    "schedule_free_adamw",
    "muon",
)
DEFAULT_STEPS = 150
DEFAULT_BATCH = 16
DEFAULT_SEQ_LEN = 64
TARGET_MODULES = ["self_attn", "mlp"]
#: Steps averaged for the "final train loss" (one batch's loss is noisy).
FINAL_WINDOW = 10

#: Learning rates for the tiny model (hidden 64, 2 layers, batch 16 x 64 characters, 150 steps with a
#: cosine schedule), checked by hand on it: each record's ``demo_lr`` (layer-wise twins share their base's),
#: else DEFAULT_LR. Sign-based and orthogonalised updates have a fixed size per step, so they want other
#: rates than Adam (Muon's matrices use its own ``muon_lr`` option, 0.02 by default).
DEFAULT_LR = 1e-2


def learning_rate(name: str, family: str | None = None, overrides: dict[str, float] | None = None) -> float:
    """The rate ``compare`` uses for ``name``: ``--lr`` if given, else the record's ``demo_lr``.

    ``family`` is accepted for callers of the former signature and not used.
    """
    overrides = overrides or {}
    if name in overrides:
        return overrides[name]
    if "*" in overrides:
        return overrides["*"]
    from .registry import optimizers

    demo = optimizers.get(name).demo_lr if name in optimizers else None
    return DEFAULT_LR if demo is None else float(demo)


def tiny_model_optim_args(spec: Any) -> dict[str, Any] | None:
    """``optim_args`` that fit the record to the tiny model: its ``demo_options`` (low-rank ranks and gaps)."""
    return dict(spec.demo_options) or None


def parse_lr(text: str | None) -> dict[str, float]:
    """``--lr``: ``"3e-3"`` (every name) or ``"adamw_torch=3e-3,sgd=0.5"``."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        name, sep, value = token.rpartition("=")
        try:
            out[name.strip() if sep else "*"] = float(value)
        except ValueError:
            raise ValueError(f"--lr {text!r}: {value!r} is not a number; write 3e-3 or name=3e-3,name=0.5") from None
    return out


class Refused(ValueError):
    """The registry refused the name in this comparison's set-up before any step (a combination that cannot
    work, e.g. an optimizer that needs bf16 weights); reported as skipped, not failed."""


@dataclass
class RunResult:
    name: str
    family: str
    lr: float
    optim_args: dict[str, Any] | None
    steps: int
    final_train_loss: float
    eval_loss: float
    ms_per_step: float  # median
    ms_per_step_mean: float
    state_bytes: int
    trainable_params: int
    state_bytes_per_param: float
    record_state_bytes_per_param: float | None
    peak_rss_mib: float
    rss_at_start_mib: float
    seconds: float
    losses: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class NotRun:
    name: str
    reason: str
    failed: bool = False  # True: it started and raised; False: skipped before starting
    detail: str = ""


@dataclass
class Report:
    settings: dict[str, Any]
    results: list[RunResult]
    not_run: list[NotRun]
    files: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every name that could run did; 1 when one failed or nothing ran at all."""
        return 1 if any(n.failed for n in self.not_run) or not self.results else 0


# -- measuring --------------------------------------------------------------------------------------
def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of the tensors the optimizer keeps as state (each storage counted once).

    Walks ``optimizer.state`` and ``state_dict()["state"]`` through dicts, lists and plain objects
    (GaLore keeps projector objects holding tensors); the parameters themselves are not counted.
    """
    import torch

    from .trainer import unwrap_optimizer

    optimizer = unwrap_optimizer(optimizer)
    params = {id(p) for g in getattr(optimizer, "param_groups", []) for p in g["params"]}
    storages: set[int] = set()
    seen: set[int] = set()
    total = 0

    def visit(obj: Any, depth: int) -> None:
        nonlocal total
        if depth > 6 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if id(obj) in params or obj.device.type == "meta":
                return
            if type(obj) not in (torch.Tensor, torch.nn.Parameter) and hasattr(obj, "__tensor_flatten__"):
                # A tensor subclass (torchao's 4/8-bit state): count the plain tensors it is made of.
                try:
                    names, _ = obj.__tensor_flatten__()
                except Exception:  # noqa: BLE001 - fall back to the nominal size below
                    names = None
                if names is not None:
                    for inner in names:
                        visit(getattr(obj, inner), depth + 1)
                    return
            try:
                storage = obj.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
            except (RuntimeError, NotImplementedError):
                key, nbytes = 0, obj.numel() * obj.element_size()
            if key and key in storages:
                return
            storages.add(key)
            total += nbytes if key else obj.numel() * obj.element_size()
        elif isinstance(obj, dict) or hasattr(obj, "items") and callable(obj.items):
            for value in obj.values():
                visit(value, depth + 1)
        elif isinstance(obj, (list, tuple, set)):
            for value in obj:
                visit(value, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
            visit(vars(obj), depth + 1)

    visit(getattr(optimizer, "state", {}), 0)
    try:
        visit(optimizer.state_dict().get("state", {}), 0)
    except Exception:  # noqa: BLE001 - the live state was counted; a failing state_dict is not ours to report here
        pass
    return total


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRSS:
    """Samples the process's resident memory every ``interval`` seconds while the block runs."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes() or 0)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = _rss_bytes() or 0
        if self.start:
            self.peak = self.start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        else:  # no /proc: the process's lifetime peak (kilobytes on Linux, bytes on macOS)
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak = peak if sys.platform == "darwin" else peak * 1024
        self.peak = max(self.peak, _rss_bytes() or 0)


def _callback_class() -> type:
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        """Times each optimizer step and moves the shared progress bar."""

        def __init__(self, bar: Any, name: str) -> None:
            self.bar, self.name = bar, name
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.times.append(time.perf_counter() - self._start)
            if self.bar is not None:
                self.bar.update(1)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix_str(f"{self.name} loss {float(logs['loss']):.3f}", refresh=False)

    return Recorder


# -- one run ----------------------------------------------------------------------------------------
def training_arguments(spec: Any, *, output_dir: str, lr: float, steps: int, batch_size: int, seed: int) -> Any:
    """The arguments every run shares, adapted to what the record needs."""
    from .trainer import TrainingArguments

    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        optim=spec.name,
        optim_args=tiny_model_optim_args(spec),
        learning_rate=lr,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=2 * batch_size,
        # Schedule-free optimizers replace the schedule; everyone else gets warm-up + cosine decay.
        lr_scheduler_type="constant" if spec.owns_warmup or spec.protocol == "train_eval" else "cosine",
        # Schedule-free optimizers warm up themselves over warmup_steps (the schedule then gets none).
        warmup_steps=max(1, steps // 10),
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )
    if spec.target_modules:
        kwargs["optim_target_modules"] = list(TARGET_MODULES)
    if spec.layerwise:
        kwargs["max_grad_norm"] = 0.0
    return TrainingArguments(**kwargs)


def run_one(name: str, *, lr: float, steps: int, batch_size: int, seq_len: int, seed: int, datasets: Any,
            workdir: str, bar: Any = None) -> RunResult:
    """Train ``name`` for ``steps`` steps on the tiny Llama and measure it."""
    from transformers.trainer_callback import PrinterCallback

    from .demo import build_tiny_llama
    from .registry import optimizers
    from .trainer import OptimTrainer

    spec = optimizers.get(name)
    train, evaluation, tokenizer = datasets
    try:
        args = training_arguments(spec, output_dir=os.path.join(workdir, name), lr=lr, steps=steps,
                                  batch_size=batch_size, seed=seed)
    except ValueError as exc:
        raise Refused(str(exc)) from exc
    model = build_tiny_llama(tokenizer.vocab_size, seed=seed, max_position_embeddings=max(128, seq_len))
    recorder = _callback_class()(bar, name)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, PeakRSS() as rss:
        warnings.simplefilter("always")
        trainer = OptimTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                               callbacks=[recorder])
        trainer.remove_callback(PrinterCallback)  # the table is the output, not a dict per step
        try:
            trainer.train()
        except ValueError as exc:
            if not recorder.times:  # refused while building the optimizer, before the model was touched
                raise Refused(str(exc)) from exc
            raise
        eval_mode = getattr(trainer, "_optimizer_eval_mode", None)
        if callable(eval_mode):  # schedule-free: evaluate the averaged weights
            with eval_mode():
                metrics = trainer.evaluate()
        else:
            metrics = trainer.evaluate()
        state = optimizer_state_bytes(trainer.optimizer)
    seconds = time.perf_counter() - started
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    tail = losses[-FINAL_WINDOW:]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    times_ms = [t * 1000 for t in recorder.times[1:] or recorder.times]  # the first step pays for set-up
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    result = RunResult(
        name=name,
        family=spec.family,
        lr=lr,
        optim_args=tiny_model_optim_args(spec),
        steps=len(recorder.times),
        final_train_loss=sum(tail) / len(tail) if tail else math.nan,
        eval_loss=float(metrics.get("eval_loss", math.nan)),
        ms_per_step=statistics.median(times_ms) if times_ms else math.nan,
        ms_per_step_mean=statistics.fmean(times_ms) if times_ms else math.nan,
        state_bytes=state,
        trainable_params=trainable,
        state_bytes_per_param=state / trainable if trainable else math.nan,
        record_state_bytes_per_param=spec.state_bytes,
        peak_rss_mib=rss.peak / 2**20,
        rss_at_start_mib=rss.start / 2**20,
        seconds=seconds,
        losses=losses,
        warnings=[m[:300] for m in messages],
    )
    del trainer, model
    gc.collect()
    return result


# -- the whole job ----------------------------------------------------------------------------------
def compare(
    names: Sequence[str] = DEFAULT_OPTIMS,
    *,
    steps: int = DEFAULT_STEPS,
    out: str | Path = "compare_out",
    lr: dict[str, float] | None = None,
    batch_size: int = DEFAULT_BATCH,
    seq_len: int = DEFAULT_SEQ_LEN,
    seed: int = 0,
    threads: int = 1,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Report:
    """Train each name, print the table and write ``results.md``, ``results.json``, ``loss_curves.png``.

    When no name trains (every one skipped, refused or failed) nothing is written: the report's
    ``exit_code`` is 1 and the last line printed says so.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    from .runnable import can_run

    names = list(dict.fromkeys(names))  # keep order, drop repeats
    not_run: list[NotRun] = []
    runnable = []
    for name in names:
        ok, reason = can_run(name)
        if ok:
            runnable.append(name)
        else:
            not_run.append(NotRun(name, reason))
            echo(f"skipping {name}: {reason}")
    if not runnable:
        echo(_nothing_trained(not_run, out))
        return Report(settings={"steps": steps}, results=[], not_run=not_run)
    # Before any training: a bad --out found after minutes of training would lose every result.
    check_output_dir(Path(out))
    import torch
    import transformers
    from tqdm.auto import tqdm

    from .demo import make_datasets
    from .registry import optimizers

    old_threads = torch.get_num_threads()
    old_verbosity = transformers.logging.get_verbosity()
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    results: list[RunResult] = []
    datasets = make_datasets(seq_len=seq_len)
    started = time.perf_counter()
    try:
        # Redrawn in place on a terminal; into a log file, a line every 10 s instead of every update.
        interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        bar = tqdm(total=len(runnable) * steps, unit="step", desc="compare", disable=not progress or not runnable,
                   file=sys.stderr, dynamic_ncols=True, mininterval=0.1 if interactive else 10.0)
        with bar, tempfile.TemporaryDirectory(prefix="optim_registry_compare_") as workdir:
            for name in runnable:
                spec = optimizers.get(name)
                rate = learning_rate(name, spec.family, lr)
                bar.set_postfix_str(name, refresh=True)
                done_before = bar.n
                try:
                    results.append(run_one(name, lr=rate, steps=steps, batch_size=batch_size, seq_len=seq_len,
                                           seed=seed, datasets=datasets, workdir=workdir, bar=bar))
                except Refused as exc:
                    reason = f"refused in this set-up: {exc}"[:800]
                    not_run.append(NotRun(name, reason))
                    bar.write(f"skipping {name}: {reason}")
                    gc.collect()
                except Exception as exc:  # noqa: BLE001 - reported as a failed row; the others still run
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    reason = f"{type(exc).__name__}: {first}"[:500]
                    not_run.append(NotRun(name, reason, failed=True, detail=traceback.format_exc()[-4000:]))
                    bar.write(f"failed {name}: {reason}")
                    gc.collect()
                bar.update(done_before + steps - bar.n)  # a failed or early-stopped run still fills its share
    finally:
        torch.set_num_threads(old_threads)
        transformers.logging.set_verbosity(old_verbosity)

    settings = {
        "steps": steps,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "seed": seed,
        "threads": threads,
        "lr_overrides": lr or {},
        "model": "demo.build_tiny_llama (hidden 64, 2 layers, 4 heads, untied embeddings)",
        "trainable_params": results[0].trainable_params if results else None,
        "train_chunks": len(datasets[0]),
        "eval_chunks": len(datasets[1]),
        "vocab_size": datasets[2].vocab_size,
        "target_modules": TARGET_MODULES,
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    report = Report(settings=settings, results=results, not_run=not_run)
    if not results:  # each name's reason is printed already; an empty table and plot would say nothing
        echo(_nothing_trained(not_run, out))
        return report
    write_outputs(report, Path(out))
    echo("")
    echo(results_table(results) if results else "no optimizer ran")
    for n in not_run:
        echo(f"{'failed' if n.failed else 'skipped'}: {n.name}: {n.reason}")
    echo(f"\n{len(results)} trained in {settings['seconds']:.0f} s; wrote " + ", ".join(str(p) for p in report.files))
    return report


def _nothing_trained(not_run: Sequence[NotRun], out: str | Path) -> str:
    skipped = [n.name for n in not_run if not n.failed]
    failed = [n.name for n in not_run if n.failed]
    parts = ([f"skipped {', '.join(skipped)}"] if skipped else []) + ([f"failed {', '.join(failed)}"] if failed else [])
    return f"nothing trained ({'; '.join(parts) or 'no names given'}; reasons above): no table or plot written to {out}"


# -- output -----------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec)


def results_table(results: Sequence[RunResult]) -> str:
    """The Markdown table printed and written to ``results.md``."""
    header = ("optimizer", "lr", "final train loss", "eval loss", "ms/step", "optimizer state",
              "state B/param (record)", "peak RSS MiB")
    rows = []
    for r in results:
        rows.append((
            r.name,
            f"{r.lr:g}",
            _fmt(r.final_train_loss, ".3f"),
            _fmt(r.eval_loss, ".3f"),
            _fmt(r.ms_per_step, ".1f"),
            _kib(r.state_bytes),
            f"{_fmt(r.state_bytes_per_param, '.2f')} ({_fmt(r.record_state_bytes_per_param, 'g')})",
            _fmt(r.peak_rss_mib, ".0f"),
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    right = {1, 2, 3, 4, 5, 6, 7}

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"


def render_markdown(report: Report) -> str:
    s = report.settings
    lines = [
        "# optim-registry compare",
        "",
        f"The tiny Llama ({_count(s['trainable_params'])} parameters: hidden 64, 2 layers) trained for {s['steps']} "
        f"steps on the bundled corpus (batch {s['batch_size']} x {s['seq_len']} characters, seed {s['seed']}, the "
        f"same initial weights and batches for every optimizer), {s['threads']} torch thread(s); torch "
        f"{s['torch']}, transformers {s['transformers']}, {s['machine']}.",
        "",
        results_table(report.results) if report.results else "No optimizer ran.",
        "",
        f"- **final train loss**: mean of the last {FINAL_WINDOW} step losses (cross-entropy per character).",
        f"- **eval loss**: after training, on the held-out end of the corpus ({s['eval_chunks']} sequences).",
        "- **ms/step**: median wall time of one optimizer step (forward, backward, update); the first step is "
        "left out. Timings on a shared machine are noisy.",
        "- **optimizer state**: bytes of the tensors in the optimizer's state after training, each storage "
        "counted once; **B/param** divides by the trainable parameters, (record) is the registry's figure.",
        "- **peak RSS**: the process's resident memory sampled during the run (Python, torch, model and all).",
        "- Learning rates: per record for this model (`OptimizerSpec.demo_lr`), `--lr` to change; "
        "warm-up + cosine schedule except for schedule-free optimizers (constant). Target-module optimizers get "
        f"`optim_target_modules={TARGET_MODULES}` and their record's `demo_options` (e.g. `rank=16`, "
        "`update_proj_gap=50`, sized for this 64-wide model); layer-wise names `max_grad_norm=0`.",
    ]
    skipped = [n for n in report.not_run if not n.failed]
    failed = [n for n in report.not_run if n.failed]
    if failed:
        lines += ["", "## Failed", ""] + [f"- `{n.name}`: {n.reason}" for n in failed]
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- `{n.name}`: {n.reason}" for n in skipped]
    if report.results:
        lines += ["", "![training loss per optimizer](loss_curves.png)"]
    return "\n".join(lines) + "\n"


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_losses(report: Report, path: Path) -> None:
    """One training-loss curve per optimizer (raw, faint; smoothed, solid), eval loss in the legend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s = report.settings
    fig, ax = plt.subplots(figsize=(10, 6), dpi=110)
    window = max(1, s["steps"] // 25)
    finite_all: list[float] = []
    for i, r in enumerate(report.results):
        color = f"C{i % 10}"
        xs = list(range(1, len(r.losses) + 1))
        finite = [v if math.isfinite(v) else math.nan for v in r.losses]
        finite_all += [v for v in finite if math.isfinite(v)]
        if window > 1:
            ax.plot(xs, finite, color=color, alpha=0.2, linewidth=0.8)
        label = f"{r.name} (lr {r.lr:g}; eval {_fmt(r.eval_loss, '.3f')})"
        ax.plot(xs, _smooth(finite, window) if window > 1 else finite, color=color, linewidth=2, label=label)
    if finite_all:
        low, first = min(finite_all), max(r.losses[0] for r in report.results if r.losses and math.isfinite(r.losses[0]))
        ax.set_ylim(max(0.0, low - 0.1), first + 0.25)
    n = s.get("trainable_params") or 0
    ax.set_title(f"Training loss: tiny Llama ({n / 1e3:.0f}k params) on the bundled corpus\n"
                 f"{s['steps']} steps, batch {s['batch_size']} x {s['seq_len']} characters, same seed for every optimizer")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (cross-entropy per character)"
                  + (f", moving average of {window}" if window > 1 else ""))
    ax.grid(True, alpha=0.3)
    if report.results:
        ax.legend(loc="upper right", fontsize=9, title="optimizer", title_fontsize=9)
    skipped = [n.name for n in report.not_run]
    if skipped:
        ax.text(0.01, 0.01, "not run: " + ", ".join(skipped) + " (see results.md)", transform=ax.transAxes,
                fontsize=8, color="0.4", va="bottom")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


OUTPUT_FILES = ("results.md", "results.json", "loss_curves.png")


def check_output_dir(out: Path) -> None:
    """Makes ``out`` (a folder) ready for the outputs, or raises one ``ValueError`` saying what is wrong."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is an existing file, not a folder: pass a folder path (it is created)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {str(out)!r}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(out)!r}: the folder is not writable; pass another folder")
    for name in OUTPUT_FILES:
        target = out / name
        if target.exists() and not target.is_file():
            raise ValueError(f"--out {str(out)!r}: {name} exists there and is not a file; remove it or pass another folder")


def write_outputs(report: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = (out / name for name in OUTPUT_FILES)
    md.write_text(render_markdown(report), encoding="utf-8")
    payload = {
        "settings": report.settings,
        "results": [asdict(r) for r in report.results],
        "skipped": [asdict(n) for n in report.not_run if not n.failed],
        "failed": [asdict(n) for n in report.not_run if n.failed],
    }
    js.write_text(json.dumps(_finite(payload), indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8")
    plot_losses(report, png)
    report.files = [md, js, png]


def _finite(value: Any) -> Any:
    """NaN and infinities become ``null``: results.json stays strict JSON when a run diverges."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
