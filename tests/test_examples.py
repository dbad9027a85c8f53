"""Every example under examples/ runs as a user would run it (a subprocess), in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str) -> str:
    env = dict(os.environ)
    # The checkout, whether or not optim-registry is pip-installed; no hub access, quiet logs.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _losses(line: str) -> tuple[float, float]:
    numbers = [float(w) for w in line.replace(",", " ").split() if w.replace(".", "", 1).isdigit()]
    return numbers[0], numbers[1]


def test_train_minimal():
    out = run_example("train_minimal.py", "--optim", "sgd", "--lr", "0.5", "--steps", "6")
    assert "optim='sgd' built SGD" in out
    first, last = _losses(out.strip().splitlines()[-1])
    assert last < first


def test_subclass_trainer_adds_a_scheduled_param_group():
    out = run_example("subclass_trainer.py", "--steps", "6")
    assert "optim='adamw_torch': 3 param groups" in out  # decay, no decay, and the added one
    assert "started at lr 0.05" in out
    assert "learned temperature" in out and "learned temperature 1.0000" not in out


def test_trl_sft_with_a_registry_name():
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    from optim_registry.registry import optimizers

    name = "muon" if "muon" in optimizers else "adamw_torch"
    out = run_example("trl_sft_muon.py", "--optim", name, "--steps", "4")
    assert f"optim={name!r} built" in out
    first, last = _losses(out.strip().splitlines()[-1])
    assert last < first
