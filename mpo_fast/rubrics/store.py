"""Versioned, crash-safe storage of the rubrics a run has used.

Layout under the store directory:

    index.json                        the commit point: every version's metadata, and `head`
    versions/000003-<hash>.json       one record per version: metadata, analyses, the rubric
    .lock                             serialises writers (threads and processes)

A save writes the version record, then the index, each atomically (atomic_file.write_atomic).
A version exists exactly when the index lists it, so a crash at any point of a save leaves the
previous index, and every version it lists, intact; the half-saved version simply does not
exist and its leftovers are swept or overwritten by the next save.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from .atomic_file import TEMP_PREFIX, write_text_atomic
from .diff import diff_rubrics
from .model import HASH_CHARS, Rubric

try:  # POSIX advisory locks; on Windows only in-process threads are serialised.
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None

INDEX_FORMAT = 1
_MIN_PREFIX = 4  # shorter hash prefixes are too easy to match by accident (1 in 65,536 at 4)
_HEX = re.compile(r"^[0-9a-f]+$")
_VERSION_REF = re.compile(r"^v(\d+)$")


class RubricStoreError(RuntimeError):
    """The store on disk is unreadable or inconsistent (edited by hand, or from another tool)."""


class RubricNotFoundError(LookupError):
    """A version number or hash prefix that names no (or more than one) stored version."""

    def __str__(self) -> str:  # LookupError would print the repr of the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class RubricVersion:
    version: int  # 1, 2, 3... in save order
    hash: str  # Rubric.content_hash
    parent: str | None  # hash of the rubric it was refined from; None for a root
    step: int  # training step at which it was created
    created_at: str  # ISO 8601, UTC
    analyses: tuple[str, ...]  # meta-judge analyses that motivated it
    rubric: Rubric = field(repr=False, compare=False)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RubricStore:
    """All rubric versions of one run. Safe to reopen: a new store on the same directory sees
    every committed version (that is how a run resumes)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"rubric store path {self.directory} is a file; pass a directory")
        self._versions_dir = self.directory / "versions"
        self._index_path = self.directory / "index.json"
        self._thread_lock = threading.RLock()
        self._versions_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._sweep_temp_files()

    # -- locking and raw index ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if fcntl is None:
                yield
                return
            with open(self.directory / ".lock", "a+b") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _sweep_temp_files(self) -> None:
        # Temp files of a crashed write; under the lock no live writer can own one.
        for folder in (self.directory, self._versions_dir):
            for leftover in folder.glob(TEMP_PREFIX + "*"):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def _read_index(self) -> dict[str, Any]:
        if not self._index_path.exists():
            return {"format": INDEX_FORMAT, "head": None, "versions": []}
        try:
            index = json.loads(self._index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RubricStoreError(
                f"{self._index_path} is not valid JSON ({exc}); it was edited outside mpo_fast. "
                "Restore it from a backup, or move the directory away to start a new store"
            ) from exc
        if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or not isinstance(
            index.get("versions"), list
        ):
            raise RubricStoreError(
                f"{self._index_path} is not a format-{INDEX_FORMAT} rubric index; "
                "use a directory created by this version of mpo_fast"
            )
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        write_text_atomic(self._index_path, json.dumps(index, indent=1, sort_keys=True) + "\n")

    def _load(self, entry: dict[str, Any]) -> RubricVersion:
        path = self.directory / entry["file"]
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise RubricStoreError(
                f"rubric version {entry['version']} is listed in {self._index_path} but {path} is missing; "
                "restore the file from a backup"
            ) from exc
        except json.JSONDecodeError as exc:
            raise RubricStoreError(f"{path} is not valid JSON ({exc}); restore it from a backup") from exc
        rubric = Rubric.from_dict(record["rubric"], where=str(path))
        if rubric.content_hash != entry["hash"]:
            raise RubricStoreError(
                f"{path} holds a rubric with hash {rubric.content_hash}, but the index says {entry['hash']}; "
                "the file was edited by hand: restore it, or save the edited rubric as a new version"
            )
        return RubricVersion(
            version=entry["version"],
            hash=entry["hash"],
            parent=entry["parent"],
            step=entry["step"],
            created_at=entry["created_at"],
            analyses=tuple(record.get("analyses", ())),
            rubric=rubric,
        )

    # -- lookups ---------------------------------------------------------------------------

    def _find(self, index: dict[str, Any], ref: int | str | RubricVersion) -> dict[str, Any]:
        entries = index["versions"]
        by_number = {e["version"]: e for e in entries}
        if isinstance(ref, RubricVersion):
            entry = by_number.get(ref.version)
            if entry is None or entry["hash"] != ref.hash:
                raise RubricNotFoundError(f"rubric version v{ref.version} ({ref.hash}) is not in {self.directory}")
            return entry
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise TypeError(f"rubric ref must be a version number, 'vN', a hash prefix or 'latest'; got {ref!r}")
        if not entries:
            raise RubricNotFoundError(f"rubric store {self.directory} is empty; save a rubric first")
        known = f"versions v1..v{max(by_number)}"
        if isinstance(ref, int):
            if ref not in by_number:
                raise RubricNotFoundError(f"no rubric version {ref} in {self.directory} ({known})")
            return by_number[ref]
        text = ref.strip().lower()
        if text in ("latest", "head"):
            return by_number[index["head"]]
        match = _VERSION_REF.match(text)
        if match:
            number = int(match.group(1))
            if number not in by_number:
                raise RubricNotFoundError(f"no rubric version {ref!r} in {self.directory} ({known})")
            return by_number[number]
        hash_hits = {e["hash"]: e for e in entries if e["hash"].startswith(text)} if _HEX.match(text) else {}
        if text.isdigit() and int(text) in by_number:
            if len(text) >= _MIN_PREFIX and hash_hits:
                raise RubricNotFoundError(
                    f"{ref!r} is both version {int(text)} and a hash prefix; write 'v{int(text)}' or a longer prefix"
                )
            return by_number[int(text)]
        if not _HEX.match(text) or len(text) < _MIN_PREFIX:
            raise RubricNotFoundError(
                f"{ref!r} names no rubric in {self.directory}: use a version number ({known}), 'vN', 'latest', "
                f"or at least {_MIN_PREFIX} hex characters of a hash"
            )
        if not hash_hits:
            raise RubricNotFoundError(f"no rubric with hash prefix {ref!r} in {self.directory}")
        if len(hash_hits) > 1:
            raise RubricNotFoundError(
                f"hash prefix {ref!r} matches {sorted(hash_hits)}; give more characters (full hash is {HASH_CHARS})"
            )
        return next(iter(hash_hits.values()))

    def get(self, ref: int | str | RubricVersion) -> RubricVersion:
        """By version number (3, "3", "v3"), hash prefix (>= 4 hex chars) or "latest"."""
        return self._load(self._find(self._read_index(), ref))

    def latest(self) -> RubricVersion | None:
        """The version saved last (re-saving an earlier rubric makes it the latest again)."""
        index = self._read_index()
        if index["head"] is None:
            return None
        return self._load(self._find(index, index["head"]))

    def versions(self) -> list[RubricVersion]:
        """Every version, oldest first."""
        return [self._load(entry) for entry in self._read_index()["versions"]]

    def __len__(self) -> int:
        return len(self._read_index()["versions"])

    def diff(self, a: int | str | RubricVersion, b: int | str | RubricVersion) -> str:
        va, vb = self.get(a), self.get(b)
        return diff_rubrics(
            va.rubric, vb.rubric, label_a=f"v{va.version} step {va.step}", label_b=f"v{vb.version} step {vb.step}"
        )

    # -- writing ---------------------------------------------------------------------------

    def save(
        self,
        rubric: Rubric,
        parent: int | str | RubricVersion | None = None,
        step: int = 0,
        analyses: Iterable[str] = (),
    ) -> RubricVersion:
        """Store `rubric` as a new version and make it the latest.

        A rubric whose content is already stored is not duplicated: its existing version is
        returned (and becomes the latest again), whatever parent/step/analyses are given.
        """
        if not isinstance(rubric, Rubric):
            raise TypeError(f"RubricStore.save expects a Rubric, got {type(rubric).__name__}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step is {step!r}; pass the training step as an integer >= 0")
        if isinstance(analyses, str):
            raise TypeError("analyses must be a list of strings, not one string; wrap it: [text]")
        analyses = tuple(analyses)
        for i, text in enumerate(analyses):
            if not isinstance(text, str):
                raise TypeError(f"analyses[{i}] is a {type(text).__name__}; analyses must be strings")
        content_hash = rubric.content_hash
        with self._locked():
            index = self._read_index()
            for entry in index["versions"]:
                if entry["hash"] == content_hash:
                    if index["head"] != entry["version"]:
                        index["head"] = entry["version"]
                        self._write_index(index)
                    return self._load(entry)
            parent_hash = None if parent is None else self._find(index, parent)["hash"]
            version = max((e["version"] for e in index["versions"]), default=0) + 1
            entry = {
                "version": version,
                "hash": content_hash,
                "parent": parent_hash,
                "step": step,
                "created_at": _now(),
                "file": f"versions/{version:06d}-{content_hash}.json",
            }
            record = {**entry, "analyses": list(analyses), "rubric": rubric.to_dict()}
            del record["file"]
            # Record first, index second: until the index names it, the record does not count.
            write_text_atomic(self.directory / entry["file"], json.dumps(record, indent=1, ensure_ascii=False) + "\n")
            self._write_index({**index, "head": version, "versions": [*index["versions"], entry]})
        return RubricVersion(
            version=version,
            hash=content_hash,
            parent=parent_hash,
            step=step,
            created_at=entry["created_at"],
            analyses=analyses,
            rubric=rubric,
        )
