import json
import os
import subprocess
import sys
import textwrap

import pytest

import mpo_fast
from mpo_fast.rubrics import (
    Rubric,
    RubricItem,
    RubricNotFoundError,
    RubricStore,
    RubricStoreError,
)
from mpo_fast.rubrics.atomic_file import TEMP_PREFIX


def rubric(*titles, points=3):
    return Rubric("essay", "ctx", [RubricItem(t, f"About {t}.", points) for t in titles])


A = rubric("Clarity", "Evidence")
B = rubric("Clarity", "Evidence", "Structure")
C = rubric("Voice")


def leftovers(directory):
    return [p for p in directory.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_save_and_read_back(tmp_path):
    store = RubricStore(tmp_path / "rubrics")
    assert store.latest() is None and store.versions() == [] and len(store) == 0
    v1 = store.save(A, step=0)
    v2 = store.save(B, parent=v1, step=20, analyses=["too lenient on length", "rewards padding"])
    assert (v1.version, v2.version) == (1, 2)
    assert v2.parent == v1.hash == A.content_hash and v1.parent is None
    assert v2.analyses == ("too lenient on length", "rewards padding")
    latest = store.latest()
    assert latest == v2 and latest.rubric == B and latest.step == 20
    assert [v.version for v in store.versions()] == [1, 2]
    assert store.get(1).rubric == A


def test_get_by_number_hash_prefix_and_names(tmp_path):
    store = RubricStore(tmp_path)
    v1, v2 = store.save(A), store.save(B, parent=A.content_hash)
    assert v2.parent == v1.hash
    assert store.get(2) == store.get("2") == store.get("v2") == store.get("latest") == v2
    assert store.get(v1.hash) == store.get(v1.hash[:6]) == store.get(v1.hash[:6].upper()) == v1
    with pytest.raises(RubricNotFoundError, match="no rubric version 9"):
        store.get(9)
    with pytest.raises(RubricNotFoundError, match="at least 4 hex characters"):
        store.get("zz")
    with pytest.raises(RubricNotFoundError, match="no rubric with hash prefix"):
        store.get("ffffffff" if not v1.hash.startswith("ffff") else "00000000")
    with pytest.raises(TypeError):
        store.get(1.5)
    with pytest.raises(RubricNotFoundError, match="empty"):
        RubricStore(tmp_path / "other").save(A, parent="v1")


def test_resaving_identical_content_returns_existing_version(tmp_path):
    store = RubricStore(tmp_path)
    v1 = store.save(A)
    store.save(B, parent=v1)
    again = store.save(Rubric.from_dict(A.to_dict()), step=40, analyses=["ignored"])
    assert again == v1 and again.step == 0 and again.analyses == ()
    assert len(store) == 2
    # Moving back to an earlier rubric makes it the one in use, so a resumed run picks it up.
    assert store.latest() == v1
    assert RubricStore(tmp_path).latest() == v1


def test_resume_sees_versions(tmp_path):
    first = RubricStore(tmp_path)
    v1 = first.save(A)
    first.save(B, parent=v1, step=20)
    reopened = RubricStore(tmp_path)
    assert [(v.version, v.hash, v.step) for v in reopened.versions()] == [(1, A.content_hash, 0), (2, B.content_hash, 20)]
    v3 = reopened.save(C, parent="v2", step=40)
    assert v3.version == 3 and first.latest() == v3  # the first object reads the shared index


def test_crash_during_record_write_keeps_previous_version(tmp_path, monkeypatch):
    store = RubricStore(tmp_path)
    v1 = store.save(A)
    real_replace = os.replace

    def crash(src, dst):
        raise OSError("simulated crash after the temp file was written")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.save(B, parent=v1)
    monkeypatch.setattr(os, "replace", real_replace)
    reopened = RubricStore(tmp_path)
    assert [v.version for v in reopened.versions()] == [1]
    assert reopened.latest() == v1 and reopened.latest().rubric == A
    assert leftovers(tmp_path) == []
    assert reopened.save(B, parent=v1).version == 2


def test_crash_during_index_write_keeps_previous_version(tmp_path, monkeypatch):
    store = RubricStore(tmp_path)
    v1 = store.save(A)
    real_replace = os.replace
    calls = []

    def crash_on_index(src, dst):
        calls.append(dst)
        if str(dst).endswith("index.json"):
            raise OSError("simulated crash while committing the index")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_index)
    with pytest.raises(OSError, match="committing the index"):
        store.save(B, parent=v1)
    monkeypatch.setattr(os, "replace", real_replace)
    assert any("versions" in str(c) for c in calls)  # the record itself was fully written
    reopened = RubricStore(tmp_path)
    assert reopened.versions() == [v1] and reopened.latest().rubric == A
    # The orphan record of the failed save is overwritten by the next save of that number.
    v2 = reopened.save(C, parent=v1)
    assert v2.version == 2 and reopened.get(2).rubric == C


def test_hard_kill_mid_write_leaves_previous_version(tmp_path):
    """A real process death (no cleanup, no exception handlers) between temp write and rename."""
    store = RubricStore(tmp_path)
    store.save(A)
    # The child loads mpo_fast.rubrics without the package __init__ (which imports torch, ~2.5 s):
    # the rubric layer needs only the standard library and PyYAML.
    script = textwrap.dedent(
        f"""
        import os, sys, types
        package = types.ModuleType("mpo_fast")
        package.__path__ = {list(mpo_fast.__path__)!r}
        sys.modules["mpo_fast"] = package
        from mpo_fast.rubrics import Rubric, RubricItem, RubricStore
        store = RubricStore({str(tmp_path)!r})
        os.replace = lambda src, dst: os._exit(9)
        store.save(Rubric("essay", "ctx", [RubricItem("Killed", "never committed", 2)]))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == 9, result.stderr.decode()
    assert leftovers(tmp_path), "the killed writer should have left its temp file behind"
    reopened = RubricStore(tmp_path)  # sweeps the leftovers
    assert leftovers(tmp_path) == []
    assert [v.rubric for v in reopened.versions()] == [A]


def test_diff_between_versions(tmp_path):
    store = RubricStore(tmp_path)
    store.save(A)
    store.save(B, step=20)
    text = store.diff(1, "v2")
    assert text.splitlines()[0].startswith("--- v1 step 0 ")
    assert "+ [3 pts] Structure: About Structure." in text
    assert "= 2 items unchanged" in text


def test_tampered_files_raise_clear_errors(tmp_path):
    store = RubricStore(tmp_path)
    v1 = store.save(A)
    record = next((tmp_path / "versions").glob("000001-*.json"))
    data = json.loads(record.read_text())
    data["rubric"]["items"][0]["max_points"] = 99
    record.write_text(json.dumps(data))
    with pytest.raises(RubricStoreError, match="edited by hand"):
        store.get(v1.hash)
    record.unlink()
    with pytest.raises(RubricStoreError, match="is missing"):
        store.latest()
    (tmp_path / "index.json").write_text("{broken")
    with pytest.raises(RubricStoreError, match="not valid JSON"):
        store.versions()


def test_save_argument_validation(tmp_path):
    store = RubricStore(tmp_path)
    with pytest.raises(TypeError, match="expects a Rubric"):
        store.save(A.to_dict())
    with pytest.raises(ValueError, match="step"):
        store.save(A, step=-1)
    with pytest.raises(TypeError, match="not one string"):
        store.save(A, analyses="one analysis")
    with pytest.raises(TypeError, match=r"analyses\[1\]"):
        store.save(A, analyses=["ok", 3])
    file_path = tmp_path / "file"
    file_path.write_text("x")
    with pytest.raises(NotADirectoryError):
        RubricStore(file_path)
