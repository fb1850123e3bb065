"""Compile the engine's hot modules with mypyc into ``build/mypyc/`` (``make venv`` runs this).

The compiled modules are the same source files, compiled to C extensions; ``evaluators/__init__.py``
loads them instead of the ``.py`` files when they were built from exactly the sources present
(a digest of the sources, recorded next to them; the file names carry the Python version). Anything else —
never built, built from older sources, a failed build, ``BADGESTREAM_PURE_PYTHON=1`` — runs the
pure-Python modules, which stay the reference and are tested on their own (docs/development.md).

Run: ``python -m deploy.compile_engine [--force]``. Idempotent: does nothing when the recorded
digest matches. A failed build leaves no compiled modules and exits 0 with a message (the engine
works without them), except with ``CI`` set, where it fails: CI must test what it ships.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script too: the digest comes from the package being compiled

from evaluators import COMPILED_DIR, COMPILED_MODULES, GROUP, STAMP, source_digest  # noqa: E402


def build(force: bool = False) -> bool:
    """Compile into ``COMPILED_DIR``; True when compiled modules matching the sources are in place."""
    # The digest (what evaluators/__init__.py checks) and the compiler: a new mypy compiles again.
    from mypy.version import __version__ as mypy_version

    recorded = f"{source_digest()}\nmypy {mypy_version}\n"
    stamp = COMPILED_DIR / STAMP
    if not force and stamp.is_file() and stamp.read_text() == recorded:
        print(f"compile_engine: {len(COMPILED_MODULES)} engine modules already compiled (build/mypyc)")
        return True
    shutil.rmtree(COMPILED_DIR.parent, ignore_errors=True)  # no half-stale mixture survives a failed build
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="badgestream-mypyc-") as scratch:
        try:
            _compile(Path(scratch))
        except (Exception, SystemExit) as exc:  # setuptools reports a failed compiler run as SystemExit
            shutil.rmtree(COMPILED_DIR.parent, ignore_errors=True)
            print(f"compile_engine: mypyc build failed ({type(exc).__name__}: {exc}); "
                  "the engine runs as pure Python", file=sys.stderr)
            return False
    stamp.write_text(recorded)
    print(f"compile_engine: compiled {len(COMPILED_MODULES)} engine modules with mypyc "
          f"in {time.monotonic() - began:.0f} s (build/mypyc)")
    return True


def _compile(scratch: Path) -> None:
    # Imported here: only the build needs them, and mypy is a dev dependency.
    from mypyc.build import mypycify
    from setuptools import Distribution

    paths = [str(ROOT / "evaluators" / f"{name}.py") for name in COMPILED_MODULES]
    cwd = Path.cwd()
    os.chdir(ROOT)  # mypy resolves ``evaluators.*`` and ``schemas.*`` from the repository root
    try:
        extensions = mypycify(paths, opt_level="3", group_name=GROUP, target_dir=str(scratch / "c"))
        dist = Distribution({"name": "badgestream-engine", "ext_modules": extensions})
        dist.verbose = 0  # type: ignore[attr-defined]  # compiler lines only when it fails
        command = dist.get_command_obj("build_ext")
        command.build_lib = str(COMPILED_DIR.parent)  # type: ignore[attr-defined]
        command.build_temp = str(scratch / "obj")  # type: ignore[attr-defined]
        command.parallel = os.cpu_count() or 1  # type: ignore[attr-defined]
        dist.run_command("build_ext")
    finally:
        os.chdir(cwd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--force", action="store_true", help="compile even if the recorded digest matches")
    args = parser.parse_args(argv)
    built = build(force=args.force)
    return 0 if built or not os.environ.get("CI") else 1


if __name__ == "__main__":
    sys.exit(main())
