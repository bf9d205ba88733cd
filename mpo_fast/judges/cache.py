"""Judgement cache: a resumed run never pays twice for the same judgement.

Keyed by (judge identity, rubric hash, prompt, response, reference): the identity
(RubricJudge.cache_identity) covers the model, every JudgeSettings field, the prompt version, the
logprob source and top-k, and the structured-output kind, so changing anything that changes a
score misses. Only
successful judgements are stored: a failure is retried on resume, never replayed.

Stored as append-only JSON lines in the run directory (`judgements.jsonl`): plain data, never
pickle (judge text is untrusted), readable with any tool, and a crash can at worst leave one
torn last line, which loading skips.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from .types import Judgement

log = logging.getLogger("mpo_fast")


def judgement_key(judge_id: str, rubric_hash: str, prompt: str, response: str, reference: str | None) -> str:
    """sha256 over the length-prefixed fields: no choice of texts can make two keys collide by
    shifting a separator."""
    h = hashlib.sha256()
    for part in (judge_id, rubric_hash, prompt, response, "\x00none" if reference is None else reference):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


class JudgeCache:
    """In-memory map backed by an append-only JSONL file (or memory only when path is None)."""

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.skipped_lines = 0
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        with self.path.open("r", encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                    key, judgement = record["key"], record["judgement"]
                    Judgement.from_dict(judgement)  # validate now, not at the first hit
                except (ValueError, KeyError, TypeError) as exc:
                    self.skipped_lines += 1
                    log.warning("judgement cache %s: skipping unreadable line %d (%s)", self.path, n, exc)
                    continue
                self._entries[key] = judgement
        log.info("judgement cache %s: %d judgements loaded", self.path, len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Judgement | None:
        with self._lock:
            data = self._entries.get(key)
            if data is None:
                self.misses += 1
                return None
            self.hits += 1
        return Judgement.from_dict(data, cached=True)

    def put_many(self, items: list[tuple[str, Judgement]]) -> None:
        """Store successful judgements (failed ones are ignored: they must be retried)."""
        fresh = [(k, j.to_dict()) for k, j in items if j.ok]
        if not fresh:
            return
        with self._lock:
            fresh = [(k, d) for k, d in fresh if k not in self._entries]
            for k, d in fresh:
                self._entries[k] = d
            if self.path is None or not fresh:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # ensure_ascii: judge text may hold a lone surrogate ("\ud800" from a server's JSON escape),
            # which UTF-8 cannot encode; escaped, it is written and read back unchanged.
            lines = "".join(json.dumps({"key": k, "judgement": d}, ensure_ascii=True, allow_nan=False) + "\n" for k, d in fresh)
            # One write per batch in append mode: a crash tears at most the last line.
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(lines)
                fh.flush()
                os.fsync(fh.fileno())
