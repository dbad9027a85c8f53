"""DeepSpeed ZeRO-1/2/3 against one process: per name and stage, the weight difference after training, or the refusal.

The figures behind ``optim_registry/builtin/zero_runs.py`` and docs/distributed.md. One ``torchrun`` launch per
stage (2 CPU processes, gloo) runs ``tests/zero_worker.py`` on the names ``tests/test_zero.py`` checks, every rank
on the same batches through ``OptimTrainer``; the same runs are then trained in this process without DeepSpeed.
A row is the largest |weight difference| to one process (and whether the ranks agree bit for bit), or the
refusal's message. For scale, the same table gives distances between runs that differ on purpose (another
optimizer, another beta2, 8-bit vs 32-bit state, bf16 vs float32 Newton-Schulz), all in one process.

    python benchmarks/zero_agreement.py            # 3 launches and the references, a few minutes
    python benchmarks/zero_agreement.py --quick    # ZeRO-2 only, three names
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import _common as C

sys.path.insert(0, str(C.REPO / "tests"))

NAMES = ["train/adamw_torch", "train/adamw_torch@noclip", "train/sgd:momentum=0.9", "train/lion_32bit",
         "train/schedule_free_adamw", "train/adamw_8bit@v512", "train/muon", "train/galore_adamw",
         "train/apollo_adamw", "train/adafactor", "train/dion", "train/adamw_torch_layerwise"]
QUICK_NAMES = ["train/adamw_torch", "train/muon", "train/galore_adamw"]


def _diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _fp32_newton_schulz(matrix: Any, coefficients: Any, steps: int, eps: float) -> Any:
    """The registry's Newton-Schulz, in float32 instead of bfloat16 (for the scale of bf16 rounding)."""
    a, b, c = coefficients
    x = matrix.float()
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.parser("zero_agreement", __doc__.splitlines()[0])
    a = p.parse_args(argv)
    from zero_worker import launch, one_process_record

    import optim_registry.optimizers.muon as muon_module
    from optim_registry import deps
    from optim_registry.registry import optimizers

    before = C.machine()
    names = QUICK_NAMES if a.quick else NAMES
    stages = (2,) if a.quick else (1, 2, 3)
    names = [n for n in names if not deps.missing(optimizers.get(n.split("/")[1].split(":")[0].split("@")[0]).requires)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        refs: dict[tuple[str, bool], dict] = {}

        def ref(case: str, deepspeed_muon: bool = False, **kw: Any) -> dict:
            key = (case + repr(sorted(kw.items())), deepspeed_muon)
            if key not in refs:
                refs[key] = one_process_record(case, f"{tmp}/ref{len(refs)}", deepspeed_muon, **kw)
            return refs[key]

        for stage in stages:
            runs = launch(f"{tmp}/zero{stage}", stage, names, timeout=1800)
            for case, records in runs.items():
                row: dict[str, Any] = {"case": case.split("/", 1)[1], "stage": stage, "status": records[0]["status"]}
                if row["status"] == "ok":
                    row["diff_to_one_process"] = max(_diff(r["final"], ref(case)["final"]) for r in records)
                    row["ranks_equal"] = _diff(records[0]["final"], records[1]["final"]) == 0.0
                    if case.startswith("train/muon"):
                        row["diff_to_deepspeed_muon_one_process"] = max(
                            _diff(r["final"], ref(case, deepspeed_muon=True)["final"]) for r in records)
                else:
                    row["message"] = records[0]["error"]
                rows.append(row)
        scale = {
            "adamw_torch vs sgd (momentum 0.9)": _diff(ref("train/adamw_torch")["final"],
                                                      ref("train/sgd:momentum=0.9")["final"]),
            "adamw_torch vs adamw_torch beta2=0.99": _diff(ref("train/adamw_torch")["final"],
                                                          ref("train/adamw_torch", adam_beta2=0.99)["final"]),
            "muon vs adamw_torch": _diff(ref("train/muon")["final"], ref("train/adamw_torch")["final"]),
            "DeepSpeed's Muon vs the registry's Muon (one process)": _diff(
                ref("train/muon", deepspeed_muon=True)["final"], ref("train/muon")["final"]),
        }
        if not a.quick:
            scale["adamw_8bit vs paged_adamw_32bit (512-token vocabulary)"] = _diff(
                ref("train/adamw_8bit@v512")["final"], ref("train/paged_adamw_32bit@v512")["final"])
            bf16 = ref("train/muon")["final"]
            original = muon_module.zeropower_via_newtonschulz
            muon_module.zeropower_via_newtonschulz = _fp32_newton_schulz
            try:
                scale["the registry's Muon, bf16 vs float32 Newton-Schulz"] = _diff(
                    bf16, one_process_record("train/muon", f"{tmp}/fp32ns")["final"])
            finally:
                muon_module.zeropower_via_newtonschulz = original
    print(C.table(rows, [("case", "name", ""), ("stage", "ZeRO", ""), ("status", "status", ""),
                         ("diff_to_one_process", "|diff| to one process", ".2g"),
                         ("ranks_equal", "ranks equal", ""), ("message", "refusal", "")], max_width=200))
    print()
    for what, value in scale.items():
        print(f"scale: {what}: {value:.2g}")
    notes = ["3 training steps, lr 1e-2 (muon_lr 0.02), tiny Llama (hidden 16, 2 layers; 8-bit: 512-token "
             "vocabulary), every rank on the same batch; largest |weight difference| over the ranks"]
    return C.finish("zero_agreement", a.out, machine_before=before, rows=rows, notes=notes, scale=scale, timing=False,
                    settings={"stages": list(stages), "names": names, "quick": a.quick})


if __name__ == "__main__":
    main()
