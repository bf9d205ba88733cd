"""No folder or module at the repository root may shadow an installed distribution (issue 12).

`python -m pytest` and `python -m benchmarks.run` put the repository root first on sys.path. A
regular package there (a folder with __init__.py, or a .py file) named like an installed
distribution's import name wins over the installed one: our old `kernels/__init__.py` replaced
Hugging Face's `kernels`, and every transformers model import failed. A folder without
__init__.py is only a namespace portion, and Python prefers any regular package of that name.
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN_DISTRIBUTIONS = {"mpo-fast", "mpo_fast"}
# Folders of the checkout that are not source (environments, build output, caches).
NOT_SOURCE = {".venv", "build", "dist", "runs", ".git", ".mpo_cache", ".pytest_cache", ".hypothesis"}


def _root_import_names() -> dict[str, Path]:
    """Import name -> path for every top-level folder or .py file Python could import from the root."""
    names = {}
    for entry in ROOT.iterdir():
        if entry.name in NOT_SOURCE or entry.name.startswith(".") or entry.name.endswith(".egg-info"):
            continue
        if entry.is_dir() and entry.name.isidentifier():
            names[entry.name] = entry
        elif entry.suffix == ".py" and entry.stem.isidentifier():
            names[entry.stem] = entry
    return names


def _foreign_import_names() -> dict[str, list[str]]:
    """Top-level import name -> installed distributions (other than mpo_fast) that provide it."""
    out = {}
    for name, dists in importlib.metadata.packages_distributions().items():
        foreign = [d for d in dists if d.replace("_", "-").lower() not in OWN_DISTRIBUTIONS]
        if foreign:
            out[name] = foreign
    return out


def test_no_root_entry_is_a_regular_package_named_like_an_installed_distribution():
    foreign = _foreign_import_names()
    offenders = []
    for name, path in _root_import_names().items():
        if name not in foreign:
            continue
        if path.is_file() or (path / "__init__.py").exists():
            offenders.append(f"{path.relative_to(ROOT)} shadows the installed {foreign[name]} (import name {name!r})")
    assert not offenders, (
        "a regular package or module at the repository root shadows an installed distribution when "
        "Python runs from the root; remove its __init__.py (a namespace portion never wins) or rename it: "
        + "; ".join(offenders)
    )


def test_installed_distributions_win_when_python_runs_from_the_root():
    """The behavioural check: from the root, every clashing name imports the installed copy."""
    clashes = sorted(set(_root_import_names()) & set(_foreign_import_names()))
    if not clashes:
        pytest.skip("no top-level folder shares a name with an installed distribution here")
    code = (
        "import importlib.util, sys\n"
        "for n in sys.argv[1:]:\n"
        "    s = importlib.util.find_spec(n)\n"
        "    print(n, s.origin if s and s.origin else list(s.submodule_search_locations or []))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *clashes], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    for line in out.splitlines():
        name, _, origin = line.partition(" ")
        assert str(ROOT) + os.sep not in origin or ".venv" in origin, f"{name} resolves into the checkout: {origin}"


def test_transformers_hub_kernels_import_from_the_root():
    """The import that broke 106 tests: transformers' integration with Hugging Face's `kernels`."""
    pytest.importorskip("transformers")
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels is not installed (transformers < 5 does not need it)")
    subprocess.run([sys.executable, "-c", "import transformers.integrations.hub_kernels, kernels; "
                    "assert 'site-packages' in kernels.__file__, kernels.__file__"],
                   cwd=ROOT, check=True, timeout=300, capture_output=True)


def test_mpo_fast_kernels_resolves_from_a_checkout_and_from_an_installed_copy(tmp_path):
    """Checkout: mpo_fast.kernels is the top-level kernels/ folder. Installed: its own __init__.py."""
    probe = "import mpo_fast.kernels as k, mpo_fast.kernels.gae as g; print(k.__name__, g.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.split()[1] == str(ROOT / "kernels" / "gae.py")

    build = tmp_path / "lib"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)], cwd=ROOT,
                   check=True, timeout=120, capture_output=True)
    assert (build / "mpo_fast" / "kernels" / "__init__.py").is_file()
    assert (build / "mpo_fast" / "kernels" / "selective_log_softmax.py").is_file()
    env = {**os.environ, "PYTHONPATH": str(build)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.split()[1] == str(build / "mpo_fast" / "kernels" / "gae.py")
