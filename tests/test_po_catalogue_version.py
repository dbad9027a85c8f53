"""The shipped pytorch_optimizer catalogue against the installed library's version."""

from __future__ import annotations

import warnings

import pytest

from optim_registry.families.pytorch_optimizer import records as po
from optim_registry.families.pytorch_optimizer.catalog import CATALOG, LIBRARY_VERSION
from optim_registry.plan import parse_optim_args
from optim_registry.registry import optimizers


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not yet resolved a po_* name."""
    monkeypatch.setattr(po, "_LIVE", {})


def _stale_record(monkeypatch, name: str, missing: str):
    """``po_<name>`` as a catalogue of another version has it: without ``missing``, and with one option the
    installed class does not take."""
    entry = dict(CATALOG[name])
    gone = ("removed_upstream", "float", 1.0, "an option an older version had", None, False, False)
    entry["options"] = tuple(o for o in entry["options"] if o[0] != missing) + (gone,)
    monkeypatch.setitem(CATALOG, name, entry)
    return po.record(name, entry)


def test_the_catalogue_version_is_used_as_shipped(monkeypatch, fresh):
    monkeypatch.setattr(po, "installed_version", lambda: LIBRARY_VERSION)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert optimizers.get("po_adan") is optimizers.builtin()["po_adan"]


def test_another_version_reads_the_options_from_the_installed_class(monkeypatch, fresh):
    monkeypatch.setattr(po, "installed_version", lambda: "999.0")
    first = next(o[0] for o in CATALOG["adan"]["options"] if o[1] == "float")
    shipped = [o[0] for o in CATALOG["adan"]["options"]]
    stale = _stale_record(monkeypatch, "adan", first)
    with pytest.raises(ValueError, match="removed_upstream"):
        parse_optim_args(stale, f"{first}=0.5")  # the stale table refuses a key the class takes
    with pytest.warns(po.CatalogueVersionWarning, match="999.0 is installed.*generated from " + LIBRARY_VERSION):
        live = po.current(stale)
    assert first in live.option_map and "removed_upstream" not in live.option_map
    assert parse_optim_args(live, f"{first}=0.5")[first] == 0.5
    with pytest.raises(ValueError, match="removed_upstream"):
        parse_optim_args(live, "removed_upstream=2")
    # the same inferer as the generator: the installed class gives the shipped entry's options
    assert [o.name for o in live.options] == shipped


def test_another_version_warns_once_and_keeps_a_twins_own_options(monkeypatch, fresh):
    monkeypatch.setattr(po, "installed_version", lambda: "999.0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default filter: said once, whichever name asks
        live = optimizers.get("po_adabelief")
        twin = optimizers.get("po_adabelief_layerwise")
        assert optimizers.get("po_adabelief") is live  # derived once per name and version
    assert len([w for w in caught if w.category is po.CatalogueVersionWarning]) == 1
    assert live is not optimizers.builtin()["po_adabelief"]
    assert live.options == optimizers.builtin()["po_adabelief"].options
    assert {"clip_per_param", "clip"} <= set(twin.option_map)
    assert twin.options == optimizers.builtin()["po_adabelief_layerwise"].options
