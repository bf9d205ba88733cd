"""Issue 13: when the C++ extension is missing, parse_scores says so once (it used to be silent)."""
import logging

from mpo_fast import _native
from mpo_fast.parsing import ScoreSpec, parse_scores
from mpo_fast.parsing import api


def test_missing_extension_warns_once(monkeypatch, caplog):
    monkeypatch.delenv("MPO_FAST_BACKEND", raising=False)
    monkeypatch.setattr(_native, "cpu_ext", None)
    monkeypatch.setattr(api, "_warned_oracle", set())
    api._resolve_cached.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="mpo_fast"):
            for _ in range(3):
                out = parse_scores(["ok <score>7</score>"], ScoreSpec(hi=10.0))
                assert out.values.tolist() == [[7.0]]
        warnings = [r for r in caplog.records if "pure-Python" in r.getMessage()]
        assert len(warnings) == 1 and "build_native.sh" in warnings[0].getMessage()
    finally:
        api._resolve_cached.cache_clear()
