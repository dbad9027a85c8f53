"""The dtype whole-matrix optimizer math multiplies in: 16-bit where the device does so natively, else float32.

Muon's Newton-Schulz runs in bfloat16 (as ``torch.optim.Muon`` does) because on a GPU a bfloat16 matrix
product is several times faster than a float32 one. On a CPU without bfloat16 instructions the same product
is emulated and several times *slower* than float32 (measured 6-9x on AVX2 and 4x on AVX-512 without
BF16; 6x *faster* on a CPU with AMX), so there the faster choice is also the more precise one. The
registry's Muon and Dion take ``matmul_dtype``:

- ``"auto"`` (the default): the algorithm's own dtype (bfloat16 for Muon's Newton-Schulz, the state's
  dtype for Dion) when the device multiplies that dtype natively, else float32;
- ``"bfloat16"`` / ``"float32"``: that dtype on every device.

What counts as native: a CUDA device that ``torch.cuda.is_bf16_supported(including_emulation=False)``
accepts (Ampere or newer, ROCm); a CPU with AVX512-BF16 or AMX (x86) or the BF16 extension (aarch64 Linux),
unless oneDNN, which carries torch's bfloat16 CPU products, is disabled or capped below those instructions
(``ONEDNN_MAX_CPU_ISA=AVX2``); no Apple GPU (MPS); any other accelerator (XPU, XLA, HPU, ...), which are
built for bfloat16. Each device is asked once per process.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

import torch

__all__ = ["MATMUL_DTYPES", "check_matmul_dtype", "multiplies_natively", "resolve_matmul_dtype"]

#: The accepted values of ``matmul_dtype`` (the ``optim_args`` key and the constructors' argument).
MATMUL_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float32")

_FORCED = {"bfloat16": torch.bfloat16, "float32": torch.float32}
_ALIASES = {"bf16": "bfloat16", "fp32": "float32", "float": "float32"}

#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) that leave out every bfloat16 dot-product instruction.
_ONEDNN_BELOW_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                                "AVX512_CORE_VNNI"})


def check_matmul_dtype(value: Any) -> str:
    """``value`` as one of :data:`MATMUL_DTYPES` (``None`` means ``"auto"``), or a ``ValueError`` naming it."""
    if value is None:
        return "auto"
    if isinstance(value, torch.dtype):
        for name, dtype in _FORCED.items():
            if value == dtype:
                return name
    elif isinstance(value, str):
        name = value.strip().lower().removeprefix("torch.")
        name = _ALIASES.get(name, name)
        if name in MATMUL_DTYPES:
            return name
    raise ValueError(
        f"matmul_dtype={value!r} is not supported; use one of {list(MATMUL_DTYPES)} ('auto' picks bfloat16 "
        "where the device multiplies it natively and float32 where it would be emulated)."
    )


def resolve_matmul_dtype(choice: str, device: torch.device, reference: torch.dtype = torch.bfloat16) -> torch.dtype:
    """The dtype to multiply in on ``device``: ``choice`` when forced, else ``reference`` if native there, else float32.

    ``choice`` is a checked value (:func:`check_matmul_dtype`); ``reference`` is the algorithm's own dtype.
    """
    if choice != "auto":
        return _FORCED[choice]
    return reference if multiplies_natively(reference, device) else torch.float32


def multiplies_natively(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``device`` multiplies ``dtype`` matrices in hardware (float32 and float64 always count)."""
    if dtype not in (torch.bfloat16, torch.float16):
        return True
    kind = device.type
    if kind == "cpu":
        # Read every time: torch.backends.mkldnn.flags() may switch oneDNN off for a block.
        if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return False
        return _cpu_native(dtype)
    if kind == "cuda":
        return _cuda_native(dtype, device.index)
    if kind == "mps":
        return False
    return True


@functools.cache
def _cpu_native(dtype: torch.dtype) -> bool:
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if os.environ.get(var, "").strip().upper() in _ONEDNN_BELOW_BF16:
            return False
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "x86", "i686"):
        names = (("_is_avx512_bf16_supported", "_is_amx_tile_supported") if dtype == torch.bfloat16
                 else ("_is_amx_fp16_supported",))
        # Private, cpuinfo-backed checks (torch 2.x); a torch without them is treated as not native.
        return any(bool(check()) for n in names if callable(check := getattr(torch.cpu, n, None)))
    if machine in ("aarch64", "arm64") and dtype == torch.bfloat16:
        return "bf16" in _linux_cpu_features()
    return False


def _linux_cpu_features() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("features", "flags")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def _cuda_native(dtype: torch.dtype, index: int | None) -> bool:
    if dtype == torch.float16:
        return True
    with torch.cuda.device(index if index is not None else torch.cuda.current_device()):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
