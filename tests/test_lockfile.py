"""requirements/ci.lock pins the whole CI/demo environment, and agrees with pyproject's ranges (issue 12)."""
from __future__ import annotations

import importlib.metadata
import os
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"


def _requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def _lock() -> dict[str, Version]:
    pins = {}
    for req in _requirements(REQ / "ci.lock"):
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"ci.lock line {req} is not an exact pin"
        pins[canonicalize_name(req.name)] = Version(spec[0].version)
    return pins


def test_every_requested_package_is_pinned_and_inside_its_range():
    lock = _lock()
    requested = _requirements(REQ / "ci.in") + _requirements(REQ / "server.in")
    for req in requested:
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is requested by requirements/*.in but not pinned: run scripts/refresh_lock.sh"
        assert req.specifier.contains(lock[name], prereleases=True), f"ci.lock pins {name}=={lock[name]}, outside {req}"


def test_pyproject_dependencies_are_all_locked_within_their_ranges():
    """The lock is what CI proves: every runtime and dev dependency of the package must be in it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    lock = _lock()
    for line in project["dependencies"] + extras["dev"] + extras["eval"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in lock, f"pyproject asks for {line} but requirements/ci.lock does not pin it: add it to ci.in and refresh"
        assert req.specifier.contains(lock[name], prereleases=True), f"ci.lock pins {name}=={lock[name]}, outside pyproject's {line}"


@pytest.mark.skipif(os.environ.get("MPO_FAST_UNLOCKED", "0") != "0", reason="environment installed unlocked on purpose")
def test_the_test_environment_is_the_locked_one():
    """A drifted .venv (an install by hand, a skipped setup) is named here, before it fails elsewhere."""
    lock = _lock()
    drift = []
    for name in ("torch", "transformers", "trl", "peft", "kernels", "triton", "jsonschema", "numpy"):
        if name not in lock:
            continue
        try:
            have = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
        if have != lock[name]:
            drift.append(f"{name} {have} (lock: {lock[name]})")
    assert not drift, "the environment differs from requirements/ci.lock: " + ", ".join(drift) + "; rerun bash scripts/setup_env.sh"
