"""The registry of custom evaluators: one explicit step that checks names and signatures (pluggy-style).

Decorators only mark functions (:func:`evaluators.base.evaluator`); :meth:`EvaluatorRegistry.register`
takes a function or a whole module, checks that every name is unique and every signature fits, and
raises :class:`CatalogError` naming the offending evaluator. Other packages add evaluators through
the ``badgestream.evaluators`` entry-point group.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from evaluators.base import EVALUATOR_MARK, CustomEvaluator
from schemas.errors import CatalogError

ENTRY_POINT_GROUP = "badgestream.evaluators"
BUILTIN_MODULE = "evaluators.custom"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")


def _where(func: Any) -> str:
    module = getattr(func, "__module__", None) or "?"
    return f"{module}.{getattr(func, '__qualname__', repr(func))}"


class EvaluatorRegistry:
    """Custom evaluators by name. Build one per engine (tests build a fresh one each time)."""

    def __init__(self) -> None:
        self._evaluators: dict[str, CustomEvaluator] = {}

    # --- building ------------------------------------------------------------------------------

    def register(self, target: CustomEvaluator | ModuleType, name: str | None = None) -> list[str]:
        """Register a marked function, a function under ``name``, or every marked function of a module.

        Returns the names registered. Raises :class:`CatalogError` naming the evaluator when a name
        is taken or invalid, a signature does not take exactly one view argument, or a module marks nothing.
        """
        if isinstance(target, ModuleType):
            if name is not None:
                raise CatalogError(f"evaluator module {target.__name__}: a name is given per function, not per module")
            found = [(getattr(obj, EVALUATOR_MARK), obj) for obj in vars(target).values()
                     if callable(obj) and isinstance(getattr(obj, EVALUATOR_MARK, None), str)]
            if not found:
                raise CatalogError(f"evaluator module {target.__name__} marks no function with @evaluator")
            return [self._add(mark, func) for mark, func in sorted(found, key=lambda item: item[0])]
        mark = name if name is not None else getattr(target, EVALUATOR_MARK, None)
        if not isinstance(mark, str):
            raise CatalogError(f"evaluator {_where(target)} is not marked with @evaluator and has no name")
        return [self._add(mark, target)]

    def _add(self, name: str, func: Any) -> str:
        if not _NAME.match(name):
            raise CatalogError(f"evaluator {name!r} ({_where(func)}): invalid name")
        if not callable(func):
            raise CatalogError(f"evaluator {name!r} ({_where(func)}): not callable")
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):
            raise CatalogError(f"evaluator {name!r} ({_where(func)}): its signature cannot be inspected") from None
        try:
            signature.bind(object())
        except TypeError:
            raise CatalogError(
                f"evaluator {name!r} ({_where(func)}): must take exactly one argument (the EvaluatorView), "
                f"its signature is {signature}"
            ) from None
        existing = self._evaluators.get(name)
        if existing is not None and existing is not func:
            raise CatalogError(f"evaluator {name!r} is registered twice: {_where(existing)} and {_where(func)}")
        self._evaluators[name] = func
        return name

    @classmethod
    def builtin(cls) -> EvaluatorRegistry:
        """The evaluators shipped with badgestream (``evaluators.custom``), without entry-point lookup."""
        registry = cls()
        registry.register(importlib.import_module(BUILTIN_MODULE))
        return registry

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP) -> EvaluatorRegistry:
        """Every evaluator that installed packages declare under ``group`` (entry points sorted by name).

        Each entry point names a module (all its marked functions) or one function.
        """
        registry = cls()
        found = sorted(entry_points(group=group), key=lambda e: (e.name, e.value))
        if group == ENTRY_POINT_GROUP and not any(entry.value == BUILTIN_MODULE for entry in found):
            # A checkout used without installing has no entry-point metadata; the builtins still belong.
            registry.register(importlib.import_module(BUILTIN_MODULE))
        for entry in found:
            try:
                target = entry.load()
            except Exception as exc:
                raise CatalogError(
                    f"evaluator entry point {entry.name!r} ({entry.value}) cannot be loaded: {exc}"
                ) from exc
            registry.register(target)
        return registry

    # --- reading -------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._evaluators

    def __getitem__(self, name: str) -> CustomEvaluator:
        return self._evaluators[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._evaluators))

    def __len__(self) -> int:
        return len(self._evaluators)

    def names(self) -> list[str]:
        return sorted(self._evaluators)
