"""The layer-wise engine hands the memory of the gradients it frees back to the operating system.

glibc keeps freed chunks below its mmap threshold resident in its heap; a gradient freed between two
optimizer states leaves such a hole, and on a 134M-parameter Llama those holes cost ~150-250 MiB of peak RSS
(benchmarks/layerwise_memory.py measures the saving). The engine calls ``malloc_trim`` once per
``TRIM_EVERY_BYTES`` of CPU gradients freed in backward.
"""

from __future__ import annotations

import sys

import pytest
import torch

import optim_registry.engines.layerwise.engine as layerwise
from optim_registry.engines.layerwise.engine import LayerwiseOptimizer


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Linear(64, 64) for _ in range(4)))


def _counting_trim(monkeypatch: pytest.MonkeyPatch, every: int) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(layerwise, "TRIM_EVERY_BYTES", every)
    monkeypatch.setattr(layerwise, "_malloc_trim", lambda: lambda: calls.append(1))
    return calls


def _backward(model: torch.nn.Module, optimizer: LayerwiseOptimizer) -> None:
    model(torch.randn(8, 64)).square().mean().backward()
    optimizer.step()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_malloc_trim_is_found_and_runs():
    trim = layerwise._malloc_trim()
    assert trim is not None and trim() in (0, 1)  # 1: memory was released, 0: there was none to release


def test_one_trim_per_threshold_of_freed_gradients(monkeypatch):
    model = _model()
    sizes = [p.numel() * p.element_size() for p in model.parameters()]
    calls = _counting_trim(monkeypatch, every=2 * max(sizes))
    optimizer = LayerwiseOptimizer(model.parameters(), lambda g: torch.optim.SGD(g, lr=0.1))
    _backward(model, optimizer)
    assert all(p.grad is None for p in model.parameters())
    assert len(calls) == sum(sizes) // (2 * max(sizes)) == 2  # 4 x (16 KiB weight + 256 B bias) freed

    # Gradients held for accumulation are not freed, so nothing is trimmed for them.
    calls.clear()
    optimizer.should_step = False
    _backward(model, optimizer)
    assert calls == [] and all(p.grad is not None for p in model.parameters())

    optimizer.should_step = True
    monkeypatch.setattr(layerwise, "TRIM_EVERY_BYTES", None)  # turned off
    _backward(model, optimizer)
    assert calls == [] and all(p.grad is None for p in model.parameters())


def test_global_clipping_trims_for_both_passes(monkeypatch):
    model = _model()
    calls = _counting_trim(monkeypatch, every=1)
    optimizer = LayerwiseOptimizer(model.parameters(), lambda g: torch.optim.SGD(g, lr=0.1), max_grad_norm=1.0)
    optimizer.backward(model(torch.randn(8, 64)).square().mean())
    n = len(list(model.parameters()))
    assert len(calls) == 2 * n  # the measuring pass frees each gradient, then the stepping pass does
