"""Shared plumbing for the benchmark scripts: command line, machine description, tables, JSON.

Every script prints a table and writes ``{"benchmark", "machine", "settings", "rows", "notes", ...}`` to
``--out`` (default ``benchmarks/results/<script>.json``). The machine block records the load average
before and after the run, so a figure taken on a busy machine says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"

# The scripts run from a checkout (`python benchmarks/x.py`), where the package may not be installed.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Quiet, offline, deterministic-ish library behaviour for every benchmark and its subprocesses.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def parser(script: str, description: str) -> argparse.ArgumentParser:
    """The common flags: ``--out``, ``--quick``."""
    p = argparse.ArgumentParser(prog=f"python benchmarks/{script}.py", description=description)
    p.add_argument("--out", type=Path, default=RESULTS / f"{script}.json", help="where to write the JSON")
    p.add_argument("--quick", action="store_true", help="smallest settings: checks the script works, figures meaningless")
    return p


# -- machine ------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine(**extra: Any) -> dict[str, Any]:
    """nproc, CPU model, RAM, versions and the current 1-minute load average."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1min": load_average(),
    }
    try:
        from importlib.metadata import version

        for dist in ("torch", "transformers"):
            info[dist] = version(dist)
    except Exception:  # noqa: BLE001 - a description, never a failure
        pass
    info.update(extra)
    return info


def under_load(before: dict[str, Any], after_load: float | None) -> bool:
    """True when the machine was busier than its cores while measuring: timings are then noisy."""
    nproc = before.get("nproc") or 1
    loads = [x for x in (before.get("load_average_1min"), after_load) if x is not None]
    return bool(loads) and max(loads) > 0.75 * nproc


# -- numbers ------------------------------------------------------------------------------------
def median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def ratio(ours: float | None, stock: float | None) -> float | None:
    if ours is None or stock is None or stock == 0 or ours != ours or stock != stock:
        return None
    return ours / stock


def fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return format(value, spec)
    return str(value)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


# -- output -------------------------------------------------------------------------------------
def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]], max_width: int = 90) -> str:
    """A plain-text table: ``columns`` are ``(key, header, format spec)``; long cells are cut to ``max_width``."""
    header = [h for _, h, _ in columns]
    body = [[_cut(fmt(r.get(k), spec), max_width) for k, _, spec in columns] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    # Text columns (no format spec) read left-aligned, numbers right-aligned.
    left = [not spec for _, _, spec in columns]
    lines += ["  ".join(c.ljust(w) if lj else c.rjust(w) for c, w, lj in zip(row, widths, left)) for row in body]
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def finish(
    script: str,
    out: Path,
    *,
    settings: dict[str, Any],
    rows: list[dict[str, Any]],
    machine_before: dict[str, Any],
    notes: list[str] | None = None,
    command: str | None = None,
    timing: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Writes the JSON and returns it; notes that timings are noisy when the machine was busy."""
    load_after = load_average()
    noisy = timing and under_load(machine_before, load_after)
    notes = list(notes or [])
    if noisy:
        notes.append(
            f"measured under load (1-min load average {machine_before.get('load_average_1min')} -> {load_after} "
            f"on {machine_before.get('nproc')} cores): timings are noisy; to be re-run on a quiet machine"
        )
    payload = {
        "benchmark": script,
        "command": command or " ".join(["python", f"benchmarks/{script}.py", *sys.argv[1:]]),
        "machine": {**machine_before, "load_average_1min_after": load_after},
        "measured_under_load": noisy,
        "settings": settings,
        "rows": rows,
        "notes": notes,
        **extra,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out}")
    return payload


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


@contextlib.contextmanager
def quiet(transformers: bool = True) -> Iterator[None]:
    """Silences Python warnings (and transformers' logging) inside the block, and restores them after
    (the smoke tests call the scripts in-process)."""
    import logging
    import warnings

    root_level = logging.getLogger().level
    hf_logging = verbosity = None
    if transformers:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if hf_logging is not None:
            hf_logging.set_verbosity(verbosity)
        logging.getLogger().setLevel(root_level)


def step_clock() -> Any:
    """A Trainer callback recording ``time.perf_counter()`` at the end of every optimizer step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.stamps.append(time.perf_counter())

    return StepClock()


# -- worker processes ------------------------------------------------------------------------------------------
#: The line a worker process prints its JSON result after (stdout may hold library chatter too).
RESULT = "@@RESULT@@"


def emit(result: Any) -> None:
    """Print ``result`` as a worker's result line (see ``read_result``)."""
    print(RESULT + json.dumps(result), flush=True)


def emit_gathered(rows: list[Any]) -> None:
    """In a torchrun worker: gather every rank's rows; rank 0 ``emit``-s them all, so each rank's figures arrive."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, rows)
    if dist.get_rank() == 0:
        emit([r for part in gathered for r in part])


def read_result(stdout: str) -> Any | None:
    """The JSON a worker printed with ``emit``; None when it printed none."""
    line = next((x for x in stdout.splitlines() if x.startswith(RESULT)), None)
    return None if line is None else json.loads(line[len(RESULT):])


def worker_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout first on ``PYTHONPATH``, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def torchrun_worker(script: str, job: dict[str, Any], nproc: int, env: dict[str, str],
                    tail_lines: int = 15) -> tuple[Any | None, str, list[str]]:
    """Run ``script --worker JSON(job)`` on ``nproc`` local ranks (torchrun) with ``env``.

    Returns ``(result, "", [])`` with what rank 0 ``emit``-ted, or ``(None, "exit N: <last stderr line>", <the
    last tail_lines lines of stderr>)`` when the launch failed or printed no result.
    """
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(port), script, "--worker", json.dumps(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=3600)
    result = read_result(proc.stdout)
    if proc.returncode == 0 and result is not None:
        return result, "", []
    tail = proc.stderr.strip().splitlines()[-tail_lines:]
    return None, f"exit {proc.returncode}: {tail[-1] if tail else ''}", tail
