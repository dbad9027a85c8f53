"""The package's shape: an import graph without cycles (type-only imports included), and listing names without
torch."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import optim_registry

PACKAGE = Path(optim_registry.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement: at top level, inside functions, and inside ``if TYPE_CHECKING:`` blocks (an import
    made only for type checking still ties the modules together: a cycle through one is a cycle to a reader and to
    a type checker)."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from . import deps`` counts as ``deps``, not the package)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                subs = [f"{source}.{alias.name}" for alias in node.names]
                targets = [s for s in subs if s in modules]
                if len(targets) < len(subs):  # some names are attributes of ``source`` itself
                    targets.append(source)
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``a -> b -> ... -> a``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_scan_sees_imports_inside_functions_relative_ones_and_type_only_ones():
    graph = import_graph()
    # relative imports at top level and inside functions
    assert "optim_registry.registry" in graph["optim_registry.build"]
    assert "optim_registry.deps" in graph["optim_registry.build"]
    assert "optim_registry.engines.layerwise.factory" in graph["optim_registry.build"]
    # an import made only for type checking (``if TYPE_CHECKING:``) counts
    assert "optim_registry.plan" in graph["optim_registry.context"]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .build import BuildContext\n"
    assert [n.module for n in _imports(ast.parse(source))] == ["typing", "build"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


_PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in ("torch", "transformers") if m in sys.modules)))
"""


def _loaded_after(body: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), "OPTIM_REGISTRY_DISABLE_PLUGINS": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE.format(body=body)], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_list_optimizers_imports_no_torch():
    loaded = _loaded_after("import optim_registry\nassert len(optim_registry.list_optimizers()) > 100")
    assert "torch" not in loaded


def test_cli_list_imports_no_torch():
    body = (
        "import contextlib, io\nfrom optim_registry import cli\nbuf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n    cli.main(['list'])\n"
        "assert 'adamw_torch' in buf.getvalue()"
    )
    assert "torch" not in _loaded_after(body)


def test_the_layerwise_engine_is_pure_torch():
    """``LayerwiseOptimizer`` imports nothing of the registry (its DDP hook aside); its factory and Trainer glue do."""
    graph = import_graph()
    assert graph["optim_registry.engines.layerwise.engine"] == {"optim_registry.engines.layerwise.ddp"}
    assert graph["optim_registry.engines.layerwise.ddp"] == set()
    assert "transformers" not in _loaded_after("from optim_registry.engines.layerwise.engine import LayerwiseOptimizer")


# -- each family in one place ----------------------------------------------------------------------------------------

FAMILIES_DIR = PACKAGE / "families"
#: A family module that imports another family's, and why (anything else stays inside its own folder).
CROSS_FAMILY = {
    ("optim_registry.families.flashoptim.records", "optim_registry.families.torch.records"):
        "FlashSGD takes torch SGD's momentum options, so it takes torch's nesterov check",
    ("optim_registry.families.low_rank.optimizers", "optim_registry.families.bitsandbytes.builders"):
        "GaLore's and Q-GaLore's 8-bit classes are bitsandbytes optimizers: its override handling applies to them",
}


def _dotted_paths(spec) -> dict[str, str]:
    """The record's fields that name code by dotted path (``"module:attr"``)."""
    fields = {key: getattr(spec, key) for key in ("target", "builder", "adapt", "adapt_model", "refresh")}
    return {key: value for key, value in fields.items() if isinstance(value, str)}


def test_every_family_is_one_folder_holding_its_records_and_the_code_they_name():
    from optim_registry.families import FAMILIES, family

    folders = sorted(p.name for p in FAMILIES_DIR.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(FAMILIES), "families/ holds exactly the folders FAMILIES lists"
    names = set()
    for name in FAMILIES:
        assert (FAMILIES_DIR / name / "records.py").is_file(), name
        found = family(name)
        assert found.records and found.title and found.about, name
        own = f"optim_registry.families.{name}."
        for spec in found.records:
            names.add(spec.name)
            assert spec.family == name, (spec.name, spec.family)
            for key, path in _dotted_paths(spec).items():
                if path.startswith("optim_registry"):
                    assert path.startswith(own), f"{spec.name}.{key} = {path!r} lies outside families/{name}/"
    from optim_registry.registry import optimizers

    twins = {s.name for s in optimizers.builtin().values() if s.layerwise and s.base in names}
    assert names | twins == set(optimizers.builtin()), "every built-in name comes from one family's records"


def test_family_knowledge_stays_in_the_families():
    """The core reads the family list (``optim_registry.families``) and never imports a family's own modules: what a
    family's code is, its records say by dotted path. Families import each other only where listed."""
    graph = import_graph()
    for module, edges in graph.items():
        into = {e for e in edges if e.startswith("optim_registry.families.")}
        if not module.startswith("optim_registry.families"):
            assert not into, f"{module} imports family modules {sorted(into)}"
            continue
        if module == "optim_registry.families":
            continue
        mine = module.split(".")[2]
        for edge in into:
            if edge.split(".")[2] != mine:
                assert (module, edge) in CROSS_FAMILY, f"{module} imports {edge}"
    assert all(b in graph[a] for a, b in CROSS_FAMILY), "each listed cross-family import is still needed"


def test_records_modules_import_no_torch():
    """What listing reads: every family's records (and the layer-wise twins), without torch or any optimizer."""
    from optim_registry.families import FAMILIES

    body = "\n".join(f"import optim_registry.families.{name}.records" for name in FAMILIES)
    body += "\nimport optim_registry.engines.layerwise.twins\nimport optim_registry.schedules.records"
    assert _loaded_after(body) == []
