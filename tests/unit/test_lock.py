"""requirements.lock covers pyproject.toml: every declared dependency is pinned there, with hashes.

`make venv` installs only what the lock names (pip --require-hashes, then badgestream itself with
--no-deps), so a dependency added to pyproject.toml without `make lock` would be missing at run time.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in ("test", "dev"):
        lines += project["optional-dependencies"][extra]
    build = (REPO / "requirements-build.in").read_text().splitlines()
    lines += [line for line in build if line.strip() and not line.startswith("#")]
    return [Requirement(line) for line in lines]


def test_every_declared_dependency_is_pinned_in_the_lock_within_its_range() -> None:
    pins = _locked()
    problems = []
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement} is not in requirements.lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement}: the lock pins {pins[name]}")
    assert not problems, "run `make lock`: " + "; ".join(problems)


def test_every_pin_in_the_lock_carries_a_hash() -> None:
    text = (REPO / "requirements.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    unhashed = [entry.split()[0] for entry in entries if PIN.match(entry) and "--hash=sha256:" not in entry]
    assert not unhashed, f"pins without a hash (pip --require-hashes refuses them): {unhashed}"
