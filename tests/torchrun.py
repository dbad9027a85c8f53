"""One torchrun launch for the distributed tests (DDP, FSDP2, FSDP2 checkpoints, ZeRO), the same way for each.

Every rank runs with one intra-op thread, the repository on ``PYTHONPATH`` and Python's fault handler on: a rank
that dies of a signal prints every thread's Python stack, so a crash inside a library names where it happened.

A launch whose rank died of a signal (torchrun reports ``exitcode: -N``; seen once in CI: a SIGABRT "terminate
called without an active exception" in a ZeRO-1 launch, not reproduced in nine launches here, under load, in a fresh
venv and with an empty extension cache) is run once more from a clean ``scratch`` folder, with a warning carrying
the first attempt's stderr. A rank that fails with a Python exception (exit code 1), a timeout, or a second signal
death fails the test: the results the tests assert on always come from one complete launch.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: torchrun's report of a rank killed by a signal (``exitcode  : -6 (pid: 123)``).
_SIGNALLED = re.compile(r"exitcode\s*:\s*-\d+")


class RankSignalled(UserWarning):
    """A torchrun launch lost a rank to a signal and was run again."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: Path | str, args: list[str], nproc: int = 2, env: dict[str, str] | None = None,
             timeout: float = 900, scratch: Path | str | None = None) -> subprocess.CompletedProcess:
    """Run ``script args...`` on ``nproc`` local ranks (gloo, CPU); the completed process of a launch that exited 0.

    ``env``: variables added to this process's environment. ``scratch``: the folder the launch writes into, emptied
    before the one re-run a signal death earns. Raises ``RuntimeError`` with the tail of stderr otherwise.
    """
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1",
               **(env or {})}
    for attempt in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), str(script), *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=timeout)
        if proc.returncode == 0:
            return proc
        if attempt == 1 and _SIGNALLED.search(proc.stderr):
            warnings.warn(f"{Path(script).name}: a rank died of a signal; running the launch again. Its stderr:\n"
                          f"{proc.stderr[-6000:]}", RankSignalled, stacklevel=2)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
                Path(scratch).mkdir(parents=True)
            continue
        break
    raise RuntimeError(f"the {nproc}-rank launch of {Path(script).name} failed (exit {proc.returncode}):\n"
                       f"{proc.stderr[-4000:]}")
