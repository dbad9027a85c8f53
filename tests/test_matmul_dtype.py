"""Muon's Newton-Schulz and Dion's power iteration multiply in the dtype the device is fast at (``matmul_dtype``).

bfloat16 where the device multiplies it natively, float32 where bfloat16 would be emulated (a CPU without
AVX512-BF16/AMX), either one when forced. The float32 path must orthogonalise at least as well as the
bfloat16 one; the bfloat16 path stays torch.optim.Muon's bit for bit (tests/test_muon_dion.py).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_muon_dion import _reference_dion_step  # Algorithm 1 in float64, written out plainly
from torch import nn

from optim_registry.families.beyond.dion import Dion
from optim_registry.families.beyond.muon import MuonWithAdamW, zeropower_via_newtonschulz
from optim_registry.families.beyond.precision import (
    MATMUL_DTYPES,
    check_matmul_dtype,
    multiplies_natively,
    resolve_matmul_dtype,
)

COEFFS = (3.4445, -4.775, 2.0315)
CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as fh:
        return next(set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags"))


# --- which dtype, where ------------------------------------------------------------------------


@pytest.mark.skipif(platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"), reason="x86 Linux")
def test_a_cpu_counts_as_native_exactly_when_it_has_bf16_instructions():
    if any(os.environ.get(v) for v in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")):
        pytest.skip("oneDNN is capped in this environment")
    native = bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    assert multiplies_natively(torch.bfloat16, CPU) is native
    assert resolve_matmul_dtype("auto", CPU) == (torch.bfloat16 if native else torch.float32)
    assert multiplies_natively(torch.float32, CPU) and multiplies_natively(torch.float64, CPU)
    # Without oneDNN, torch multiplies bfloat16 on the CPU in plain C++: emulated whatever the CPU.
    with torch.backends.mkldnn.flags(enabled=False):
        assert not multiplies_natively(torch.bfloat16, CPU)
        assert resolve_matmul_dtype("auto", CPU) == torch.float32


def test_forced_choices_hold_on_every_device():
    for device in (CPU, torch.device("meta")):
        assert resolve_matmul_dtype("bfloat16", device) == torch.bfloat16
        assert resolve_matmul_dtype("float32", device) == torch.float32
    # Dion's reference is its state's dtype: float32 state is never multiplied in less.
    assert resolve_matmul_dtype("auto", CPU, reference=torch.float32) == torch.float32


def test_a_cpu_capped_below_bf16_picks_float32_in_muon_and_dion():
    """oneDNN capped at AVX2 (what an AVX2-only CPU gives): bfloat16 is emulated, so auto means float32."""
    code = (
        "import torch; from torch import nn\n"
        "from optim_registry.families.beyond.muon import MuonWithAdamW\n"
        "from optim_registry.families.beyond.dion import Dion\n"
        "from optim_registry.families.beyond.precision import resolve_matmul_dtype\n"
        "cpu = torch.device('cpu')\n"
        "m = MuonWithAdamW([{'params': [nn.Parameter(torch.randn(8, 4))], 'use_muon': True}])\n"
        "d = nn.Parameter(torch.randn(8, 4, dtype=torch.bfloat16))\n"
        "print(m._ns_dtype(cpu), resolve_matmul_dtype('auto', cpu, reference=d.dtype),"
        " resolve_matmul_dtype('bfloat16', cpu))\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["torch.float32", "torch.float32", "torch.bfloat16"]


def test_matmul_dtype_values_are_checked_and_named():
    assert [check_matmul_dtype(v) for v in ("auto", None, "BF16", "fp32", torch.bfloat16, torch.float32)] == [
        "auto", "auto", "bfloat16", "float32", "bfloat16", "float32"]
    for bad in ("float16", torch.float16, "fp8", 3):
        with pytest.raises(ValueError, match=r"matmul_dtype=.*'auto', 'bfloat16', 'float32'"):
            check_matmul_dtype(bad)
    with pytest.raises(ValueError, match="matmul_dtype"):
        MuonWithAdamW([{"params": [nn.Parameter(torch.randn(4, 4))], "use_muon": True}], matmul_dtype="half")
    with pytest.raises(ValueError, match="matmul_dtype"):
        Dion([{"params": [nn.Parameter(torch.randn(4, 4))], "use_dion": True}], matmul_dtype="half")


def test_the_records_offer_the_option_and_pass_it_through():
    from optim_registry import TrainingArguments, create_optimizer
    from optim_registry.families.beyond.records import MATMUL_DTYPES as RECORD_CHOICES
    from optim_registry.registry import optimizers
    from optim_registry.testing import tiny_model

    assert RECORD_CHOICES == MATMUL_DTYPES  # written out in the torch-free records
    for name in ("muon", "dion"):
        option = optimizers.get(name).option_map["matmul_dtype"]
        assert option.default == "auto" and option.choices == MATMUL_DTYPES
        args = TrainingArguments("/tmp/unused", optim=name, optim_args="matmul_dtype=float32", report_to=[],
                                 use_cpu=True)
        assert create_optimizer(args, tiny_model()).matmul_dtype == "float32"
        default = TrainingArguments("/tmp/unused", optim=name, report_to=[], use_cpu=True)
        assert create_optimizer(default, tiny_model()).matmul_dtype == "auto"
        with pytest.raises(ValueError, match=r"matmul_dtype.*'fp8'.*not one of \['auto', 'bfloat16', 'float32'\]"):
            TrainingArguments("/tmp/unused", optim=name, optim_args="matmul_dtype=fp8", report_to=[], use_cpu=True)


# --- the float32 path orthogonalises at least as well -----------------------------------------


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (3, 48, 32), (3, 32, 48)])
def test_float32_newton_schulz_orthogonalises_as_well_or_better(shape):
    torch.manual_seed(0)
    update = torch.randn(*shape)
    exact = zeropower_via_newtonschulz(update, COEFFS, 5, 1e-7, torch.float64)
    results = {dt: zeropower_via_newtonschulz(update, COEFFS, 5, 1e-7, dt) for dt in (torch.bfloat16, torch.float32)}
    assert {dt: r.dtype for dt, r in results.items()} == {torch.bfloat16: torch.bfloat16, torch.float32: torch.float32}
    exact_sv = torch.linalg.svdvals(exact)
    sv_error = {}
    for dt, result in results.items():
        sv = torch.linalg.svdvals(result.double())
        # The quintic's coefficients trade exactness for speed: five steps leave every singular value of a
        # Gaussian matrix in about [0.68, 1.14], not at 1, in any precision; what precision changes is
        # how far each lands from where the exact iteration puts it.
        assert 0.6 < sv.min().item() and sv.max().item() < 1.2, (dt, sv.min(), sv.max())
        sv_error[dt] = (sv - exact_sv).abs().max().item()
    assert sv_error[torch.float32] < 1e-5 < 1e-3 < sv_error[torch.bfloat16], sv_error
    error = {dt: ((r.double() - exact).norm() / exact.norm()).item() for dt, r in results.items()}
    assert error[torch.float32] < 1e-5 < 1e-3 < error[torch.bfloat16], error  # fp32 is the exact iteration


def test_batched_newton_schulz_equals_one_matrix_at_a_time_in_float32():
    torch.manual_seed(1)
    stack = torch.randn(4, 24, 40)
    batched = zeropower_via_newtonschulz(stack, COEFFS, 5, 1e-7, torch.float32)
    for i in range(stack.shape[0]):
        single = zeropower_via_newtonschulz(stack[i], COEFFS, 5, 1e-7, torch.float32)
        torch.testing.assert_close(batched[i], single, rtol=1e-5, atol=1e-6)


def test_muon_steps_with_the_chosen_dtype():
    """One step with each forced dtype equals the update that dtype's Newton-Schulz gives."""
    torch.manual_seed(2)
    start, grad = torch.randn(32, 48), torch.randn(32, 48)
    for choice, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        param = nn.Parameter(start.clone())
        optimizer = MuonWithAdamW([{"params": [param], "use_muon": True}], lr=0.1, momentum=0.9,
                                  nesterov=False, matmul_dtype=choice)
        param.grad = grad.clone()
        optimizer.step()
        update = zeropower_via_newtonschulz(grad * 0.1, COEFFS, 5, 1e-7, dtype)  # buf = lerp(0, g, 0.1)
        torch.testing.assert_close(param.detach(), start - 0.1 * update.float(), rtol=0, atol=1e-6)
    assert not torch.equal(
        zeropower_via_newtonschulz(grad, COEFFS, 5, 1e-7, torch.float32),
        zeropower_via_newtonschulz(grad, COEFFS, 5, 1e-7, torch.bfloat16).float(),
    )


# --- Dion -------------------------------------------------------------------------------------


def test_dion_float32_products_on_bf16_weights_are_at_least_as_accurate():
    """bf16 weights: products in float32 (what auto picks on an emulating CPU) land nearer the exact algorithm."""
    error = {}
    for choice in ("bfloat16", "float32"):
        total = [0.0, 0.0]
        for seed, shape in enumerate([(96, 48), (48, 96), (64, 64)]):
            torch.manual_seed(seed)
            param = nn.Parameter(torch.randn(shape).bfloat16())
            optimizer = Dion([{"params": [param], "use_dion": True}], lr=0.5, weight_decay=0.0, rank=8,
                             matmul_dtype=choice)
            x, q = param.detach().double(), optimizer.state[param]["Q"].double()
            grad = torch.randn(shape).bfloat16()
            param.grad = grad.clone()
            optimizer.step()
            x, m, q = _reference_dion_step(x, grad.double(), torch.zeros(shape, dtype=torch.float64), q, 0.5, 0.95,
                                           0.0)
            state = optimizer.state[param]
            assert param.dtype == state["Q"].dtype == state["momentum_buffer"].dtype == torch.bfloat16
            total[0] += ((state["Q"].double() - q).norm() / q.norm()).item()
            total[1] += ((param.double() - x).norm() / x.norm()).item()
        error[choice] = total
    assert error["float32"][0] < 0.8 * error["bfloat16"][0], error  # Q: products rounded once, not three times
    assert error["float32"][1] <= error["bfloat16"][1] * 1.001, error


def test_dion_forced_bf16_never_rounds_float32_momentum():
    torch.manual_seed(3)
    param = nn.Parameter(torch.randn(40, 24))
    optimizer = Dion([{"params": [param], "use_dion": True}], lr=0.1, rank=4, matmul_dtype="bfloat16")
    for _ in range(2):
        param.grad = torch.randn(40, 24)
        optimizer.step()
    momentum = optimizer.state[param]["momentum_buffer"]
    assert momentum.dtype == torch.float32 and not torch.equal(momentum, momentum.bfloat16().float())
    assert torch.isfinite(param).all()


def test_dion_auto_on_float32_weights_is_the_algorithm_unchanged():
    """float32 state: auto multiplies in float32 on every device, exactly as before the option existed."""
    torch.manual_seed(4)
    start, grad = torch.randn(24, 12), torch.randn(24, 12)
    results = []
    for choice in ("auto", "float32"):
        param = nn.Parameter(start.clone())
        optimizer = Dion([{"params": [param], "use_dion": True}], lr=0.1, rank=4, matmul_dtype=choice)
        param.grad = grad.clone()
        optimizer.step()
        results.append(param.detach().clone())
    assert torch.equal(*results)
