"""Plugins by name: a real pip-installed distribution, conflicts, shadowing, kill switch, lazy loading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"


def _pip_install_into(target: Path, source: Path) -> None:
    """pip-install ``source`` (a project folder) into ``target``, a folder of its own, with this interpreter.

    No nested virtual environment: a venv made from inside a venv or a conda env sees the *base*
    interpreter's packages, not the running environment's torch and transformers. A ``--target`` folder on
    ``PYTHONPATH`` of a ``sys.executable`` subprocess sees both, in a venv, a conda env and the system Python.
    """
    try:
        import setuptools  # noqa: F401  (the plugins' build backend, built without isolation: no network)
    except ImportError:  # pragma: no cover - the dev extra installs it
        pytest.fail("the plugin tests build plugins with setuptools: pip install -e '.[dev]'")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, f"pip could not install {source.name}:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A folder of pip-installed plugin distributions, used by subprocesses of this very interpreter."""
    root = tmp_path_factory.mktemp("plugin_env")
    env = {"root": root, "installed": {}}
    install(env, "optim-registry-example-plugin", PLUGIN)
    return env


def install(env, dist: str, source: Path) -> None:
    target = env["root"] / "site" / dist
    _pip_install_into(target, source)
    env["installed"][dist] = target


def uninstall(env, dist: str) -> None:
    # pip refuses to uninstall outside its environment; each distribution has a folder of its own instead.
    shutil.rmtree(env["installed"].pop(dist))


def _environ(env, extra_env: dict[str, str]) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPTIM_REGISTRY_")}
    environ.update(extra_env)
    # This checkout first (whether or not it is installed), then every installed plugin distribution.
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *map(str, env["installed"].values())])
    return environ


def run_py(env, code: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=_environ(env, extra_env), cwd=str(env["root"]))


def run_py_at_once(env, code: str, *extra_envs: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """``run_py`` once per environment, the processes side by side (each is a fresh interpreter of its own)."""
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_environ(env, extra), cwd=str(env["root"]))
             for extra in extra_envs]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def make_dist(env, dist: str, entry: str, module_code: str, group: str = "optim_registry.optimizers") -> None:
    """Write and pip-install a one-module plugin distribution offering `entry`."""
    src = env["root"] / "src" / dist
    pkg = src / dist.replace("-", "_")
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(module_code))
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "0.1.0"
        [project.entry-points."{group}"]
        {entry} = "{dist.replace('-', '_')}:Opt"
        [tool.setuptools]
        packages = ["{dist.replace('-', '_')}"]
    """))
    install(env, dist, src)


def test_installed_plugin_is_listed_with_its_distribution_without_importing_it(env):
    out = ok(run_py(env, """
        import json, sys
        from optim_registry import list_optimizers, list_schedulers
        infos = {i.name: i for i in list_optimizers()}
        scheds = {s["name"]: s for s in list_schedulers()}
        print(json.dumps({
            "source": infos["example_signsgd"].source,
            "importable": infos["example_signsgd"].importable,
            "sched": scheds["example_halving"]["source"],
            "loaded": "optim_registry_example_plugin" in sys.modules,
        }))
    """))
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"source": "optim-registry-example-plugin", "importable": True,
                   "sched": "optim-registry-example-plugin", "loaded": False}


def test_plugin_trains_by_name_and_passes_conformance(env):
    out = ok(run_py(env, """
        import json
        from optim_registry.testing import check_optimizer
        r = check_optimizer("example_signsgd", "momentum=0.9,nesterov=true", lr_scheduler_type="example_halving",
                            lr_scheduler_kwargs={"every": "1"})
        t = check_optimizer("example_signsgd_targets", "other_scale=0.5")
        print(json.dumps({"ok": r.ok, "failures": r.failures, "t_ok": t.ok, "t_fail": t.failures}))
    """))
    got = json.loads(out.strip().splitlines()[-1])
    assert got["ok"], got["failures"]
    assert got["t_ok"], got["t_fail"]


def test_plugin_options_are_typed_from_the_signature(env):
    proc = run_py(env, """
        from optim_registry import TrainingArguments, get_optimizer_cls_and_kwargs
        a = TrainingArguments("x", optim="example_signsgd", optim_args="momentum=0.5,nesterov=yes",
                              report_to=[], use_cpu=True, learning_rate=0.1)
        cls, kw = get_optimizer_cls_and_kwargs(a)
        print(cls.__name__, sorted(kw.items()))
        TrainingArguments("x", optim="example_signsgd", optim_args="momentun=0.5", report_to=[], use_cpu=True)
    """)
    assert "SignSGD [('lr', 0.1), ('momentum', 0.5), ('nesterov', True)]" in proc.stdout
    assert proc.returncode != 0
    assert "optim_args key 'momentun' is not accepted by optim='example_signsgd'. Did you mean 'momentum'?" in proc.stderr
    assert "Accepted keys (closest first): momentum" in proc.stderr


def test_duplicate_name_from_two_distributions_names_both(env):
    make_dist(env, "dup-plugin-one", "dup_opt", "from torch.optim import SGD as Opt\n")
    make_dist(env, "dup-plugin-two", "dup_opt", "from torch.optim import Adam as Opt\n")
    try:
        proc = run_py(env, """
            from optim_registry import TrainingArguments
            TrainingArguments("x", optim="dup_opt", report_to=[], use_cpu=True)
        """)
        assert proc.returncode != 0
        assert "provided by more than one plugin" in proc.stderr
        assert "dup-plugin-one" in proc.stderr and "dup-plugin-two" in proc.stderr
    finally:
        uninstall(env, "dup-plugin-one")
        uninstall(env, "dup-plugin-two")


def test_plugin_cannot_shadow_a_builtin_by_accident(env):
    make_dist(env, "shadow-plugin", "sgd", "from torch.optim import Adam as Opt\n")
    try:
        code = """
            from optim_registry import TrainingArguments, get_optimizer_cls_and_kwargs
            a = TrainingArguments("x", optim="sgd", report_to=[], use_cpu=True)
            print(get_optimizer_cls_and_kwargs(a)[0].__name__)
        """
        # The built-in keeps working; the plugin's entry is refused, with a warning naming it.
        refused, allowed, killed = run_py_at_once(env, code, {}, {"OPTIM_REGISTRY_ALLOW_OVERRIDE": "sgd"},
                                                  {"OPTIM_REGISTRY_DISABLE_PLUGINS": "1"})
        assert ok(refused).strip().endswith("SGD")
        assert "shadow-plugin" in refused.stderr and "refusing to replace it silently" in refused.stderr
        assert ok(allowed).strip().endswith("Adam")
        assert ok(killed).strip().endswith("SGD")
    finally:
        uninstall(env, "shadow-plugin")


def test_plugin_that_fails_to_import_names_plugin_and_distribution(env):
    make_dist(env, "broken-plugin", "broken_opt", "raise RuntimeError('boom at import')\n")
    try:
        proc = run_py(env, """
            from optim_registry import TrainingArguments
            TrainingArguments("x", optim="broken_opt", report_to=[], use_cpu=True)
        """)
        assert proc.returncode != 0
        assert "plugin 'broken_opt' from distribution 'broken-plugin'" in proc.stderr
        assert "boom at import" in proc.stderr
    finally:
        uninstall(env, "broken-plugin")


def test_kill_switch_hides_plugins(env):
    out = ok(run_py(env, """
        from optim_registry import list_optimizers
        print("example_signsgd" in {i.name for i in list_optimizers()})
    """, OPTIM_REGISTRY_DISABLE_PLUGINS="1"))
    assert out.strip() == "False"


def test_register_optimizer_call_and_decorator(tiny_model):
    import torch

    from optim_registry import (
        TrainingArguments,
        create_optimizer,
        register_optimizer,
        register_scheduler,
        unregister_optimizer,
    )
    from optim_registry.registry import PluginError
    from optim_registry.schedulers import schedulers

    @register_optimizer("t_decorated_sgd", description="SGD registered by decorator")
    class DecoratedSGD(torch.optim.SGD):
        pass

    register_optimizer("t_called_adam", torch.optim.Adam)

    @register_scheduler("t_const_sched")
    def const(optimizer, num_warmup_steps, num_training_steps, factor: float = 1.0):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: factor)

    try:
        a = TrainingArguments("x", optim="t_decorated_sgd", optim_args="momentum=0.9", report_to=[], use_cpu=True,
                              lr_scheduler_type="t_const_sched", lr_scheduler_kwargs={"factor": "0.5"})
        opt = create_optimizer(a, tiny_model)
        assert type(opt) is DecoratedSGD and opt.param_groups[0]["momentum"] == 0.9
        a2 = TrainingArguments("x", optim="t_called_adam", optim_args="amsgrad=true", report_to=[], use_cpu=True)
        assert create_optimizer(a2, tiny_model).param_groups[0]["amsgrad"] is True
        with pytest.raises(PluginError, match="'sgd' is built in"):
            register_optimizer("sgd", torch.optim.Adam)
    finally:
        unregister_optimizer("t_decorated_sgd")
        unregister_optimizer("t_called_adam")
        schedulers.unregister("t_const_sched")
