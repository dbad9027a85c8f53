"""Parameters are selected once, as data (issue 22): ``optim_registry.labels`` labels every parameter, every
consumer reads the labels, and no other module matches parameter names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import optim_registry
from optim_registry.labels import label_parameters

PACKAGE = Path(optim_registry.__file__).parent

# -- no other module matches parameter names ------------------------------------------------------------------

#: Modules whose string matching is about other text; none of them walks a model's parameters.
TEXT_MODULES = {
    "families/pytorch_optimizer/records.py": "papers and group keys read out of pytorch_optimizer's docstrings and source",
    "checkpoints.py": "checkpoint file and directory names, group setting keys",
    "docgen.py": "documentation text",
    "registry.py": "registered names and calling module names",
    "signature.py": "docstrings, type annotations and option names of constructors (a plugin's inferred ranges)",
}
#: Modules (besides labels.py) that walk a model's parameters or modules, and why that selects nothing by name.
WALKERS = {
    "families/bitsandbytes/builders.py": "bitsandbytes' 32-bit override registered per nn.Embedding module (by type)",
    "families/lomo/optimizers.py": "LOMO keys its own state by parameter name, for every trainable parameter",
    "engines/fsdp2.py": "FSDP2's DTensor parameters, by type",
    "testing.py": "the harness compares every parameter before and after training",
}
#: Findings in a walking module that are about other text, exactly.
WALKER_TEXT = {"engines/fsdp2.py": {"name.startswith('_')"}}

_MATCHERS = {"search", "match", "fullmatch"}
_NAMEISH = re.compile(r"\b(n|parts?)\b|name")
_WALKS = {"named_parameters", "named_modules", "modules"}


def name_matching(tree: ast.AST) -> list[str]:
    """Each expression that matches a string by pattern: regex ``search`` / ``match`` / ``fullmatch``, a name's
    ``startswith`` / ``endswith``, ``"literal" in name``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = ast.unparse(node.func.value)
            if node.func.attr in _MATCHERS or (
                node.func.attr in ("startswith", "endswith") and _NAMEISH.search(receiver)
            ):
                found.append(ast.unparse(node.func) + "(...)" if node.func.attr in _MATCHERS else ast.unparse(node))
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            for op, right in zip(node.ops, node.comparators, strict=True):
                if isinstance(op, (ast.In, ast.NotIn)) and (
                    isinstance(right, ast.JoinedStr) or _NAMEISH.search(ast.unparse(right))
                ):
                    found.append(ast.unparse(node))
    return found


def walks(tree: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _WALKS
               for n in ast.walk(tree))


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel != "labels.py":
            yield rel, ast.parse(path.read_text(), str(path))


def test_no_other_module_matches_parameter_names():
    problems = []
    for rel, tree in _modules():
        found = name_matching(tree)
        if walks(tree):
            if rel not in WALKERS:
                problems.append(f"{rel} walks the model's parameters: read labels.label_parameters instead")
            extra = set(found) - WALKER_TEXT.get(rel, set())
            if extra:
                problems.append(f"{rel} walks parameters and matches names: {sorted(extra)}")
        elif found and rel not in TEXT_MODULES:
            problems.append(f"{rel} matches strings by pattern ({found[:3]}): parameter names are labels.py's")
    assert not problems, "\n".join(problems)
    # the lists stay true: each entry is still needed
    for rel, tree in _modules():
        if rel in TEXT_MODULES:
            assert name_matching(tree) and not walks(tree), rel
        if rel in WALKERS:
            assert walks(tree), rel


def test_the_scan_sees_name_matching():
    source = (
        "def f(model, p, group):\n"
        "    for n, q in model.named_parameters():\n"
        "        a = 'embed' in n\n"
        "        b = re.search(p, n)\n"
        "        c = n.rpartition('.')[2].endswith('bias')\n"
        "        d = '.experts.' in f'.{n}'\n"
        "        e = 'lr' in group\n"
    )
    tree = ast.parse(source)
    assert walks(tree)
    assert name_matching(tree) == ["'embed' in n", "re.search(...)", "n.rpartition('.')[2].endswith('bias')",
                                   "'.experts.' in f'.{n}'"]


# -- the labels ---------------------------------------------------------------------------------------------------


def test_labels_of_a_llama(tiny_model):
    from transformers import Trainer

    table = label_parameters(tiny_model, target_patterns=["self_attn"], subject="test")
    kinds = {r.name: r.kind for r in table}
    assert kinds["model.embed_tokens.weight"] == "embedding"
    assert kinds["lm_head.weight"] == "head"
    assert kinds["model.norm.weight"] == "norm" and kinds["model.layers.0.input_layernorm.weight"] == "norm"
    assert kinds["model.layers.0.self_attn.q_proj.weight"] == "matrix"
    assert set(table.names(decay=True)) == set(Trainer.get_decay_parameter_names(None, tiny_model))
    assert set(table.names(target=True)) == {n for n in kinds if ".self_attn." in n}
    assert len(table) == len(list(tiny_model.parameters()))


def test_a_tied_head_is_one_tensor_with_two_names():
    from optim_registry.testing import tiny_model

    model = tiny_model()
    model.lm_head.weight = model.model.embed_tokens.weight
    row = label_parameters(model)["model.embed_tokens.weight"]
    assert row.aliases == ("model.embed_tokens.weight", "lm_head.weight")
    assert row.embedding and row.head and row.kind == "embedding"


def test_lora_labels_and_rules_coverage():
    from peft import LoraConfig, get_peft_model

    from optim_registry.group_rules import parse_rules
    from optim_registry.testing import tiny_model

    model = get_peft_model(tiny_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    table = label_parameters(model, rules=parse_rules([{"params": "lora_B", "lr_scale": 2}]))
    assert {r.lora for r in table} == {"lora_A", "lora_B"}  # only the adapters are trainable
    assert {r.name for r in table if 0 in r.rules} == {r.name for r in table if r.lora == "lora_B"}
    rules = parse_rules([{"params": "lora_A", "lr": 1}, {"params": "@norms", "lr": 0.1}])
    with pytest.raises(ValueError, match="rule 1.*@norms.*matches no trainable parameter"):
        label_parameters(model, rules=rules)


def test_the_checkpoint_accepts_a_tied_tensor_under_any_of_its_names(tmp_path):
    from optim_registry.checkpoints import check_layout

    record = {"groups": [{"count": 2, "params": ["lm_head.weight", "model.norm.weight"], "settings": {"lr": 1}}]}
    live = [[("model.embed_tokens.weight", "lm_head.weight"), ("model.norm.weight",)]]
    check_layout(record, live, [{"lr": 1}], str(tmp_path))  # a manifest that named the tied tensor by its last name
    live = [[("model.layers.0.mlp.up_proj.weight",), ("model.norm.weight",)]]
    with pytest.raises(ValueError, match="param group 0 holds other parameters"):
        check_layout(record, live, [{"lr": 1}], str(tmp_path))


def test_consumers_share_the_labels(tiny_model):
    """The decay split, Muon's routing and split_muon_params agree, because all read the same table."""
    from optim_registry import create_optimizer
    from optim_registry.families.beyond.muon import split_muon_params
    from optim_registry.testing import arguments

    opt = create_optimizer(arguments("muon", weight_decay=0.1), tiny_model)
    on_muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    hidden, _ = split_muon_params(tiny_model)
    assert on_muon == {id(p) for _, p in hidden}
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    table = label_parameters(tiny_model)
    assert decayed == {id(table.param(n)) for n in table.names(decay=True)}
    assert isinstance(table.param("lm_head.weight"), torch.nn.Parameter)
