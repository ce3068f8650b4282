"""The registry: lookups, wildcards, duplicates, suggestions, provenance."""
import pytest

import sewforge
from sewforge.registry import Registry, natural_key


@pytest.fixture
def reg():
    r = Registry("widget")  # no entry-point group: nothing outside this test leaks in

    @r.register("resnet101", description="deep")
    def a():
        return "a"

    @r.register("resnet18")
    def b():
        """Shallow one.

        More text."""
        return "b"

    r.add("ViT", lambda: "c")
    return r


def test_lookup_is_case_insensitive_and_keeps_the_registered_spelling(reg):
    assert reg.get("RESNET18")() == "b"
    assert reg.entry("vit").name == "ViT"
    assert "Vit" in reg and "nothing" not in reg


def test_wildcards_and_natural_sort(reg):
    assert reg.names("resnet*") == ["resnet18", "resnet101"]
    assert reg.names() == ["resnet18", "resnet101", "ViT"]
    assert reg.names("*T") == ["ViT"]
    assert sorted(["a10", "a9", "a100"], key=natural_key) == ["a9", "a10", "a100"]


def test_duplicate_names_raise_naming_the_owner(reg):
    with pytest.raises(ValueError, match=r"widget 'ResNet18' is already registered \(by sewforge"):
        reg.add("ResNet18", object())


def test_unknown_names_suggest_close_matches_and_list_known(reg):
    with pytest.raises(KeyError) as exc:
        reg.get("resnet19")
    msg = str(exc.value)
    assert "unknown widget 'resnet19'" in msg and "did you mean 'resnet18'" in msg and "ViT" in msg


def test_invalid_names_are_rejected(reg):
    with pytest.raises(ValueError, match="widget name 'a b' is invalid"):
        reg.add("a b", object())


def test_entries_carry_description_and_provenance(reg):
    e = reg.entry("resnet18")
    assert e.description == "Shallow one." and e.package == "sewforge" and e.version
    assert reg.entry("resnet101").description == "deep"


def test_bare_decorator_registers_under_the_object_name(reg):
    @reg.register
    class Widget:
        pass

    assert isinstance(Widget, type) and reg.get("widget") is Widget


def test_unregister(reg):
    reg.unregister("vit")
    assert "ViT" not in reg


def test_core_registries_are_populated():
    assert {"IF", "LIF", "PLIF", "LTLIF", "ALIF", "CUBALIF", "ChannelLIF", "Izhikevich"} <= set(sewforge.list_neurons())
    assert sewforge.list_neurons("*IF") == ["ALIF", "ChannelLIF", "CUBALIF", "IF", "LIF", "LTLIF", "PLIF"]
    assert {"ATan", "Sigmoid", "Rectangular", "PiecewiseQuadratic", "Constant", "ATanA5"} <= set(
        sewforge.list_surrogates())
    assert sewforge.list_elementwise() == ["ADD", "AND", "IAND", "RIAND"]


def test_list_command_prints_entries(capsys):
    from sewforge.cli import main

    assert main(["list", "neurons", "*LIF"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["ALIF", "ChannelLIF", "CUBALIF", "LIF", "LTLIF", "PLIF"]
