"""Unit tests for the pure modules: optim_args, param_groups, deps, registry (no training, milliseconds each)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from optim_registry import deps
from optim_registry.optim_args import check_range, closest, coerce, parse_options, split_pairs, to_mapping
from optim_registry.registry import DISABLE_ENV, BuiltinReplacedWarning, PluginError, Registry, check_new_name
from optim_registry.spec import NONNEG, UNIT, Option, Requirement

# -- optim_args ---------------------------------------------------------------------------------------


def test_split_pairs_keeps_bracketed_commas_and_tolerates_a_trailing_comma():
    assert split_pairs("a=1, b=(0.9,0.95),") == [("a", "1"), ("b", "(0.9,0.95)")]


def test_a_key_given_twice_is_refused_by_name():
    with pytest.raises(ValueError, match="'a'"):
        to_mapping("a=1,a=2")


@pytest.mark.parametrize(("token", "value"), [("true", True), ("yes", True), ("1", True), ("no", False), ("0", False)])
def test_bool_tokens(token, value):
    assert coerce(Option("flag", "bool", False), token) is value


def test_tuples_none_and_dtypes_are_typed():
    assert coerce(Option("betas", "floats", (0.9, 0.999)), "(0.8,0.9)") == (0.8, 0.9)
    assert coerce(Option("scale", "float", None), "none") is None
    assert str(coerce(Option("dtype", "dtype", None), "bf16")).endswith("bfloat16")


def test_a_wrong_type_names_the_key_and_the_token():
    with pytest.raises(ValueError, match=r"'flag'.*maybe"):
        coerce(Option("flag", "bool", False), "maybe")


def test_an_unknown_key_names_the_closest_and_the_accepted_ones():
    options = [Option("lr", "float", 1e-3), Option("eps", "float", 1e-8)]
    with pytest.raises(ValueError, match=r"Did you mean 'lr'\?.*Accepted keys \(closest first\): lr, eps"):
        parse_options("lrr=1", options, subject="optim='x'")
    assert parse_options("eps=1e-6", options, subject="optim='x'") == {"eps": 1e-6}


def test_ranges_name_the_key_the_value_and_the_range():
    with pytest.raises(ValueError, match=r"lr=-1.*key 'lr', valid range >= 0"):
        check_range(Option("lr", "float", **NONNEG), -1.0)
    with pytest.raises(ValueError, match="each number"):
        check_range(Option("betas", "floats", **UNIT), (0.9, 1.5))
    with pytest.raises(ValueError, match="not a finite number"):
        check_range(Option("eps", "float", 1e-8), float("nan"))


def test_closest_ignores_letter_case():
    assert closest("LR", ["eps", "lr"])[0] == "lr"
    assert closest("AdamW", ["adamw_torch", "sgd"]) == ["adamw_torch"]


# -- param_groups -------------------------------------------------------------------------------------


def _model_with_layer_norm():
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.ln = nn.LayerNorm(4)  # weights without "norm" in a pattern-matching place: excluded by type
            self.final_norm = nn.Linear(4, 4, bias=False)  # excluded by name only

    return nn.Sequential(nn.Embedding(8, 4), Block(), nn.Linear(4, 8))


def test_decay_names_equal_transformers_own_choice():
    """labels.decay_parameter_names is used where no Trainer exists: it must stay equal to the Trainer's."""
    from transformers import Trainer

    from optim_registry.labels import decay_parameter_names
    from optim_registry.testing import tiny_model

    for model in (_model_with_layer_norm(), tiny_model()):
        assert decay_parameter_names(model) == set(Trainer.get_decay_parameter_names(None, model))
    assert decay_parameter_names(_model_with_layer_norm()) == {"0.weight", "1.proj.weight", "2.weight"}


def test_build_groups_split_decay_and_targets():
    from optim_registry.labels import label_parameters
    from optim_registry.param_groups import build_groups

    model = _model_with_layer_norm()
    table = label_parameters(model, target_patterns=["1.proj"], subject="test")
    groups = build_groups(table, weight_decay=0.1, target_options={"rank": 2})
    by_name = {id(p): n for n, p in model.named_parameters()}
    layout = [(sorted(by_name[id(p)] for p in g["params"]), g["weight_decay"], g.get("rank")) for g in groups]
    assert layout == [
        (["0.weight", "2.weight"], 0.1, None),
        (["1.final_norm.weight", "1.ln.bias", "1.ln.weight", "1.proj.bias", "2.bias"], 0.0, None),
        (["1.proj.weight"], 0.1, 2),
    ]


def test_module_patterns_follow_transformers_rule():
    from optim_registry.labels import is_all_linear, module_matches

    assert module_matches(r".*attn.*", "model.layers.0.self_attn.q_proj")
    assert not module_matches(r"attn", "model.layers.0.self_attn.q_proj")  # a string is a full match
    assert module_matches(["attn"], "model.layers.0.self_attn.q_proj")  # a list matches substrings
    assert is_all_linear("all_linear") and is_all_linear("ALL-LINEAR") and not is_all_linear(["all-linear"])


# -- deps ---------------------------------------------------------------------------------------------


def test_importable_without_importing(monkeypatch):
    assert deps.importable("json") and not deps.importable("no_such_package_r3")
    monkeypatch.setitem(sys.modules, "blocked_r3", None)  # Python's way to block an import
    assert not deps.importable("blocked_r3")


def test_versions_gate_availability():
    assert deps._version_tuple("2.13.0+cpu") == (2, 13, 0)
    assert deps.is_available(Requirement("pytest", "pytest", "1.0"))
    assert not deps.is_available(Requirement("pytest", "pytest", "999.0"))


def test_the_missing_package_error_carries_the_pip_line_and_extra():
    req = Requirement("no-such-pkg-r3", "no_such_pkg_r3", "1.2", extra="r3")
    assert deps.missing((req,)) == [req]
    with pytest.raises(deps.MissingDependencyError) as info:
        deps.check("my_opt", (req,))
    assert isinstance(info.value, ImportError) and isinstance(info.value, ValueError)
    assert "optim='my_opt'" in str(info.value) and "pip install 'no-such-pkg-r3>=1.2'" in str(info.value)
    assert "optim-registry[r3]" in str(info.value)
    assert deps.missing_text("json_opt", (Requirement("pytest", "pytest"),)) is None


# -- registry -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rec:
    name: str
    value: int = 0


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")  # no entry points: only what the test puts there
    return Registry(kind="optimizer", group="r3.none", builtin_loader=lambda: [_Rec("alpha"), _Rec("beta")],
                    plugin_adapter=lambda name, obj, source: obj)


def test_registry_lists_and_finds_names(registry):
    assert registry.names() == ["alpha", "beta"] and "alpha" in registry and 3 not in registry
    assert registry.get("beta") == _Rec("beta")
    with pytest.raises(ValueError, match=r"Unknown optim 'alpah'\. Closest registered names: alpha"):
        registry.get("alpah")


def test_registry_refuses_a_silent_replacement_and_restores_the_builtin(registry):
    registry.register(_Rec("gamma", 1))
    assert registry.names() == ["alpha", "beta", "gamma"]
    with pytest.raises(PluginError, match="already registered"):
        registry.register(_Rec("gamma", 2))
    with pytest.raises(PluginError, match="built in; pass replace=True"):
        registry.register(_Rec("alpha", 1))
    with pytest.warns(BuiltinReplacedWarning):
        registry.register(_Rec("alpha", 2), replace=True)
    assert registry.get("alpha").value == 2 and registry.conflicts("alpha").startswith("built-in replaced")
    registry.unregister("alpha")
    assert registry.get("alpha").value == 0 and registry.conflicts("alpha") is None


@pytest.mark.parametrize("bad", ["", "a b", " a", "a,b", 3])
def test_unusable_names_are_refused(bad):
    with pytest.raises(ValueError, match="optimizer name"):
        check_new_name("optimizer", bad)
