"""The command line: list, show, compare and memory, in-process (``main([...])``) and as ``-m``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from optim_registry.cli import main
from optim_registry.spec import plain_name

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_list_as_a_module_imports_no_optimizer_package():
    code = textwrap.dedent("""
        import contextlib, io, json, runpy, sys
        buffer = io.StringIO()
        for argv in (["list"], ["list", "--json"], ["list", "--available"]):
            sys.argv = ["optim-registry", *argv]
            with contextlib.redirect_stdout(buffer):
                try:
                    runpy.run_module("optim_registry.cli", run_name="__main__")
                except SystemExit as exc:
                    assert not exc.code, exc.code
        from optim_registry.registry import optimizers
        packages = {r.module.split(".")[0] for s in optimizers.builtin().values() for r in s.requires}
        packages |= {"bitsandbytes", "galore_torch", "apollo_torch", "lomo_optim", "schedulefree", "optimi",
                     "torchao", "flashoptim", "came_pytorch", "pytorch_optimizer", "triton"}
        print(json.dumps({"imported": sorted(p for p in packages if p in sys.modules),
                          "table": "adamw_torch" in buffer.getvalue()}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"imported": [], "table": True}


def test_list_table_and_filters(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["name", "family", "package", "installed", "needs", "state", "B/param", "layer-wise", "source"]
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line and not line.startswith(" ")}
    assert rows["adamw_torch"][1] == "torch" and rows["adamw_torch"][-1] == "builtin"
    assert rows["adamw_torch"][-2] == "twin" and rows["adamw_torch_layerwise"][-2] == "yes"
    assert rows["sgd"][5] == "0"

    assert main(["list", "--family", "torch", "--json"]) == 0
    assert {r["family"] for r in json.loads(capsys.readouterr().out)} == {"torch"}

    assert main(["list", "--family", "no_such_family"]) == 1


def test_list_json_is_complete_and_available_filter_holds(capsys):
    from optim_registry import list_optimizers

    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [i.name for i in list_optimizers()]
    adamw = next(r for r in rows if r["name"] == "adamw_torch")
    for key in ("family", "requires", "available", "needs_gpu", "state_bytes", "layerwise", "layerwise_twin",
                "source", "options", "install", "runnable_here"):
        assert key in adamw
    assert adamw["layerwise_twin"] == "adamw_torch_layerwise" and adamw["state_bytes"] == 8.0
    assert adamw["options"]["amsgrad"]["type"] == "bool"

    assert main(["list", "--available", "--json"]) == 0
    available = json.loads(capsys.readouterr().out)
    assert available and all(r["runnable_here"] and r["available"] for r in available)
    assert {r["name"] for r in available} <= {r["name"] for r in rows}


def test_show_known_name_with_options_and_snippet(capsys):
    assert main(["show", "adamw_torch"]) == 0
    out = capsys.readouterr().out
    for text in ("arXiv:1711.05101", "amsgrad", "bool", "false", "`adam_beta1`, `adam_beta2` → `betas`",
                 "weight-decay split", "protocol", "DDP, FSDP1, FSDP2, ZeRO-1, ZeRO-2, ZeRO-3: yes",
                 'optim="adamw_torch"', "TrainingArguments("):
        assert text in out, text

    assert main(["show", "adafactor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["options"]["relative_step"] == {"type": "bool", "default": "false",
                                                "meaning": "time-dependent step size instead of the learning rate"}
    assert data["options"]["lr"]["default"] == "from TrainingArguments"
    assert 'optim_args="scale_parameter=false,relative_step=false"' in data["snippet"]


def test_show_target_module_and_layerwise_snippets_are_valid_training_arguments(capsys, tmp_path):
    from optim_registry import TrainingArguments
    from optim_registry.cli import show_dict
    from optim_registry.listing import list_optimizers
    from optim_registry.registry import optimizers

    runnable = {i.name for i in list_optimizers() if i.available and i.needs_gpu is None and not i.unsupported}
    specs = [optimizers.get(n) for n in sorted(runnable)]
    picks = {"adamw_torch", "adafactor", "sgd_layerwise"}
    picks |= {s.name for s in specs if s.target_modules}
    picks |= {s.name for s in specs if s.protocol != "step"}
    for name in sorted(picks & runnable):
        snippet = show_dict(optimizers.get(name))["snippet"]
        snippet = snippet.replace('output_dir="out"', f'output_dir={str(tmp_path)!r}, report_to=[], use_cpu=True')
        args = eval(snippet, {"TrainingArguments": TrainingArguments})  # noqa: S307 - our own generated text
        assert plain_name(args.optim) == name
    target = [s for s in specs if s.target_modules]
    if target:
        assert main(["show", target[0].name]) == 0
        assert 'optim_target_modules=["self_attn", "mlp"]' in capsys.readouterr().out


def test_show_says_a_layerwise_twin_steps_inside_backward_not_after_it(capsys):
    """The twin's record keeps its base's protocol; the page must not also say it steps after backward."""
    for twin, base in (("galore_adamw_layerwise", "galore_adamw"), ("schedule_free_adamw_layerwise",
                                                                     "schedule_free_adamw")):
        assert main(["show", twin, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert "after backward, as usual" not in json.dumps(shown), twin
        assert "stepped inside backward, by a hook" in shown["protocol_text"], shown["protocol_text"]
        assert "single process only" not in " ".join(shown["notes"]) and "or DDP" in " ".join(shown["notes"])
        assert main(["show", base, "--json"]) == 0
        assert "inside backward" not in json.loads(capsys.readouterr().out)["protocol_text"], base
    assert main(["show", "schedule_free_adamw_layerwise"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "`optimizer.train()` before training steps" in text and "only completes the step" in text


def test_show_unknown_name_exits_nonzero_with_closest_names(capsys):
    assert main(["show", "adamw_torh"]) == 2
    captured = capsys.readouterr()
    assert "Unknown optim 'adamw_torh'" in captured.err
    assert "adamw_torch" in captured.err
    assert captured.out == ""


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000  # axes, curves, legend and title, not an empty canvas


def test_compare_writes_table_json_and_png(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--optims", "adamw_torch,sgd", "--steps", "5", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "| optimizer" in printed and "adamw_torch" in printed and "sgd" in printed

    data = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in data["results"]] == ["adamw_torch", "sgd"]
    for r in data["results"]:
        assert len(r["losses"]) == 5 and r["steps"] == 5
        assert r["eval_loss"] > 0 and r["ms_per_step"] > 0 and r["peak_rss_mib"] > 0
    adamw, sgd = data["results"]
    # AdamW keeps two fp32 moments per parameter (+ step counters); plain SGD keeps nothing.
    assert 8.0 <= adamw["state_bytes_per_param"] < 8.1 and sgd["state_bytes"] == 0
    assert adamw["losses"][0] == sgd["losses"][0]  # same seed, same weights, same first batch
    assert data["settings"]["steps"] == 5 and data["skipped"] == [] and data["failed"] == []

    md = (out / "results.md").read_text()
    assert "| optimizer" in md and "eval loss" in md and "loss_curves.png" in md
    _check_png(out / "loss_curves.png")


def test_compare_reports_every_name_it_cannot_run(tmp_path, capsys):
    import torch

    from optim_registry import register_optimizer, unregister_optimizer
    from optim_registry.spec import OptimizerSpec, Requirement

    class Broken(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("broken on purpose")

    register_optimizer("t_cli_missing", OptimizerSpec(
        name="t_cli_missing", target="not_installed_pkg:Opt", family="test", description="needs a package",
        requires=(Requirement("not-installed-pkg", "not_installed_pkg"),)))
    register_optimizer("t_cli_gpu", OptimizerSpec(
        name="t_cli_gpu", target=torch.optim.SGD, family="test", description="GPU only", needs_gpu="CUDA kernels"))
    register_optimizer("t_cli_broken", Broken)
    def refuses(ctx):
        """Refuses fp32 weights, as a bf16-only optimizer does."""
        raise ValueError("needs bf16 weights")

    register_optimizer("t_cli_refused", refuses)
    register_optimizer("t_cli_unsupported", OptimizerSpec(
        name="t_cli_unsupported", target=torch.optim.SGD, family="test", description="no Trainer",
        unsupported="needs a closure every step"))
    try:
        out = tmp_path / "cmp"
        code = main(["compare", "--optims", "sgd,t_cli_missing,t_cli_gpu,t_cli_broken,t_cli_unsupported,t_cli_refused,not_an_optimizer",
                     "--steps", "2", "--out", str(out), "--no-progress", "--lr", "sgd=0.1,t_cli_broken=0.2"])
    finally:
        for name in ("t_cli_missing", "t_cli_gpu", "t_cli_broken", "t_cli_unsupported", "t_cli_refused"):
            unregister_optimizer(name)
    printed = capsys.readouterr().out
    assert code == 1  # one name failed while training
    data = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in data["results"]] == ["sgd"] and data["results"][0]["lr"] == 0.1
    skipped = {s["name"]: s["reason"] for s in data["skipped"]}
    assert "pip install not-installed-pkg" in skipped["t_cli_missing"]
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in skipped["t_cli_gpu"]
    assert "Unknown optim 'not_an_optimizer'" in skipped["not_an_optimizer"]
    assert skipped["t_cli_unsupported"] == "cannot train through a Trainer: needs a closure every step"
    assert skipped["t_cli_refused"] == "refused in this set-up: needs bf16 weights"  # before any step: not a failure
    failed = {f["name"]: f["reason"] for f in data["failed"]}
    assert failed == {"t_cli_broken": "RuntimeError: broken on purpose"}
    for name in ("t_cli_missing", "t_cli_gpu", "t_cli_unsupported", "not_an_optimizer"):
        assert f"skipping {name}:" in printed
    md = (out / "results.md").read_text()
    assert "## Skipped" in md and "## Failed" in md and "t_cli_broken" in md
    _check_png(out / "loss_curves.png")


def test_compare_with_nothing_to_train_writes_nothing_and_exits_1(tmp_path, capsys):
    """Every name skipped: one line says so; no empty table or plot (it was titled "tiny Llama (0k params)")."""
    out = tmp_path / "cmp"
    code = main(["compare", "--optims", "not_an_optimizer,nor_this", "--steps", "2", "--out", str(out),
                 "--no-progress"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert [line.split(":")[0] for line in lines] == ["skipping not_an_optimizer", "skipping nor_this",
                                                     "nothing trained (skipped not_an_optimizer, nor_this; reasons above)"]
    assert str(out) in lines[-1] and not out.exists()

    from optim_registry import register_optimizer, unregister_optimizer

    def refuses(ctx):
        raise ValueError("needs bf16 weights")

    register_optimizer("t_cli_refuses_all", refuses)  # runnable by its record, refused when built
    try:
        code = main(["compare", "--optims", "t_cli_refuses_all", "--steps", "2", "--out", str(out), "--no-progress"])
    finally:
        unregister_optimizer("t_cli_refuses_all")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 1 and last.startswith("nothing trained (skipped t_cli_refuses_all;"), last
    assert not any(out.iterdir())  # the folder was made ready before training; nothing written into it


def test_compare_learning_rates_and_lr_flag():
    from optim_registry.compare import learning_rate, parse_lr

    assert parse_lr("3e-3") == {"*": 3e-3}
    assert parse_lr("adamw_torch=3e-3, sgd=0.5") == {"adamw_torch": 3e-3, "sgd": 0.5}
    with pytest.raises(ValueError, match="not a number"):
        parse_lr("sgd=fast")
    assert learning_rate("lion_32bit", "bitsandbytes") < learning_rate("adamw_torch", "torch")
    assert learning_rate("sgd", "torch", {"*": 0.3}) == 0.3
    assert main(["compare", "--lr", "sgd=fast", "--no-progress"]) == 2


def test_memory_estimate_for_a_preset(capsys):
    assert main(["memory", "--optim", "adamw_torch,sgd", "--model-config", "tiny", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    adamw, sgd = data["estimates"]
    assert adamw["bytes"] == 8 * data["parameters"] and sgd["bytes"] == 0
    assert main(["memory", "--optim", "adamw_torch", "--model-config", "no-such-preset"]) == 2
    assert "neither a preset" in capsys.readouterr().err
