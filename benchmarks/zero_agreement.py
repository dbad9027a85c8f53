"""DeepSpeed ZeRO-1/2/3 against one process: per name and stage, the weight difference after training, or the refusal.

The figures behind the records' ZeRO evidence (``Distributed.zero_run`` / ``zero_reasoned``) and
docs/distributed.md. One ``torchrun`` launch per stage (2 CPU processes, gloo) runs ``tests/zero_worker.py`` on the
names ``tests/test_zero.py`` checks, every rank on the same batches through ``OptimTrainer``; the same runs are then
trained in this process without DeepSpeed. A row is the largest |weight difference| to one process (and whether the
ranks agree bit for bit), or the refusal's message. For block-quantised names (per-tensor views,
``engines.zero.ZeroViews``) a row also splits it: inside the blocks a partition boundary runs through (``split``:
each rank quantises its part of such a block with its own maximum) and everywhere else (``rest``), with the number
of elements more than 1e-6 off. ``+offload``: the optimizer offloaded to the CPU, compared with the same run without
it. Controls: ``stock_class/...`` is the library stepping ZeRO's flat partitions (what the stock Trainer does, and
the registry did before the views), ``+unaligned`` the views without cutting a split tensor at its block boundaries.
torchao's names get a launch of their own per stage (``--torchao``, on by default) with ``torch.compile`` on: the
other launch disables it (DeepSpeed's Muon would compile for minutes). For scale, the same table gives distances
between runs that differ on purpose (another optimizer, another beta2, 8-bit vs 32-bit state, bf16 vs float32
Newton-Schulz), all in one process.

    python benchmarks/zero_agreement.py            # 6 launches and the references, about 10 minutes
    python benchmarks/zero_agreement.py --quick    # ZeRO-2 only, three names
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import _common as C

sys.path.insert(0, str(C.REPO / "tests"))

NAMES = ["train/adamw_torch", "train/adamw_torch@noclip", "train/sgd:momentum=0.9", "train/lion_32bit",
         "train/schedule_free_adamw",
         # 8-bit bitsandbytes on per-tensor views: as a user runs it (clipped), the test's case (unclipped; ZeRO-3
         # splits the LM head mid-block), the same without the block alignment, a split under ZeRO-1/2 too
         # (min_8bit_size=512: the MLP matrices are 8-bit, and one of them straddles the partitions), the others
         "train/adamw_8bit@v512", "train/adamw_8bit@v520l3+noclip", "train/adamw_8bit@v520l3+noclip+unaligned",
         "train/adamw_8bit:min_8bit_size=512@v520l3+noclip", "train/lion_8bit@v512", "train/ademamix_8bit@v512",
         "train/rmsprop_bnb_8bit@v512", "train/paged_adamw_8bit@v512+noclip", "stock_class/adamw_8bit@v512",
         "train/flash_adamw:quantize=false",
         # the optimizer offloaded to the CPU: the named optimizer steps the offloaded partitions
         "train/sgd:momentum=0.9@offload", "train/adamw_8bit@v520l3+noclip+offload",
         "train/muon", "train/galore_adamw", "train/apollo_adamw", "train/adafactor", "train/dion",
         "train/adamw_torch_layerwise"]
#: torchao compiles its step (torch.compile): a launch of its own with compiling on. v528: the LM head has 33
#: blocks of 256 (quantised; torchao keeps 32-bit state for sizes that are not a multiple of the block) and ZeRO-3
#: splits it at 4224, mid-block.
TORCHAO_NAMES = ["train/adamw_torch_8bit@v528+noclip", "train/adamw_torch_4bit@v528+noclip",
                 "train/ao_adamw_fp8@v528+noclip", "train/adamw_torch_8bit@v528+noclip+unaligned",
                 "stock_class/adamw_torch_8bit@v528+noclip"]
QUICK_NAMES = ["train/adamw_torch", "train/muon", "train/galore_adamw"]


def _reference_case(case: str) -> str:
    """The one-process run a case is compared with (controls: the run they stand in for)."""
    name, _, variant = case.split("/", 1)[1].partition("@")
    flags = [f for f in variant.split("+") if f and f not in ("unaligned", "offload")]
    return f"train/{name}" + (f"@{'+'.join(flags)}" if flags else "")


def _split_and_rest(records: list[dict], ref: dict) -> dict[str, Any]:
    """Inside / outside the blocks a partition boundary runs through (the ranks' partial views)."""
    import torch

    split = {n: torch.zeros(t.numel(), dtype=torch.bool) for n, t in ref.items()}
    for r in records:
        for name, start, length, _, partial in r.get("views", ()):
            split[name][start:start + length] |= partial
    out = {"split": 0.0, "rest": 0.0, "off_1e-6": 0}
    for r in records[:1]:  # every rank holds the same weights (checked: ranks_equal)
        for n, t in ref.items():
            d = (r["final"][n].float() - t.float()).abs().view(-1)
            m = split[n]
            out["split"] = max(out["split"], d[m].max().item() if bool(m.any()) else 0.0)
            out["rest"] = max(out["rest"], d[~m].max().item() if bool((~m).any()) else 0.0)
            out["off_1e-6"] += int((d > 1e-6).sum())
    return out


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
    p.add_argument("--no-torchao", dest="torchao", action="store_false",
                   help="leave out torchao's launches (they compile its step: about a minute each)")
    a = p.parse_args(argv)
    from zero_worker import launch, one_process_record

    import optim_registry.families.beyond.muon as muon_module
    from optim_registry import deps
    from optim_registry.registry import optimizers

    before = C.machine()
    names = QUICK_NAMES if a.quick else NAMES
    stages = (2,) if a.quick else (1, 2, 3)
    def installed(case: str) -> bool:
        return not deps.missing(optimizers.get(case.split("/")[1].split(":")[0].split("@")[0]).requires)

    names = [n for n in names if installed(n)]
    torchao = [n for n in TORCHAO_NAMES if installed(n)] if a.torchao and not a.quick else []
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        refs: dict[tuple[str, bool], dict] = {}

        def ref(case: str, deepspeed_muon: bool = False, **kw: Any) -> dict:
            key = (case + repr(sorted(kw.items())), deepspeed_muon)
            if key not in refs:
                dynamo = case in torchao
                refs[key] = one_process_record(case, f"{tmp}/ref{len(refs)}", deepspeed_muon, dynamo=dynamo, **kw)
            return refs[key]

        for stage in stages:
            runs = launch(f"{tmp}/zero{stage}", stage, names, timeout=1800)
            if torchao:
                runs.update(launch(f"{tmp}/zero{stage}_torchao", stage, torchao, timeout=1800, dynamo=True))
            for case, records in runs.items():
                row: dict[str, Any] = {"case": case.split("/", 1)[1], "stage": stage, "status": records[0]["status"]}
                if case.startswith("stock_class/"):
                    row["case"] = f"{row['case']} (library on the flat partitions)"
                if row["status"] == "ok":
                    one = ref(_reference_case(case))
                    row["diff_to_one_process"] = max(_diff(r["final"], one["final"]) for r in records)
                    row["ranks_equal"] = _diff(records[0]["final"], records[1]["final"]) == 0.0
                    if "views" in records[0] or case.startswith("stock_class/"):
                        row.update(_split_and_rest(records, one["final"]))
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
            scale["adamw_8bit vs paged_adamw_32bit (v520l3, unclipped)"] = _diff(
                ref("train/adamw_8bit@v520l3+noclip")["final"], ref("train/paged_adamw_32bit@v520l3+noclip")["final"])
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
                         ("split", "in split blocks", ".2g"), ("rest", "elsewhere", ".2g"),
                         ("off_1e-6", "elements > 1e-6", ""),
                         ("ranks_equal", "ranks equal", ""), ("message", "refusal", "")], max_width=200))
    print()
    for what, value in scale.items():
        print(f"scale: {what}: {value:.2g}")
    notes = ["3 training steps, lr 1e-2 (muon_lr 0.02), tiny Llama (hidden 16, 2 layers; v512: 512-token "
             "vocabulary, v520l3: 520 tokens and 3 layers, v528: 528 tokens), every rank on the same batch; largest "
             "|weight difference| over the ranks; split / elsewhere: inside / outside the blocks a partition "
             "boundary runs through"]
    return C.finish("zero_agreement", a.out, machine_before=before, rows=rows, notes=notes, scale=scale, timing=False,
                    settings={"stages": list(stages), "names": names, "torchao": torchao, "quick": a.quick})


if __name__ == "__main__":
    main()
