"""Runs every benchmark in sequence, each in its own process, and says which ones failed.

    python benchmarks/run_all.py                    # everything, full settings (tens of minutes)
    python benchmarks/run_all.py --quick            # every script at its smallest settings
    python benchmarks/run_all.py --only build_time,step_overhead --results /tmp/bench
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: In the order they are best run: the timing benchmarks first, the long memory sweep last.
SCRIPTS = ("import_cost", "build_time", "step_overhead", "layerwise_clip", "throughput", "fsdp2_muon",
           "fsdp2_checkpoint_cost", "zero_step", "zero_agreement", "layerwise_memory", "state_memory")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/run_all.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every script")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(SCRIPTS)}")
    p.add_argument("--results", type=Path, default=HERE / "results", help="directory for the JSON files")
    a = p.parse_args(argv)
    chosen = [s.strip() for s in a.only.split(",")] if a.only else list(SCRIPTS)
    unknown = sorted(set(chosen) - set(SCRIPTS))
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(SCRIPTS)}")

    outcomes: dict[str, tuple[int, float]] = {}
    for script in chosen:
        cmd = [sys.executable, str(HERE / f"{script}.py"), "--out", str(a.results / f"{script}.json")]
        if a.quick:
            cmd.append("--quick")
        print(f"\n=== {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd)
        outcomes[script] = (code, time.perf_counter() - start)

    print("\n=== summary")
    for script, (code, seconds) in outcomes.items():
        print(f"{script:18s} {'ok' if code == 0 else f'FAILED (exit {code})':18s} {seconds:7.1f} s")
    return 0 if all(code == 0 for code, _ in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
