"""Custom evaluator registration: decorators only mark; one explicit step checks names and signatures."""

from __future__ import annotations

import types
from importlib.metadata import EntryPoint

import pytest

from evaluators import custom
from evaluators.base import EVALUATOR_MARK, Decision, EvaluatorView, evaluator
from evaluators.registry import EvaluatorRegistry
from schemas.errors import CatalogError


@evaluator("one")
def one(view: EvaluatorView) -> Decision:
    return Decision()


def test_decorator_only_marks() -> None:
    assert getattr(one, EVALUATOR_MARK) == "one"
    assert "one" not in EvaluatorRegistry()


def test_register_function_and_module() -> None:
    registry = EvaluatorRegistry()
    assert registry.register(one) == ["one"]
    assert registry.register(custom) == ["comeback"]
    assert registry.names() == ["comeback", "one"] and registry["one"] is one
    registry.register(one)  # the same function again is not a conflict


def test_conflicts_and_bad_signatures_name_the_evaluator() -> None:
    registry = EvaluatorRegistry()
    registry.register(one)

    @evaluator("one")
    def impostor(view: EvaluatorView) -> Decision:
        return Decision()

    with pytest.raises(CatalogError, match=r"evaluator 'one' is registered twice: .*one and .*impostor"):
        registry.register(impostor)
    with pytest.raises(CatalogError, match=r"evaluator 'two' .* must take exactly one argument"):
        registry.register(lambda view, extra: Decision(), name="two")
    with pytest.raises(CatalogError, match=r"evaluator 'three' .* must take exactly one argument"):
        registry.register(lambda: Decision(), name="three")
    with pytest.raises(CatalogError, match="not marked with @evaluator"):
        registry.register(lambda view: Decision())
    with pytest.raises(CatalogError, match="invalid name"):
        registry.register(lambda view: Decision(), name="has space")
    with pytest.raises(CatalogError, match="marks no function"):
        registry.register(types.ModuleType("empty"))


def test_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("outside_evaluators")

    @evaluator("outside")
    def outside(view: EvaluatorView) -> Decision:
        return Decision()

    module.outside = outside  # type: ignore[attr-defined]
    import sys

    monkeypatch.setitem(sys.modules, "outside_evaluators", module)
    found = [EntryPoint("builtin", "evaluators.custom", "badgestream.evaluators"),
             EntryPoint("extra", "outside_evaluators", "badgestream.evaluators")]
    monkeypatch.setattr("evaluators.registry.entry_points", lambda group: found)
    assert EvaluatorRegistry.from_entry_points().names() == ["comeback", "outside"]

    broken = [EntryPoint("broken", "no_such_module_anywhere", "badgestream.evaluators")]
    monkeypatch.setattr("evaluators.registry.entry_points", lambda group: broken)
    with pytest.raises(CatalogError, match="entry point 'broken'"):
        EvaluatorRegistry.from_entry_points()


def test_builtins_count_even_without_installed_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("evaluators.registry.entry_points", lambda group: [])
    assert EvaluatorRegistry.from_entry_points().names() == ["comeback"]
    assert EvaluatorRegistry.from_entry_points("another.group").names() == []
