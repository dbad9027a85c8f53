"""Memory bandwidth an AdamW step achieves (fused, foreach, for-loop) against a plain copy, same run.

An AdamW step is memory-bound: per fp32 parameter it reads param, grad, exp_avg, exp_avg_sq and writes
param, exp_avg, exp_avg_sq, 7 x 4 = 28 bytes. ``dst.copy_(src)`` on one big tensor (read + write,
8 bytes per element) gives the bandwidth this machine can reach; each implementation's bytes per second
is reported against it. The three implementations and the copy run interleaved on the same parameters,
median of the repetitions.

It also reports what the registry uses by default: ``optim="adamw_torch"`` resolves to
``torch.optim.AdamW`` with neither ``fused`` nor ``foreach`` (torch decides), and which kernel torch then
runs on CPU tensors is observed by wrapping ``torch.optim.adam``'s three implementations.

    python benchmarks/throughput.py                     # 50M parameters (about 2 GB of RAM)
    python benchmarks/throughput.py --params 100e6 --tensors 200
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import _common as C

BYTES_PER_PARAM = 7 * 4  # reads: param, grad, exp_avg, exp_avg_sq; writes: param, exp_avg, exp_avg_sq
IMPLS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


@contextlib.contextmanager
def observe_adam_kernels() -> Iterator[list[str]]:
    """Records which of torch.optim.adam's implementations run inside the block."""
    import torch.optim.adam as adam

    seen: list[str] = []
    names = {"_fused_adam": "fused", "_multi_tensor_adam": "foreach", "_single_tensor_adam": "for-loop"}
    originals = {n: getattr(adam, n) for n in names}

    def wrap(n: str) -> Any:
        def inner(*args: Any, **kwargs: Any) -> Any:
            seen.append(names[n])
            return originals[n](*args, **kwargs)

        return inner

    for n in names:
        setattr(adam, n, wrap(n))
    try:
        yield seen
    finally:
        for n, f in originals.items():
            setattr(adam, n, f)


def registry_default() -> dict[str, Any]:
    """What ``optim="adamw_torch"`` resolves to, and the kernel torch runs for it on CPU tensors."""
    from types import SimpleNamespace

    import torch
    from torch.optim.optimizer import _default_to_fused_or_foreach, _get_foreach_kernels_supported_devices

    import optim_registry

    args = SimpleNamespace(optim="adamw_torch", optim_args=None, learning_rate=1e-3, adam_beta1=0.9,
                           adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0)
    cls, kwargs = optim_registry.get_optimizer_cls_and_kwargs(args)
    p = torch.nn.Parameter(torch.zeros(8))
    p.grad = torch.ones(8)
    opt = cls([p], **kwargs)
    with observe_adam_kernels() as seen:
        opt.step()
    fused, foreach = _default_to_fused_or_foreach([p], differentiable=False, use_fused=False)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "kwargs_passed": {k: v for k, v in kwargs.items() if k != "params"},
        "group_fused": opt.param_groups[0].get("fused"),
        "group_foreach": opt.param_groups[0].get("foreach"),
        "kernel_run_on_cpu": seen[0] if seen else None,
        "torch_default_fused_foreach_cpu": {"fused": fused, "foreach": foreach},
        "foreach_default_devices": list(_get_foreach_kernels_supported_devices()),
        "why": (
            "the registry passes neither fused nor foreach, so torch decides: torch.optim.adam defaults to "
            "foreach only for tensors on its foreach-default devices "
            f"({', '.join(_get_foreach_kernels_supported_devices())}; CPU is not one) and never defaults to "
            "fused ('bake-in time'), so CPU parameters get the single-tensor for-loop implementation. "
            "optim='adamw_torch_fused' asks for fused=True."
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    with C.quiet(transformers=False):
        return _main(argv)


def _main(argv: list[str] | None) -> dict[str, Any]:
    p = C.parser("throughput", __doc__.splitlines()[0])
    p.add_argument("--params", type=float, default=50e6, help="fp32 parameters in total")
    p.add_argument("--tensors", type=int, default=100, help="number of parameter tensors they are split into")
    p.add_argument("--repeat", type=int, default=7, help="timed steps per implementation (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    a = p.parse_args(argv)
    if a.quick:
        a.params, a.tensors, a.repeat = 1e6, 8, 2
    before = C.machine()

    import torch

    threads_before = torch.get_num_threads()
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    n_total = int(a.params)
    sizes = [n_total // a.tensors + (1 if i < n_total % a.tensors else 0) for i in range(a.tensors)]
    default = registry_default()
    try:
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in sizes]
        for q in params:
            q.grad = torch.randn(q.shape, generator=gen) * 1e-3
        src = torch.randn(n_total, generator=gen)
        dst = torch.empty_like(src)

        optimizers = {name: torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, **kw) for name, kw in IMPLS.items()}
        kernels: dict[str, list[str]] = {}
        for name, opt in optimizers.items():  # first step allocates the state: untimed
            with observe_adam_kernels() as seen:
                opt.step()
            kernels[name] = sorted(set(seen))
        dst.copy_(src)

        samples: dict[str, list[float]] = {name: [] for name in [*IMPLS, "copy"]}
        order = [*IMPLS, "copy"]
        for rep in range(a.repeat):
            k = rep % len(order)
            for name in order[k:] + order[:k]:
                gc.collect()
                with C.Timer() as t:
                    if name == "copy":
                        dst.copy_(src)
                    else:
                        optimizers[name].step()
                samples[name].append(t.seconds)
    finally:
        torch.set_num_threads(threads_before)

    def row(label: str, name: str, moved: int, kernel: str) -> dict[str, Any]:
        med, best = C.median(samples[name]), min(samples[name])
        return {
            "implementation": label, "seconds": med, "best_seconds": best, "bytes_moved": moved,
            "gb_per_s": moved / med / 1e9, "best_gb_per_s": moved / best / 1e9,
            "spread": max(samples[name]) / best, "kernel": kernel, "samples_s": samples[name],
            "ns_per_param": med / n_total * 1e9,
        }

    rows = [row("copy_ (reference)", "copy", 2 * 4 * n_total, "Tensor.copy_")]
    for name in IMPLS:
        label = f"AdamW {name}" + (" (registry default)" if default["kernel_run_on_cpu"] == name else "")
        rows.append(row(label, name, BYTES_PER_PARAM * n_total, ", ".join(kernels[name])))
    for r in rows:
        r["fraction_of_copy"] = r["gb_per_s"] / rows[0]["gb_per_s"]
        r["best_fraction_of_copy"] = r["best_gb_per_s"] / rows[0]["best_gb_per_s"]
    print(C.table(rows, [
        ("implementation", "implementation", ""),
        ("seconds", "s/step", ".4f"),
        ("gb_per_s", "GB/s", ".2f"),
        ("fraction_of_copy", "of copy", ".2f"),
        ("best_gb_per_s", "best GB/s", ".2f"),
        ("best_fraction_of_copy", "best of copy", ".2f"),
        ("spread", "max/min", ".1f"),
        ("kernel", "kernel that ran", ""),
    ]))
    print()
    print(f"registry default for optim='adamw_torch': {default['class']} {default['kwargs_passed']} -> "
          f"{default['kernel_run_on_cpu']} on CPU")
    print(f"why: {default['why']}")
    unstable = [r["implementation"] for r in rows if r["spread"] > 2]
    notes = [
        "GB/s and 'of copy' from the median step; 'best' from the fastest (least disturbed) one",
        *([f"unstable timings (slowest / fastest > 2) for: {', '.join(unstable)}; re-run on a quiet machine"]
          if unstable else []),
        f"{n_total:,} fp32 parameters in {a.tensors} tensors, {threads} torch thread(s); AdamW counted as "
        f"{BYTES_PER_PARAM} bytes/param (4 reads + 3 writes of 4 bytes), copy as 8 bytes/element",
    ]
    return C.finish(
        "throughput", a.out, machine_before=before, rows=rows, notes=notes, registry_default=default,
        settings={"params": n_total, "tensors": a.tensors, "repeat": a.repeat, "threads": threads, "quick": a.quick,
                  "bytes_per_param_adamw": BYTES_PER_PARAM},
    )


if __name__ == "__main__":
    main()
