"""What the stock Trainer and transformers' own tests accept works here; the registry is safe under threads.

- the library's own classes come back from ``get_optimizer_cls_and_kwargs`` for the bitsandbytes and
  torchao names (the fixes travel as hooks installed after construction);
- the dependency check survives a module without ``__spec__`` in ``sys.modules``;
- name lookup is atomic with registration, ``OptimizerNames`` is one class whatever the threads;
- replacing a built-in is visible, a plugin entry point cannot make a built-in unusable, invalid names are
  refused.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import types
import warnings
from collections import Counter

import pytest
import torch

from optim_registry import deps, list_optimizers, register_optimizer, unregister_optimizer
from optim_registry.registry import BuiltinReplacedWarning, PluginShadowWarning, optimizers
from optim_registry.testing import arguments as _args
from optim_registry.testing import tiny_model as make_tiny

# -- the dependency check -------------------------------------------------------------------------


@pytest.mark.parametrize("stub", ["module_without_spec", "object_without_spec"])
def test_dependency_check_survives_a_module_without_spec(monkeypatch, stub):
    """``importlib.util.find_spec`` raises ValueError for such an entry (torchdistx stubs did this)."""
    name = "t_nospec_pkg"
    module = types.ModuleType(name) if stub == "module_without_spec" else object()
    assert getattr(module, "__spec__", None) is None
    monkeypatch.setitem(sys.modules, name, module)
    import importlib.util

    from optim_registry.spec import Requirement

    with pytest.raises(ValueError, match="__spec__"):
        importlib.util.find_spec(name)  # what crashed the check before
    assert deps.importable(name) and deps.importable(name + ".sub")
    assert deps.is_available(Requirement(name, name))
    assert not deps.is_available(Requirement(name, name, "1.0"))  # no metadata: version unknown
    monkeypatch.setitem(sys.modules, name, None)  # the way to block an import
    assert not deps.importable(name)
    assert not deps.is_available(Requirement(name, name))


def test_listing_survives_a_torchdistx_stub_without_spec(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdistx", types.ModuleType("torchdistx"))
    infos = {i.name: i for i in list_optimizers()}  # raised ValueError: torchdistx.__spec__ is not set
    assert "adamw_anyprecision" in infos and infos["sgd"].available


def test_availability_follows_a_stand_in_module_that_comes_and_goes(monkeypatch):
    """transformers' tests put a Mock in sys.modules for torchdistx, then block it: neither state is cached."""
    from unittest.mock import Mock

    from optim_registry import TrainingArguments, get_optimizer_cls_and_kwargs
    from optim_registry.spec import Requirement

    req = Requirement("torchdistx", "torchdistx")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torchdistx", Mock())  # Mock's __spec__ raises AttributeError: find_spec's ValueError
        assert deps.is_available(req)
    assert not deps.is_available(req)  # gone again: not installed here
    with pytest.warns(UserWarning, match=r"optim='adamw_anyprecision' needs torchdistx"):
        a = TrainingArguments("x", optim="adamw_anyprecision", report_to=[], use_cpu=True)
    # transformers' test_no_torchdistx_anyprecision_adamw: accepted when created, a ValueError when resolved
    monkeypatch.setitem(sys.modules, "torchdistx.optimizers", None)
    with pytest.raises(ValueError, match=r"optim='adamw_anyprecision' needs torchdistx"):
        get_optimizer_cls_and_kwargs(a)


def test_a_blocked_library_module_is_one_missing_dependency_error(monkeypatch):
    """``sys.modules["bitsandbytes.optim"] = None`` (how transformers' tests hide bitsandbytes): a clear error
    that is an ImportError, and a ValueError as transformers raises for missing torchdistx / apex."""
    from optim_registry import TrainingArguments, get_optimizer_cls_and_kwargs

    a = TrainingArguments("x", optim="adamw_8bit", report_to=[], use_cpu=True)
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", None)
    with pytest.raises(deps.MissingDependencyError) as refused:
        get_optimizer_cls_and_kwargs(a)
    assert isinstance(refused.value, ImportError) and isinstance(refused.value, ValueError)
    assert "optim='adamw_8bit' cannot import 'bitsandbytes.optim'" in str(refused.value)
    assert "pip install 'bitsandbytes>=" in str(refused.value)


# -- invalid names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", " ", "my opt", " sgd2", "a,b", "tab\tname", 3, None, ("sgd",)])
def test_invalid_names_are_refused_before_anything_is_registered(bad):
    from optim_registry import register_scheduler
    from optim_registry.schedulers import schedulers

    before, before_sched = optimizers.names(), schedulers.names()
    with pytest.raises(ValueError, match="optimizer name") as refused:
        register_optimizer(bad, torch.optim.SGD)
    assert repr(bad) in str(refused.value) or type(bad).__name__ in str(refused.value)
    with pytest.raises(ValueError, match="optimizer name"):
        register_optimizer(bad)  # the decorator form refuses at once, not when it is applied
    with pytest.raises(ValueError, match="scheduler name"):
        register_scheduler(bad, torch.optim.lr_scheduler.ConstantLR)
    assert optimizers.names() == before and schedulers.names() == before_sched


def test_a_very_long_invalid_name_is_cut_in_the_message():
    with pytest.raises(ValueError) as refused:
        register_optimizer("x " * 50_000, torch.optim.SGD)
    assert len(str(refused.value)) < 400 and "(100002 characters)" in str(refused.value)


# -- the registry under threads -----------------------------------------------------------------------


def _hammer(reads: int = 100, readers: int = 4) -> Counter:
    """Readers resolve a name while a writer registers and unregisters it; returns outcome counts."""
    name = "t_race_opt"
    outcomes: Counter = Counter()
    lock = threading.Lock()
    done = threading.Event()
    left = [readers]

    class RaceSGD(torch.optim.SGD):
        pass

    def writer():
        while not done.is_set():
            register_optimizer(name, RaceSGD)
            unregister_optimizer(name)

    def reader():
        local: Counter = Counter()
        for _ in range(reads):
            for call in (lambda: optimizers.get(name), lambda: optimizers.check_name(name)):
                try:
                    call()
                    local["ok"] += 1
                except ValueError as exc:  # the clear "Unknown optim" answer
                    local["unknown" if "Unknown optim" in str(exc) else f"ValueError: {exc}"] += 1
                except Exception as exc:  # noqa: BLE001 - counting every raw error is the point
                    local[f"raw {type(exc).__name__}"] += 1
        with lock:
            outcomes.update(local)
            left[0] -= 1
            if not left[0]:
                done.set()

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(readers)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: the race shows within a few hundred lookups
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
        done.set()
        unregister_optimizer(name)
    return outcomes


def test_registry_race_gives_no_raw_errors():
    outcomes = _hammer()
    raw = {k: v for k, v in outcomes.items() if k not in ("ok", "unknown")}
    assert not raw, (raw, outcomes)
    # every lookup gave the record or the clear "Unknown optim" answer (which one depends on the scheduling;
    # the deterministic test below pins the exact window)
    assert outcomes["ok"] + outcomes["unknown"] == 4 * 100 * 2, outcomes
    assert "t_race_opt" not in optimizers


def test_name_unregistered_between_check_and_lookup_is_never_a_raw_error(monkeypatch):
    """The race made deterministic: another thread unregisters the name at the worst moment (old code: the
    check passed, then the lookup raised KeyError)."""
    register_optimizer("t_race_opt2", torch.optim.SGD)
    real, calls = optimizers._discover, []

    def discover_then_other_thread_unregisters() -> None:
        real()
        calls.append(1)
        if len(calls) == 2:
            unregister_optimizer("t_race_opt2")

    monkeypatch.setattr(optimizers, "_discover", discover_then_other_thread_unregisters)
    try:
        for _ in range(3):
            try:
                spec = optimizers.get("t_race_opt2")
                assert spec.target is torch.optim.SGD  # registered when it was looked up
            except ValueError as exc:
                assert "Unknown optim 't_race_opt2'" in str(exc)
    finally:
        unregister_optimizer("t_race_opt2")


def test_optimizer_names_enum_is_one_class_when_first_used_from_16_threads():
    code = textwrap.dedent("""
        import threading, optim_registry
        barrier = threading.Barrier(16)
        seen = []
        def first_use():
            barrier.wait()
            seen.append(optim_registry.OptimizerNames)
        threads = [threading.Thread(target=first_use) for _ in range(16)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(len(seen), len({id(c) for c in seen}), optim_registry.OptimizerNames("sgd") is seen[0].SGD)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["16", "1", "True"]


# -- replacing a built-in in code ----------------------------------------------------------------------


def test_plugin_module_replacing_a_builtin_on_import_is_visible(tmp_path, monkeypatch, capsys):
    """The issue's case: a module that runs register_optimizer("adamw_torch", ..., replace=True) when imported."""
    from optim_registry import TrainingArguments, get_optimizer_cls_and_kwargs
    from optim_registry.cli import main

    (tmp_path / "t_replacing_plugin.py").write_text(textwrap.dedent("""
        import torch
        from optim_registry import register_optimizer

        class Other(torch.optim.SGD):
            pass

        register_optimizer("adamw_torch", Other, replace=True)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.warns(BuiltinReplacedWarning) as caught:
            import t_replacing_plugin  # noqa: F401
        message = str(caught[0].message)
        assert "'adamw_torch' is built in" in message and "'t_replacing_plugin'" in message
        assert caught[0].filename.endswith("t_replacing_plugin.py")  # points at the plugin's line
        info = {i.name: i for i in list_optimizers()}["adamw_torch"]
        assert info.source == "t_replacing_plugin" and "replaced by t_replacing_plugin" in info.conflict
        assert main(["list"]) == 0
        out = capsys.readouterr().out
        row = next(line for line in out.splitlines() if line.startswith("adamw_torch "))
        assert row.rstrip().endswith("t_replacing_plugin")
        assert "conflict: adamw_torch: built-in replaced by t_replacing_plugin" in out
        a = TrainingArguments("x", optim="adamw_torch", report_to=[], use_cpu=True)
        assert get_optimizer_cls_and_kwargs(a)[0].__name__ == "Other"  # asked for deliberately: honoured
    finally:
        unregister_optimizer("adamw_torch")
        sys.modules.pop("t_replacing_plugin", None)
    restored = {i.name: i for i in list_optimizers()}["adamw_torch"]
    assert restored.source == "builtin" and restored.conflict is None
    assert get_optimizer_cls_and_kwargs(TrainingArguments("x", report_to=[], use_cpu=True))[0] is torch.optim.AdamW


def test_replacing_a_builtin_by_decorator_names_the_calling_module():
    with pytest.warns(BuiltinReplacedWarning, match=rf"'sgd' is built in and was replaced by '{__name__}'"):

        @register_optimizer("sgd", replace=True)
        class MySGD(torch.optim.SGD):
            pass

    try:
        assert optimizers.get("sgd").target is MySGD
    finally:
        unregister_optimizer("sgd")
    assert optimizers.get("sgd").target == "torch.optim:SGD"


def test_registering_a_new_name_is_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_optimizer("t_quiet_sgd", torch.optim.SGD)
    try:
        info = {i.name: i for i in list_optimizers()}["t_quiet_sgd"]
        assert info.source == "register_optimizer" and info.conflict is None
    finally:
        unregister_optimizer("t_quiet_sgd")


# -- a plugin entry point that shadows a built-in ---------------------------------------------------------


@pytest.fixture
def shadowing_dist(tmp_path, monkeypatch):
    """A distribution on sys.path (a *.dist-info directory) whose entry points offer 'sgd' and a new name."""
    (tmp_path / "t_shadow_mod.py").write_text(textwrap.dedent("""
        import torch

        class Opt(torch.optim.Adam):
            '''The plugin's optimizer.'''
    """))
    info = tmp_path / "t_shadow_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: t-shadow-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[optim_registry.optimizers]\nsgd = t_shadow_mod:Opt\nt_shadow_new = t_shadow_mod:Opt\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("OPTIM_REGISTRY_ALLOW_OVERRIDE", raising=False)
    monkeypatch.delenv("OPTIM_REGISTRY_DISABLE_PLUGINS", raising=False)
    optimizers.rediscover()
    yield "t-shadow-dist"
    monkeypatch.undo()
    sys.modules.pop("t_shadow_mod", None)
    optimizers.rediscover()


def test_plugin_shadowing_a_builtin_leaves_the_builtin_usable(shadowing_dist, tiny_model):
    from optim_registry import TrainingArguments, create_optimizer, get_optimizer_cls_and_kwargs

    assert optimizers.provenance("sgd") == [("builtin", None, True), (shadowing_dist, "t_shadow_mod:Opt", True)]
    with pytest.warns(PluginShadowWarning, match=r"'t-shadow-dist' offers optim 'sgd', which is built in"):
        a = TrainingArguments("x", optim="sgd", report_to=[], use_cpu=True)
    assert get_optimizer_cls_and_kwargs(a)[0] is torch.optim.SGD
    assert type(create_optimizer(a, tiny_model)) is torch.optim.SGD
    assert "t_shadow_mod" not in sys.modules  # the refused plugin's code is never imported
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default filter: said once, not at every resolve
        optimizers.get("sgd")
        optimizers.get("sgd")
    assert len([w for w in caught if w.category is PluginShadowWarning]) == 1
    info = {i.name: i for i in list_optimizers()}
    assert info["sgd"].source == "builtin" and info["sgd"].providers == ["builtin", shadowing_dist]
    assert "t-shadow-dist offers this built-in name: ignored" in info["sgd"].conflict
    # the distribution's other name works as usual
    b = TrainingArguments("x", optim="t_shadow_new", report_to=[], use_cpu=True)
    assert get_optimizer_cls_and_kwargs(b)[0].__name__ == "Opt" and info["t_shadow_new"].conflict is None


def test_plugin_shadowing_a_builtin_is_used_when_allowed_by_name(shadowing_dist, monkeypatch):
    monkeypatch.setenv("OPTIM_REGISTRY_ALLOW_OVERRIDE", "sgd")
    assert optimizers.get("sgd").target.__name__ == "Opt"
    info = {i.name: i for i in list_optimizers()}["sgd"]
    assert info.source == shadowing_dist and "replaced by plugin t-shadow-dist" in info.conflict


def test_cli_list_shows_the_shadowing_conflict(shadowing_dist, capsys):
    from optim_registry.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "conflict: sgd: plugin t-shadow-dist offers this built-in name: ignored" in out


# -- the library's own classes for the bitsandbytes and torchao names ------------------------------------

_BNB = ["adamw_8bit", "adamw_bnb_8bit", "ademamix", "ademamix_8bit", "lion_32bit", "lion_8bit", "paged_adamw_32bit",
        "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
        "rmsprop_bnb", "rmsprop_bnb_32bit", "rmsprop_bnb_8bit"]
_AO = ["adamw_torch_4bit", "adamw_torch_8bit"]


@pytest.mark.parametrize("name", _BNB + _AO)
def test_class_is_the_one_transformers_returns(name, tiny_model):
    import transformers

    from optim_registry import get_optimizer_cls_and_kwargs

    stock = transformers.TrainingArguments("x", optim=name, report_to=[], use_cpu=True)
    expected = transformers.Trainer.get_optimizer_cls_and_kwargs(stock, tiny_model)[0]
    assert get_optimizer_cls_and_kwargs(_args(name), tiny_model)[0] is expected
    assert expected.__module__.split(".")[0] in ("bitsandbytes", "torchao")


def test_torchao_fp8_class_is_torchaos_own():
    import torchao.optim

    from optim_registry import get_optimizer_cls_and_kwargs

    assert get_optimizer_cls_and_kwargs(_args("ao_adamw_fp8"))[0] is torchao.optim.AdamWFp8


def test_bnb_fix_travels_as_a_hook_on_the_librarys_class(tiny_model):
    """Whole-model and layer-wise: bitsandbytes' own AdamW, each optimizer with its own override manager."""
    import bitsandbytes

    from optim_registry import create_optimizer

    shared = bitsandbytes.optim.GlobalOptimManager.get_instance()
    opt = create_optimizer(_args("adamw_8bit", optim_args="min_8bit_size=64"), tiny_model)
    assert type(opt) is bitsandbytes.optim.AdamW and opt.mng is shared  # until the first step, as bitsandbytes
    assert any(m is tiny_model.model.embed_tokens for m, _, _ in shared.module_weight_config_triple)
    for p in tiny_model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt.mng is not shared and [m for m, _, _ in opt.mng.module_weight_config_triple] == [
        tiny_model.model.embed_tokens
    ]
    assert all(m is not tiny_model.model.embed_tokens for m, _, _ in shared.module_weight_config_triple)
    assert opt.state[tiny_model.model.embed_tokens.weight]["state1"].dtype == torch.float32
    assert opt.state[tiny_model.lm_head.weight]["state1"].dtype == torch.uint8
    # finalize twice (a Trainer subclass calling create_optimizer again) installs the hook once
    from optim_registry.build import finalize

    hooks = len(opt._optimizer_step_pre_hooks)
    finalize(opt, optimizers.get("adamw_8bit"), tiny_model)
    assert len(opt._optimizer_step_pre_hooks) == hooks


def test_bnb_layerwise_inner_optimizers_are_the_librarys_with_the_hook():
    import bitsandbytes

    from optim_registry import create_optimizer

    model = make_tiny()
    opt = create_optimizer(_args("adamw_8bit_layerwise", optim_args="min_8bit_size=64", max_grad_norm=0.0), model)
    try:
        inner = list(opt.inner_optimizers.values())
        assert inner and all(type(o) is bitsandbytes.optim.AdamW and o._optimizer_step_pre_hooks for o in inner)
    finally:
        opt.remove_hooks()


def test_torchao_fix_travels_as_hooks_on_the_librarys_class():
    """torchao's own AdamW8bit: float rates before, during (seen by the scheduler) and after steps; plain state."""
    import torchao.optim

    from optim_registry import create_optimizer

    model = make_tiny(vocab_size=256)
    for name, p in model.named_parameters():  # one parameter shape: one torch.compile of torchao's step
        p.requires_grad_(name in ("lm_head.weight", "model.embed_tokens.weight"))
    opt = create_optimizer(_args("adamw_torch_8bit", learning_rate=0.01), model)
    assert type(opt) is torchao.optim.AdamW8bit
    assert [g["lr"] for g in opt.param_groups] == [0.01]  # exactly the float given, not 0.009999999776
    for p in model.parameters():
        p.grad = torch.ones_like(p) if p.requires_grad else None
    opt.step()
    for g in opt.param_groups:
        g["lr"] = 0.005  # assignment, as schedulers and the layer-wise engine do; torchao alone refuses it
    opt.step()
    assert all(type(g["lr"]) is float and g["lr"] == 0.005 for g in opt.param_groups)
    saved = opt.state_dict()
    packed = saved["state"][next(iter(saved["state"]))]
    assert any(isinstance(v, dict) and "torchao_quantized" in v for v in packed.values())
    assert type(opt.state[model.lm_head.weight]["exp_avg"]).__name__ == "OptimState8bit"  # live state untouched
    fresh = create_optimizer(_args("adamw_torch_8bit", learning_rate=0.01), model)
    fresh.load_state_dict(saved)
    assert type(fresh.state[model.lm_head.weight]["exp_avg"]).__name__ == "OptimState8bit"


def test_torchao_step_that_raises_leaves_float_rates():
    from optim_registry import create_optimizer

    model = make_tiny()
    opt = create_optimizer(_args("adamw_torch_4bit", learning_rate=0.01), model)

    def closure():
        raise RuntimeError("boom inside the step")

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(closure)
    opt.step()  # the next step puts the rates back before it runs
    assert all(type(g["lr"]) is float and g["lr"] == 0.01 for g in opt.param_groups)
