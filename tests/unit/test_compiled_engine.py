"""The engine runs compiled (mypyc, built by ``make venv``) where it was built, and as pure Python otherwise.

The whole suite runs with whichever the process loaded (compiled in CI: ``make test`` builds it);
:func:`test_the_unit_tests_pass_on_the_pure_python_engine` runs ``tests/unit`` once more on the
sources, so both are tested in every CI run (docs/development.md, "The compiled engine").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import evaluators
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
PURE = os.environ.get("BADGESTREAM_PURE_PYTHON") == "1"


def _needs_compiled() -> None:
    if not evaluators.COMPILED:
        pytest.skip("the engine is not compiled here (`make venv` builds it; BADGESTREAM_PURE_PYTHON=1 unset)")


def test_ci_runs_the_compiled_engine() -> None:
    """CI builds the compiled engine (``make test`` runs ``make venv``): the suite must have loaded it."""
    if PURE:
        assert not evaluators.COMPILED
        return
    if not IN_CI:
        _needs_compiled()
    assert evaluators.COMPILED, "build/mypyc holds no engine compiled from these sources: run `make venv`"
    for name in evaluators.COMPILED_MODULES:
        module = __import__(f"evaluators.{name}", fromlist=["_"])
        assert not module.__file__.endswith(".py"), f"evaluators.{name} was loaded from its source"


def test_the_unit_tests_pass_on_the_pure_python_engine() -> None:
    """``tests/unit`` again, in a process told to run the sources (``BADGESTREAM_PURE_PYTHON=1``)."""
    _needs_compiled()
    env = {**os.environ, "BADGESTREAM_PURE_PYTHON": "1"}
    loaded = subprocess.run(
        [sys.executable, "-c", "import evaluators.engine as e; print(e.__file__)"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert loaded.endswith("evaluators/engine.py")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/unit", "-q", "-p", "no:cacheprovider",
         f"--ignore={Path(__file__).relative_to(ROOT)}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def _copy_tree(target: Path) -> None:
    """The packages and the compiled engine, as they are here, under ``target``."""
    for package in ("evaluators", "schemas"):
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(evaluators.COMPILED_DIR.parent, target / "build" / "mypyc")


def _loaded(tree: Path) -> str:
    # The copy comes first on sys.path, before the editable install's finder.
    probe = "import evaluators, evaluators.rules as r; print(evaluators.COMPILED, r.__file__)"
    env = {key: value for key, value in os.environ.items() if key != "BADGESTREAM_PURE_PYTHON"}
    return subprocess.run([sys.executable, "-c", probe], cwd=tree, env={**env, "PYTHONPATH": str(tree)},
                          capture_output=True, text=True, check=True).stdout.strip()


def test_an_edited_source_runs_as_python_until_compiled_again(tmp_path: Path) -> None:
    _needs_compiled()
    _copy_tree(tmp_path)
    assert _loaded(tmp_path).startswith(f"True {tmp_path}/build/mypyc/evaluators/rules.")
    with (tmp_path / "evaluators" / "rules.py").open("a") as source:
        source.write("\n# edited\n")
    assert _loaded(tmp_path) == f"False {tmp_path}/evaluators/rules.py"


def test_a_compiled_engine_that_cannot_load_runs_as_python(tmp_path: Path) -> None:
    _needs_compiled()
    _copy_tree(tmp_path)
    (library,) = (tmp_path / "build" / "mypyc" / "evaluators").glob(f"{evaluators.GROUP.rsplit('.', 1)[1]}__mypyc.*")
    library.write_bytes(b"not a shared library")
    assert _loaded(tmp_path) == f"False {tmp_path}/evaluators/rules.py"
