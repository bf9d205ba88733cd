"""A short fuzzing session in CI: atheris for ~20 s when installed, else random inputs in-process."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from mpo_fast.parsing.api import resolve_backend

HARNESS = Path(__file__).with_name("fuzz_parse_scores.py")
pytestmark = pytest.mark.skipif(resolve_backend("auto") != "cpu", reason="mpo_fast._C is not built: nothing to fuzz")


@pytest.mark.slow
def test_atheris_session(tmp_path):
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install atheris); test_random_session covers the harness")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    proc = subprocess.run(
        [sys.executable, str(HARNESS), "-max_total_time=20", "-rss_limit_mb=4096", "-timeout=10",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Done" in proc.stderr, proc.stderr[-2000:]  # libFuzzer's summary: "Done N runs in S second(s)"


def test_random_session():
    from tests.fuzz import fuzz_parse_scores

    assert fuzz_parse_scores.run_random(1.5, seed=1234) > 20
