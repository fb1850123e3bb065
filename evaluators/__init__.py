"""The pure badge engine: per-user state, rule kinds, custom evaluators and safe expressions.

The engine's hot modules (:data:`COMPILED_MODULES`) may also exist compiled with mypyc, in
``build/mypyc/evaluators`` (``make venv`` builds them with ``deploy/compile_engine.py``). They are
imported instead of the ``.py`` files only when they were compiled from exactly the sources present
(:func:`source_digest`) and ``BADGESTREAM_PURE_PYTHON`` is not ``1``; otherwise — never built, an
edited source, a build for another Python — the same modules run as pure Python, the reference the
compiled ones are tested against. :data:`COMPILED` says which is in use (docs/development.md).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

COMPILED_MODULES = ("state", "facts", "compiled", "expressions", "streaks", "rules", "engine", "resends", "runner")
"""The modules compiled with mypyc: what every event runs through (custom evaluators, explanations
and the registry stay Python)."""
GROUP = "evaluators._engine"
"""mypyc's name for the compiled modules' shared library (``evaluators/_engine__mypyc.*.so``)."""
STAMP = "SOURCES"
"""The file in :data:`COMPILED_DIR` whose first line is the :func:`source_digest` compiled."""

_ROOT = Path(__file__).resolve().parents[1]
COMPILED_DIR = _ROOT / "build" / "mypyc" / "evaluators"


def source_digest() -> str:
    """SHA-256 over the sources compiled code was type-checked against: every module of ``evaluators``
    and ``schemas``. Compiled code built from other sources is never used."""
    digest = hashlib.sha256()
    for package in ("evaluators", "schemas"):
        for path in sorted((_ROOT / package).rglob("*.py")):
            digest.update(path.relative_to(_ROOT).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _use_compiled() -> bool:
    if os.environ.get("BADGESTREAM_PURE_PYTHON") == "1":
        return False
    try:
        recorded = (COMPILED_DIR / STAMP).read_text().split("\n", 1)[0]
    except OSError:
        return False
    if recorded != source_digest():
        return False
    __path__.insert(0, str(COMPILED_DIR))
    try:
        importlib.import_module(f"{GROUP}__mypyc")
    except ImportError:  # built for another Python or platform: run the sources
        __path__.remove(str(COMPILED_DIR))
        return False
    return True


COMPILED = _use_compiled()
"""True when the modules of :data:`COMPILED_MODULES` are the mypyc-compiled ones."""
