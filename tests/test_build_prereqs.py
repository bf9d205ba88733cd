"""setup.py names the fix when a --no-build-isolation build lacks pybind11>=2.12 or setuptools>=77."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = 'pip install "pybind11>=2.12" "setuptools>=77"'


def _setup_version(fake_dir=None):
    env = dict(os.environ)
    if fake_dir is not None:  # shadows the installed package, as an old or missing one would
        env["PYTHONPATH"] = str(fake_dir) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("fake, expect", [
    ('__version__ = "2.10.4"\n', "pybind11 2.10.4 is older than 2.12"),
    ('raise ImportError("No module named pybind11")\n', "pybind11 is not installed"),
])
def test_missing_or_old_pybind11_names_the_install_command(tmp_path, fake, expect):
    (tmp_path / "pybind11").mkdir()
    (tmp_path / "pybind11" / "__init__.py").write_text(fake)
    proc = _setup_version(tmp_path)
    assert proc.returncode != 0
    assert expect in proc.stderr and FIX in proc.stderr, proc.stderr[-2000:]


def test_old_setuptools_names_the_install_command(tmp_path):
    (tmp_path / "setuptools").mkdir()
    (tmp_path / "setuptools" / "__init__.py").write_text('__version__ = "69.5.1"\n')
    proc = _setup_version(tmp_path)
    assert proc.returncode != 0
    assert "setuptools 69.5.1 is older than 77" in proc.stderr and FIX in proc.stderr, proc.stderr[-2000:]


def test_current_prerequisites_pass():
    pytest.importorskip("pybind11")
    proc = _setup_version()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "0.1.0"


def test_readme_says_so():
    assert FIX in (ROOT / "README.md").read_text()
