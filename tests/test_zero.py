"""DeepSpeed ZeRO-1/2/3 through OptimTrainer on 2 CPU processes: every name trains as one process does, or is refused.

One torchrun launch per stage (tests/zero_worker.py runs every case of it in one process group); the
one-process references are trained here, in the test process, on the same batches. Every rank trains on the
same batch, so ZeRO's averaged gradient is one process's: a difference in the weights comes from the optimizer.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

if importlib.util.find_spec("deepspeed") is None:  # the dev extras install it
    pytest.skip("deepspeed is not installed", allow_module_level=True)

import torch  # noqa: E402
from zero_worker import launch, model_for, one_process_record, parse  # noqa: E402

from optim_registry.engines.evidence import ZERO_PATHS, ZERO_REASONED, runs  # noqa: E402
from optim_registry.families.beyond.records import MUON_UNDER_ZERO as MUON  # noqa: E402
from optim_registry.registry import optimizers  # noqa: E402
from optim_registry.spec import ZERO_MATH  # noqa: E402

STAGES = (1, 2, 3)
#: name -> optim_args of every name run under ZeRO here: the records' own evidence (``Distributed.zero_run``).
RUN = runs("zero")
#: Names the same launches check are refused with a ValueError naming the stage and the way out.
REFUSED = ("adafactor", "adamw_torch_layerwise", "apollo_adamw", "dion", "galore_adamw")
#: Elementwise names end this close to one process (measured: 7.7e-7 at most, ZeRO-3's gradient reduction
#: rounding the last bit differently; ZeRO-1/2 1.2e-7, the clipping norm's last bit); AdamW with beta2=0.99 instead
#: of 0.999 ends 1.2e-4 away, schedule-free counting its steps per ZeRO-3 sub-group 1.1e-2, SGD 3e-2.
TOLERANCE = 1e-5
#: Block-quantised names (bitsandbytes 8-bit, stepped on per-tensor views): outside the blocks a partition boundary
#: runs through they end this close to one process too (measured, unclipped: 0.0 under ZeRO-1/2, 1.8e-6 under
#: ZeRO-3, the last-bit difference of its gradient reduction carried through the forward pass). Each block a
#: boundary runs through is quantised by each rank with the maximum of its own part: a quantisation error of 8-bit
#: state, as large as the one between 8-bit and 32-bit state (measured 4.9e-4 in the LM head's split block under
#: ZeRO-3, and 8-bit vs 32-bit state in one process 8.8e-4), so those blocks get SPLIT_TOLERANCE. Outside them, the
#: controls: the library stepping ZeRO's flat partitions as before (blocks across tensors) 1.8e-2 away, views
#: without the block alignment 1.0e-3 (benchmarks/zero_agreement.py). Run unclipped: ZeRO's clipping factor differs
#: from one process's in its last bit, and 8-bit state turns that into a whole quantisation step wherever a value
#: sits on a code boundary (clipped, one element of 8192 in the LM head ends 2.1e-4 away under ZeRO-3).
SPLIT_TOLERANCE = 2e-3
#: Runs that need another model: 8-bit state is quantised only for tensors of 4096 elements and more (v512: the LM
#: head; v520l3: the LM head too, 8320 elements, which ZeRO-3 splits at 4160, mid-block).
VARIANT = {"adamw_8bit": "@v520l3+noclip", "lion_8bit": "@v512"}
TRAIN = [(f"train/{n}:{a}" if a else f"train/{n}") + VARIANT.get(n, "") for n, a in RUN.items()]
REFUSE = [f"train/{n}" for n in REFUSED]
MUON_EXCLUDE = "train/muon:exclude=embed|lm_head|down_proj"
FLAT_8BIT = "stock_class/adamw_8bit@v520l3+noclip"  # the library on ZeRO's flat partitions: the negative control
RESUMED_8BIT = "resume/adamw_8bit@v520l3+noclip"
OFFLOADED = {2: "train/sgd:momentum=0.9@offload", 3: "train/adamw_8bit@v520l3+noclip+offload"}
EXTRA = {
    1: [],
    2: ["train/adamw_torch@clipkeyless", MUON_EXCLUDE, "train/muon@clip", "stock/galore_adamw", "prebuilt",
        "cls_and_kwargs", "dsopt/AdamW", "dsopt/Muon", "resume/adamw_torch", "resume/muon", "resume_checks",
        FLAT_8BIT, RESUMED_8BIT, OFFLOADED[2]],
    3: ["train/schedule_free_adamw@subgroups", "stock_class/schedule_free_adamw@subgroups",
        "resume/schedule_free_adamw", OFFLOADED[3]],
}


def _installed(case: str) -> bool:
    from optim_registry import deps

    name = parse(case)[0] if "/" in case and case.split("/")[0] in ("train", "resume", "stock_class") else None
    return name is None or (name in optimizers and not deps.missing(optimizers.get(name).requires))


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory):
    """stage -> case -> [rank 0's record, rank 1's record]."""
    return {stage: launch(str(tmp_path_factory.mktemp(f"zero{stage}")), stage,
                          [c for c in TRAIN + REFUSE + EXTRA[stage] if _installed(c)])
            for stage in STAGES}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same cases trained in this one process (no DeepSpeed), each once."""
    root = tmp_path_factory.mktemp("one_process")
    cache: dict[tuple[str, str], dict] = {}

    def run(case: str, deepspeed_muon: bool = False, **kw) -> dict:
        key = (case, repr(sorted(kw.items())) + str(deepspeed_muon))
        if key not in cache:
            cache[key] = one_process_record(case, str(root / str(len(cache))), deepspeed_muon, **kw)
        return cache[key]

    return run


def _diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _ok(records: list[dict], case: str) -> None:
    for r in records:
        assert r["status"] == "ok", (case, r.get("error"), r.get("traceback"))
    for n in records[0]["final"]:
        assert torch.equal(records[0]["final"][n], records[1]["final"][n]), f"{case}: ranks disagree on {n}"


# --- elementwise names --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_elementwise_names_train_as_one_process(zero_runs, one_process, stage):
    ran = 0
    for case in TRAIN:
        name = parse(case)[0]
        if case not in zero_runs[stage] or optimizers.get(name).distributed.zero_math != "local":
            continue
        records = zero_runs[stage][case]
        _ok(records, case)
        ref = one_process(case)
        diff = _diff(records[0]["final"], ref["final"])
        assert diff < TOLERANCE, (stage, case, diff)
        start = model_for(parse(case)[2]).state_dict()
        assert all(not torch.equal(records[0]["final"][n], start[n]) for n in records[0]["final"]), case
        if "eval" in ref:  # schedule-free: the weights one evaluates and saves, reached through ZeRO too
            assert _diff(records[0]["eval"], ref["eval"]) < TOLERANCE, (stage, case)
            assert _diff(records[0]["eval"], records[0]["final"]) > 1e-4  # the switch moved the weights
        ran += 1
    assert ran >= 4  # adamw_torch, sgd, lion_32bit, schedule_free_adamw in a full dev install


def test_zero3_counts_each_step_once_per_group_across_sub_groups(zero_runs, one_process):
    case = "train/schedule_free_adamw@subgroups"
    records = zero_runs[3][case]
    _ok(records, case)
    ref = one_process(case)
    assert _diff(records[0]["final"], ref["final"]) < TOLERANCE
    assert _diff(records[0]["eval"], ref["eval"]) < TOLERANCE
    assert records[0]["class"] == "ZeRO3AdamWScheduleFree"
    # The library's class as the stock Trainer hands it to ZeRO-3: its counters advance once per sub-group.
    control = zero_runs[3]["stock_class/schedule_free_adamw@subgroups"]
    _ok(control, "stock_class")
    assert _diff(control[0]["final"], ref["final"]) > 1e-3, "the comparison must tell the stock stepping apart"


def test_gradient_clipping_follows_max_grad_norm_when_the_config_has_no_key(zero_runs, one_process):
    case = "train/adamw_torch@clipkeyless"
    records = zero_runs[2][case]
    _ok(records, case)
    ref = one_process(case)
    assert _diff(records[0]["final"], ref["final"]) < TOLERANCE
    assert _diff(ref["final"], one_process("train/adamw_torch")["final"]) > 1e-4  # the clipping mattered


def _split_blocks(records: list[dict], final: dict) -> dict:
    """name -> mask of the elements in blocks a partition boundary runs through (the ranks' partial views), after
    checking that the ranks' views cover every element of every parameter exactly once."""
    covered = {n: torch.zeros(t.numel(), dtype=torch.int64) for n, t in final.items()}
    split = {n: torch.zeros(t.numel(), dtype=torch.bool) for n, t in final.items()}
    for r in records:
        for name, start, length, _, partial in r["views"]:
            covered[name][start:start + length] += 1
            split[name][start:start + length] |= partial
    for name, counts in covered.items():
        assert bool((counts == 1).all()), f"{name}: elements in {sorted(set(counts.tolist()))} views, not 1"
    return {n: m.view(final[n].shape) for n, m in split.items()}


def _apart(a: dict, b: dict, masks: dict) -> tuple[float, float]:
    """Largest |a - b| outside and inside the masked elements."""
    outside = inside = 0.0
    for n, m in masks.items():
        d = (a[n].float() - b[n].float()).abs()
        outside = max(outside, d[~m].max().item() if bool((~m).any()) else 0.0)
        inside = max(inside, d[m].max().item() if bool(m.any()) else 0.0)
    return outside, inside


@pytest.mark.parametrize("stage", STAGES)
def test_block_quantised_names_train_as_one_process_on_per_tensor_views(zero_runs, one_process, stage):
    ran = 0
    for case in TRAIN:
        name = parse(case)[0]
        if case not in zero_runs[stage] or optimizers.get(name).distributed.zero_math != "views":
            continue
        records = zero_runs[stage][case]
        _ok(records, case)
        assert not any("quantised in blocks" in w for w in records[0]["warnings"]), records[0]["warnings"]
        ref = one_process(case)
        masks = _split_blocks(records, ref["final"])
        # every view takes its whole tensor's 8-/32-bit decision, as one process does (the LM head 8-bit, the
        # embeddings kept 32-bit by the registry, the small tensors 32-bit)
        decided = {n: q for r in records for n, _, _, q, _ in r["views"]}
        assert decided == {n: bits == 8 for n, bits in ref["state_bits"].items()}, (case, decided)
        assert any(decided.values()) and not decided["model.embed_tokens.weight"], decided
        outside, inside = _apart(records[0]["final"], ref["final"], masks)
        assert outside < TOLERANCE and inside < SPLIT_TOLERANCE, (stage, case, outside, inside)
        if stage == 3 and case.endswith("@v520l3+noclip"):  # the LM head, split at 4160: its block 16 is split
            assert masks["lm_head.weight"].view(-1).nonzero().view(-1).tolist() == list(range(4096, 4352)), case
        ran += 1
    assert ran >= 2  # adamw_8bit and lion_8bit with bitsandbytes installed
    if stage == 2 and FLAT_8BIT in zero_runs[2]:
        # The control: the library stepping ZeRO's flat partitions (what the stock Trainer does, and the registry
        # did before): blocks across tensors, every tensor quantised.
        control = zero_runs[2][FLAT_8BIT]
        _ok(control, FLAT_8BIT)
        assert control[0]["class"] == "AdamW"
        # (no block of this model is split under ZeRO-2: all of it lies outside the split blocks)
        assert _diff(control[0]["final"], one_process(FLAT_8BIT.replace("stock_class/", "train/"))["final"]) > 1e-3


@pytest.mark.parametrize("stage", [2, 3])
def test_an_offloaded_optimizer_is_the_one_asked_for(zero_runs, one_process, stage):
    # accelerate swaps any optimizer for DeepSpeed's CPU Adam under an optimizer offload unless the config says
    # "zero_force_ds_cpu_optimizer": false (SGD then ended 3e-2 away); the registry sets it
    case = OFFLOADED[stage]
    if case not in zero_runs[stage]:
        pytest.skip("not installed")
    records = zero_runs[stage][case]
    _ok(records, case)
    ref = one_process(case.replace("+offload", "").replace("@offload", ""))
    name = parse(case)[0]
    assert records[0]["class"] == ("SGD" if name == "sgd" else f"ZeRO{stage}AdamW"), records[0]["class"]
    masks = _split_blocks(records, ref["final"]) if "views" in records[0] else {
        n: torch.zeros_like(t, dtype=torch.bool) for n, t in ref["final"].items()}
    outside, inside = _apart(records[0]["final"], ref["final"], masks)
    assert outside < TOLERANCE and inside < SPLIT_TOLERANCE, (case, outside, inside)
    from optim_registry import TrainingArguments

    with pytest.raises(ValueError, match=r"optim='sgd' under DeepSpeed ZeRO stage 2 with offload_optimizer device "
                                         r"'cpu': 'zero_force_ds_cpu_optimizer': true"):
        TrainingArguments("x", optim="sgd", deepspeed={**_config(2, offload_optimizer={"device": "cpu"}),
                                                       "zero_force_ds_cpu_optimizer": True},
                          report_to=[], use_cpu=True)


def test_a_split_tensor_is_cut_at_its_own_block_boundaries():
    from optim_registry.engines.zero import Piece, split_piece

    def cut(start, length, numel=8320):
        return split_piece(Piece(0, length, start, numel, None), 256)

    # the second rank's half of the 8320-element LM head, from 4160 (mid-block): the block's rest on its own
    assert cut(4160, 4160) == [(0, 192, True), (192, 3968, False)]
    # the first rank's half: whole blocks, then the start of the block the boundary runs through
    assert cut(0, 4160) == [(0, 4096, False), (4096, 64, True)]
    # on block boundaries, and a piece inside one block, are left whole
    assert cut(4096, 4224) == [(0, 4224, False)] and cut(300, 100) == [(0, 100, True)]
    assert split_piece(Piece(0, 100, 300, 8320, None), None) == [(0, 100, False)]  # 32-bit state: no blocks


@pytest.mark.parametrize(("zero", "extra", "needle"), [
    ({"offload_optimizer": {"device": "nvme", "nvme_path": "/tmp"}}, {}, "offload_optimizer device 'nvme'"),
    ({"elastic_checkpoint": True}, {}, "elastic_checkpoint"),
    ({}, {"checkpoint": {"load_universal": True}}, "checkpoint.load_universal"),
])
def test_block_quantised_names_refuse_what_reads_zeros_flat_state(zero, extra, needle):
    from optim_registry import TrainingArguments

    with pytest.raises(ValueError, match=rf"optim='adamw_8bit' under DeepSpeed ZeRO stage 2: .*{needle}.*FSDP2"):
        TrainingArguments("x", optim="adamw_8bit", deepspeed={**_config(2, **zero), **extra}, report_to=[],
                          use_cpu=True)
    # offloading to the CPU keeps the partitions (and the views) in memory
    TrainingArguments("x", optim="adamw_8bit", deepspeed=_config(2, offload_optimizer={"device": "cpu"}),
                      report_to=[], use_cpu=True)


# --- Muon: DeepSpeed's own, with the registry's routing and settings ------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_muon_runs_deepspeeds_muon_with_the_registrys_groups(zero_runs, one_process, stage):
    from optim_registry.build import make_context, matrix_routes
    from optim_registry.testing import tiny_model, training_args

    records = zero_runs[stage]["train/muon"]
    _ok(records, "muon")
    r = records[0]
    assert r["class"] == "ZeROMuonWithAdamW"
    routes = matrix_routes(make_context(training_args("muon", "/tmp/unused"), tiny_model()))
    assert r["use_muon"] == {n: routes[n] in ("matrix", "experts") for n in routes}
    assert any("no gradient clipping is applied" in w for w in r["warnings"]), r["warnings"]
    # DeepSpeed's Muon over the registry's groups in one process: exactly under ZeRO-1/2. ZeRO-3's own gradient
    # reduction differs from one process in the last bit (elementwise names: 7.7e-7), which bf16 Newton-Schulz
    # turns into a difference of the size of its rounding (MUON["zero3"]).
    to_one_process = _diff(r["final"], one_process("train/muon", deepspeed_muon=True)["final"])
    assert to_one_process < (TOLERANCE if stage < 3 else MUON["bound"]), to_one_process
    # ... which differs from the registry's own Muon only by its bf16 Newton-Schulz arithmetic (MUON), while
    # AdamW ends far away.
    to_registry = _diff(r["final"], one_process("train/muon")["final"])
    assert to_registry < MUON["bound"], to_registry
    assert _diff(r["final"], one_process("train/adamw_torch")["final"]) > 3 * MUON["bound"]


def test_muon_follows_the_registrys_exclude_pattern_not_deepspeeds_names(zero_runs, one_process):
    records = zero_runs[2][MUON_EXCLUDE]
    _ok(records, MUON_EXCLUDE)
    tags = records[0]["use_muon"]
    # DeepSpeed's own tagging would put every 2-D weight without "embed" / "lm_head" in its name on Muon
    assert not any(v for n, v in tags.items() if "down_proj" in n) and tags["model.layers.0.mlp.up_proj.weight"]
    ref = one_process(MUON_EXCLUDE, deepspeed_muon=True)
    assert _diff(records[0]["final"], ref["final"]) < TOLERANCE


def test_muon_refusals_name_the_conflict_and_the_way_out(zero_runs):
    r = zero_runs[2]["train/muon@clip"][0]
    assert r["status"] == "refused" and "max_grad_norm=0" in r["error"] and "ZeRO stage 2" in r["error"], r
    from optim_registry import TrainingArguments

    for optim_args, needle in (("nesterov=false", "nesterov=false"), ("ns_steps=3", "ns_steps=3"),
                               ("adjust_lr_fn=match_rms_adamw", "match_rms_adamw")):
        with pytest.raises(ValueError, match=rf"ZeRO stage 2 runs DeepSpeed's own Muon.*{needle}.*FSDP2"):
            TrainingArguments("x", optim="muon", optim_args=optim_args, deepspeed=_config(2), report_to=[],
                              use_cpu=True)
    with pytest.raises(ValueError, match="reduce_scatter"):
        TrainingArguments("x", optim="muon", deepspeed=_config(3, reduce_scatter=True), report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="gradient_clipping"):
        TrainingArguments("x", optim="muon", deepspeed={**_config(2), "gradient_clipping": 1.0}, max_grad_norm=0.0,
                          report_to=[], use_cpu=True)


def test_muon_rules_deepspeed_cannot_follow_are_refused_when_built():
    from optim_registry import build
    from optim_registry.engines import zero
    from optim_registry.testing import arguments, tiny_model

    model = tiny_model()
    ctx = build.make_context(arguments("muon", optim_groups=[{"params": "q_proj", "momentum": 0.9}]), model)
    cls, kwargs = zero.deepspeed_muon(ctx, 2)  # ZeRO-1/2 read each group's momentum
    assert sorted(g["momentum"] for g in kwargs["params"] if g["use_muon"]) == [0.9, 0.95]
    assert all(g["ns_method"] == "standard" for g in kwargs["params"] if g["use_muon"])
    with pytest.raises(ValueError, match=r"ZeRO stage 3: DeepSpeed's Muon takes one momentum"):
        zero.deepspeed_muon(ctx, 3)
    ctx = build.make_context(arguments("muon", optim_groups=[{"params": "q_proj", "nesterov": False}]), model)
    with pytest.raises(ValueError, match=r"optim_groups setting nesterov=false"):
        zero.deepspeed_muon(ctx, 2)


def _config(stage: int, **zero) -> dict:
    return {"zero_optimization": {"stage": stage, **zero}, "train_micro_batch_size_per_gpu": "auto"}


# --- refused names, given optimizers, DeepSpeed's own optimizer --------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_shape_aware_and_layerwise_names_are_refused_pointing_to_fsdp2(zero_runs, stage):
    for case in REFUSE:
        if case not in zero_runs[stage]:
            continue
        name = parse(case)[0]
        for r in zero_runs[stage][case]:
            assert r["status"] == "refused", (case, r)
            assert f"optim={name!r}" in r["error"] and f"ZeRO stage {stage}" in r["error"], r["error"]
            way_out = "use 'adamw_torch'" if name.endswith("_layerwise") else "fsdp_version': 2"
            assert way_out in r["error"], r["error"]
    if stage == 2:  # the stock arguments class, refused when the optimizer is built, before any step
        r = zero_runs[2]["stock/galore_adamw"][0]
        assert r["status"] == "refused" and "ZeRO stage 2" in r["error"] and "FSDP2" in r["error"], r


def test_a_given_optimizer_is_refused_and_its_class_trains(zero_runs, one_process):
    r = zero_runs[2]["prebuilt"][0]
    assert r["status"] == "refused" and "SGD" in r["error"] and "optimizer_cls_and_kwargs" in r["error"], r
    records = zero_runs[2]["cls_and_kwargs"]
    _ok(records, "cls_and_kwargs")
    assert records[0]["class"] == "SGD"
    assert _diff(records[0]["final"], one_process("train/sgd")["final"]) < TOLERANCE


def test_deepspeed_configs_own_optimizer_trains_and_saves(zero_runs):
    for case in ("dsopt/AdamW", "dsopt/Muon"):
        records = zero_runs[2][case]
        _ok(records, case)
        manifest = records[0]["manifest"]
        assert manifest is not None and manifest["optimizer"]["name"] is None, manifest
    # ... and one that also names another optim is one clear error, as before
    from optim_registry import TrainingArguments

    with pytest.raises(ValueError, match="defines its own optimizer"):
        TrainingArguments("x", optim="sgd", deepspeed={**_config(2), "optimizer": {"type": "AdamW"}}, report_to=[],
                          use_cpu=True)


# --- resume -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("stage", "case"), [(2, "resume/adamw_torch"), (2, "resume/muon"), (2, RESUMED_8BIT),
                                           (3, "resume/schedule_free_adamw")])
def test_resume_is_exact_with_the_manifest_on_deepspeeds_layout(zero_runs, stage, case):
    from optim_registry.testing import RESUME_TOLERANCE

    if case not in zero_runs[stage]:
        pytest.skip("not installed")
    name = parse(case)[0]
    records = zero_runs[stage][case]
    _ok(records, name)
    for r in records:
        # schedule-free is saved in eval mode and switched back: a rounding of its own (1.9e-9 in one process)
        assert _diff(r["final"], r["resumed"]) < (RESUME_TOLERANCE if name == "schedule_free_adamw" else 1e-12), name
    manifest = records[0]["manifest"]
    states = [f for f in manifest["files"] if f.startswith("global_step2/") and f.endswith("optim_states.pt")]
    assert len(states) == 2 and all("sha256" in manifest["files"][f] for f in states), sorted(manifest["files"])
    groups = manifest["optimizer"]["groups"]
    assert manifest["optimizer"]["name"] == name and all(not p.startswith("<unnamed") for g in groups
                                                          for p in g["params"])


def test_resume_checks_work_on_deepspeeds_layout(zero_runs):
    checks = zero_runs[2]["resume_checks"][0]["checks"]
    assert checks == zero_runs[2]["resume_checks"][1]["checks"]  # every rank decides the same
    expect = {
        "other_optimizer": "optim='adamw_torch', the arguments ask for optim='sgd'",
        "other_options": "optim_args",
        "other_layout": "group layout differs",
        "flipped_byte": "is corrupted",
        "torn": "torn checkpoint",
    }
    for label, needle in expect.items():
        assert checks[label]["status"] == "refused" and needle in checks[label]["error"], (label, checks[label])
    newest = checks["newest_complete"]
    assert newest["status"] == "ok" and newest["step"] == 4 and newest["warnings"], newest


# --- the records' claims, docs and show -----------------------------------------------------------------------------

def test_every_zero_claim_was_run_or_is_reasoned():
    for name in optimizers.names():
        d = optimizers.get(name).distributed
        for stage in STAGES:
            verdict = getattr(d, f"zero{stage}")
            assert verdict is True or (isinstance(verdict, str) and verdict), (name, stage)
            if verdict is True and d.zero_run is None:
                assert d.zero_reasoned or d.zero_math in ZERO_REASONED, (
                    f"{name}: ZeRO path {d.zero_math!r} is claimed but was never run"
                )
    assert set(ZERO_PATHS) == ZERO_MATH
    for name in RUN:
        assert all(getattr(optimizers.get(name).distributed, f"zero{s}") is True for s in STAGES), name
    for name in REFUSED:
        assert all(getattr(optimizers.get(name).distributed, f"zero{s}") is not True for s in STAGES), name


def test_show_and_docs_say_run_or_reasoned(capsys):
    from optim_registry.cli import main

    assert main(["show", "muon"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ZeRO: DeepSpeed's own Muon" in out and "run here" in out and "Newton-Schulz" in out
    assert main(["show", "adamw_bnb_8bit", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["zero"]["math"] == "views" and "reasoned as adamw_8bit" in data["zero"]["how"]
    assert main(["show", "adamw_8bit"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ZeRO: the library's own step on per-tensor views" in out and "run here" in out
    text = (Path(__file__).resolve().parents[1] / "docs" / "distributed.md").read_text()
    assert "| `muon` | beyond | yes | no [" in text and "RUN (deepspeed_muon)" in text


def test_the_stage_and_its_refusal_come_from_the_arguments():
    from optim_registry.distributed import check_distributed, detect_backend

    for stage in STAGES:
        args = SimpleNamespace(deepspeed=_config(stage), fsdp=None, fsdp_config=None, optim_args=None,
                               max_grad_norm=0.0)
        assert detect_backend(args).kind == f"zero{stage}"
        check_distributed(optimizers.get("muon"), args)
        with pytest.raises(ValueError, match=rf"ZeRO stage {stage}.*fsdp_version"):
            check_distributed(optimizers.get("dion"), args)
