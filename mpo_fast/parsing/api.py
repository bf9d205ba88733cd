"""parse_scores: read k scores from each of n judge texts, with a status per score.

Backends: "cpu" (C++ in mpo_fast._C: GIL released, threads over texts, the texts read in place)
and "reference" (the pure-Python oracle, mpo_fast/reference/parse_scores.py). "auto" takes the C++
parser when the extension is built, else the oracle; MPO_FAST_BACKEND overrides it as for every op.
"""
from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Sequence

import torch

from .. import _backend, _native
from ..reference import parse_scores as oracle
from .spec import NONCE_FORMATS, ParsedScores, ScoreSpec

log = logging.getLogger("mpo_fast")

SUPPORTED = ("reference", "cpu")
_NONCE_RE = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_REBUILD = "rebuild the extension: `bash scripts/build_native.sh` (or reinstall mpo_fast from source)"


def default_threads() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _cpu_ext(requested: str):
    """The extension module if it has the parser; None (auto) or an error (named) otherwise."""
    ext = _native.cpu_ext
    if ext is not None and hasattr(ext, "parse_scores"):
        return ext
    if requested == "cpu":
        raise _backend.BackendUnavailableError(f"mpo_fast.parse_scores: mpo_fast._C has no parse_scores; {_REBUILD}")
    log.debug("mpo_fast.parse_scores: mpo_fast._C lacks parse_scores, using the reference parser; %s", _REBUILD)
    return None


def resolve_backend(backend: str) -> str:
    """The backend parse_scores runs for `backend`, honouring MPO_FAST_BACKEND like every op."""
    return _resolve_cached(backend, os.environ.get("MPO_FAST_BACKEND", ""))


@functools.lru_cache(maxsize=64)
def _resolve_cached(backend: str, env: str) -> str:
    # Cached: the extension and the environment variable (part of the key) do not change under a
    # call, and resolving costs ~20 us, a third of a 200-text batch's parse time.
    name = _backend.resolve("parse_scores", backend, torch.device("cpu"), SUPPORTED)
    if name == "cpu" and _cpu_ext(backend) is None:
        name = "reference"
    if name == "reference" and backend == "auto" and env.strip().lower() in ("", "auto"):
        warn_oracle_fallback("parse_scores")
    return name


_warned_oracle: set[str] = set()


def warn_oracle_fallback(op: str) -> None:
    """Warn once per op that the pure-Python oracle runs because the C++ extension is missing:
    it is correct but slow (200 judge texts: 4.3 ms against 0.024 ms in C++, measured on a shared 2-core CPU),
    which a user should hear about once."""
    if op in _warned_oracle:
        return
    _warned_oracle.add(op)
    log.warning("mpo_fast.%s: the C++ extension (mpo_fast._C) is not available, using the slower pure-Python "
                "reference parser; %s", op, _REBUILD)


def _check_texts(texts) -> list | tuple:
    if isinstance(texts, (str, bytes, bytearray)):
        raise TypeError(f"texts is a single {type(texts).__name__}; pass a sequence of texts, e.g. [text]")
    if not isinstance(texts, (list, tuple)):
        texts = list(texts)
    return texts


def _check_nonces(nonces, n: int, spec: ScoreSpec) -> list[str] | None:
    if nonces is None:
        return None
    if spec.format not in NONCE_FORMATS:
        raise ValueError(f"nonces apply to formats {NONCE_FORMATS}, not {spec.format!r}")
    if isinstance(nonces, (str, bytes)) or not isinstance(nonces, Sequence):
        raise TypeError("nonces must be a sequence of str, one per text (or None)")
    if len(nonces) != n:
        raise ValueError(f"nonces has {len(nonces)} entries for {n} texts; give one nonce per text")
    for i, nonce in enumerate(nonces):
        if not isinstance(nonce, str) or not _NONCE_RE.match(nonce):
            raise ValueError(f"nonces[{i}]={nonce!r} must be 1-32 ASCII letters/digits (ScoreSpec.new_nonce())")
    return list(nonces)


def parse_scores(
    texts: Sequence[str | bytes],
    spec: ScoreSpec,
    *,
    backend: str = "auto",
    num_threads: int | None = None,
    nonces: Sequence[str] | None = None,
) -> ParsedScores:
    """Scores of `spec.k` items from each text: values float32 [n, k] (NaN unless OK), status int8 [n, k].

    texts: str or bytes each (invalid UTF-8 is fine: it simply matches nothing).
    spec: ScoreSpec; the grammar is documented in mpo_fast/parsing/spec.py.
    backend: "auto", "cpu" (C++) or "reference" (pure Python).
    num_threads: threads for the C++ parser (default: all cores this process may use; small batches
        use fewer, since a thread costs about as much as parsing 64 KB).
    nonces: one nonce per text, replacing spec.nonce (per-request nonces parsed in one batch).
    Never raises on text content; raises TypeError/ValueError on arguments of the wrong kind.
    """
    if not isinstance(spec, ScoreSpec):
        raise TypeError(f"spec must be a ScoreSpec, got {type(spec).__name__}")
    texts = _check_texts(texts)
    n, k = len(texts), spec.k
    nonce_list = _check_nonces(nonces, n, spec)
    if num_threads is None:
        num_threads = default_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
    name = resolve_backend(backend)
    if name == "cpu":
        values = torch.empty((n, k), dtype=torch.float32)
        status = torch.empty((n, k), dtype=torch.int8)
        spans = torch.empty((n, k, 2), dtype=torch.int64)
        _native.cpu_ext.parse_scores(
            texts, spec.native_args, nonce_list, values.data_ptr(), status.data_ptr(), spans.data_ptr(), num_threads
        )
        return ParsedScores(values, status, spans)
    vals, stats, spans = oracle.parse_scores(texts, spec, nonce_list)
    return ParsedScores(
        torch.tensor(vals, dtype=torch.float32).reshape(n, k),
        torch.tensor(stats, dtype=torch.int8).reshape(n, k),
        torch.tensor(spans, dtype=torch.int64).reshape(n, k, 2),
    )


def selected_text(texts: Sequence[str | bytes], parsed: ParsedScores, item: int = 0) -> list[str | None]:
    """The content each text's item `item` was read from (tag, verdict, boxed), e.g. a math answer
    that is not a number: `\\boxed{x^2+1}` gives "x^2+1" with status MALFORMED. None where no span."""
    if parsed.spans is None:
        raise ValueError("these ParsedScores carry no spans (the token-id parser does not record them)")
    texts = _check_texts(texts)
    if len(texts) != len(parsed):
        raise ValueError(f"{len(texts)} texts but {len(parsed)} parsed rows; pass the texts that were parsed")
    out: list[str | None] = []
    for text, (a, b) in zip(texts, parsed.spans[:, item].tolist()):
        if a < 0:
            out.append(None)
            continue
        data = oracle.to_bytes(text)
        out.append(data[a:b].decode("utf-8", "replace"))
    return out
