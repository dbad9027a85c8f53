"""Every benchmark script runs at its smallest settings (``--quick``) and writes its JSON.

No timing is asserted: the figures of a quick run mean nothing. Scripts are run in this process (one
import of torch and transformers for all of them); the two that must measure fresh processes
(import_cost, layerwise_memory) start their own small ones.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

COMMON_KEYS = {"benchmark", "command", "machine", "measured_under_load", "settings", "rows", "notes"}

#: script -> (keys every row has, extra top-level keys)
EXPECTED = {
    "build_time": ({"model", "optim", "tensors", "stock_s", "trainer_s", "function_s", "ratio_trainer",
                    "ratio_function", "trainer_us_per_tensor"}, {"skipped"}),
    "step_overhead": ({"optim", "stock_steps_per_s", "ours_steps_per_s", "ratio", "ratio_paired", "meets_goal"},
                      {"skipped"}),
    "state_memory": ({"optim", "family", "record", "bytes_per_param"}, {"record_updates", "failed", "skipped"}),
    "import_cost": ({"case", "seconds", "modules_new", "heavy_new", "process_s"}, {"comparisons"}),
    "throughput": ({"implementation", "seconds", "gb_per_s", "fraction_of_copy"}, {"registry_default"}),
    "layerwise_memory": ({"run", "optim", "peak_rss_mib", "train_increment_mib"}, {"summary"}),
    "layerwise_clip": ({"model", "run", "optim", "step_ms", "ratio_to_layerwise", "ratio_to_whole"}, set()),
}


def _load(script: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{script}", BENCH / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_throughput(data):
    default = data["registry_default"]
    assert default["kernel_run_on_cpu"] in {"for-loop", "foreach", "fused"}
    assert "fused" not in default["kwargs_passed"] and "foreach" not in default["kwargs_passed"]


def _check_state_memory(data):
    by_name = {r["optim"]: r for r in data["rows"]}
    assert by_name["sgd"]["bytes_per_param"] == 0
    assert 8 <= by_name["adamw_torch"]["bytes_per_param"] < 9  # exp_avg + exp_avg_sq, plus the step counters
    assert by_name["adamw_torch_layerwise"]["same_as"] == "adamw_torch"


def _check_import_cost(data):
    light = next(r for r in data["rows"] if r["case"] == "import optim_registry")
    assert light["heavy_new"] == ""  # importing the package pulls in neither torch nor any optimizer library


def _check_layerwise_clip(data):
    runs = {r["run"]: r for r in data["rows"]}
    assert set(runs) == {"whole", "layerwise", "clip=global"}
    assert runs["layerwise"]["ratio_to_layerwise"] == 1.0 and runs["whole"]["ratio_to_whole"] == 1.0
    # clipped runs (whole, clip=global) train the same thing; the unclipped layer-wise one need not
    assert runs["clip=global"]["training_loss"] == pytest.approx(runs["whole"]["training_loss"], rel=1e-5)


#: Facts (not timings) a quick run must get right.
CHECKS = {"throughput": _check_throughput, "state_memory": _check_state_memory, "import_cost": _check_import_cost,
          "layerwise_clip": _check_layerwise_clip}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_quick_run_writes_expected_json(script, tmp_path):
    out = tmp_path / f"{script}.json"
    returned = _load(script).main(["--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["benchmark"] == script
    row_keys, top_keys = EXPECTED[script]
    assert COMMON_KEYS | top_keys <= data.keys()
    assert data["rows"], data["notes"]
    for row in data["rows"]:
        assert not row_keys - row.keys(), (row, row_keys - row.keys())
        assert not row.get("error"), row
    assert returned["rows"] == data["rows"]
    for key in ("nproc", "cpu_model", "torch", "transformers"):
        assert key in data["machine"]
    CHECKS.get(script, lambda _: None)(data)


def test_run_all_rejects_unknown_names():
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--only", "nope"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "nope" in proc.stderr
