"""common.registry: one behaviour for every family of interchangeable parts."""
from __future__ import annotations

import pytest

from common.errors import RegistryError, UserError
from common.registry import Registry
from coact.sparsify import SPARSIFIERS
from runtime.caches import CACHES
from runtime.engines import ENGINES
from runtime.pipelines import PIPELINES
from solvers import SOLVERS


def test_register_lookup_describe() -> None:
    reg: Registry = Registry("widget")

    @reg.register("a")
    def make_a(size: int = 1) -> int:
        """Makes an a."""
        return size

    reg.add("b", lambda: 2, "makes a b")
    assert reg.names() == ["a", "b"] and "a" in reg and len(reg) == 2
    assert reg.create("a", size=3) == 3
    assert reg.describe() == {"a": "Makes an a.", "b": "makes a b"}
    assert reg.help_text() == "a: Makes an a.; b: makes a b"


def test_duplicates_unknown_names_and_bad_parameters_are_user_errors() -> None:
    reg: Registry = Registry("widget")
    reg.add("a", lambda size=1: size)
    with pytest.raises(RegistryError, match="registered already"):
        reg.add("a", lambda: 0)
    with pytest.raises(RegistryError, match=r"unknown widget 'z'; available: a"):
        reg.get("z")
    with pytest.raises(RegistryError, match="bad parameters for widget 'a'"):
        reg.create("a", colour="red")
    assert issubclass(RegistryError, UserError)
    with pytest.raises(RegistryError):
        reg.add(" padded ", lambda: 0)


def test_lazy_modules_are_imported_on_first_lookup() -> None:
    reg: Registry = Registry("thing", modules=("json",))
    assert reg._loaded is False
    assert reg.names() == []
    assert reg._loaded is True


@pytest.mark.parametrize("registry", [SOLVERS, CACHES, ENGINES, PIPELINES, SPARSIFIERS],
                         ids=lambda r: r.kind)
def test_every_family_uses_the_one_helper(registry: Registry) -> None:
    assert isinstance(registry, Registry)
    names = registry.names()
    assert names, registry.kind
    first = names[0]
    with pytest.raises(RegistryError):
        registry.add(first, lambda: None)  # built-ins cannot be replaced silently
    assert all(registry.describe()[n] for n in names), f"every {registry.kind} has a description"
