"""Fuzz harness: the C++ score parser against the Python oracle, on inputs a coverage-guided fuzzer
builds from grammar fragments, raw bytes and unicode. Any disagreement, exception or crash fails.

Run it for as long as you like (libFuzzer flags; `crash-*` files reproduce failures):
    .venv/bin/python tests/fuzz/fuzz_parse_scores.py -max_total_time=600 -rss_limit_mb=4096 [corpus_dir]
    .venv/bin/python tests/fuzz/fuzz_parse_scores.py crash-1234abcd     # replay one input
Without atheris (pip install atheris), random inputs for N seconds:
    .venv/bin/python tests/fuzz/fuzz_parse_scores.py --random 60
tests/fuzz/test_fuzz_short.py runs a short session in CI.
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.parsing

try:
    import atheris
except ImportError:  # the --random mode needs nothing beyond the project
    atheris = None

if atheris is not None and __name__ == "__main__" and "--random" not in sys.argv:  # coverage feedback
    with atheris.instrument_imports(include=["mpo_fast.reference", "mpo_fast.parsing"]):
        from mpo_fast.parsing import parse_scores
        from mpo_fast.reference import parse_scores as oracle  # noqa: F401 (instrumented for coverage)
else:
    from mpo_fast.parsing import parse_scores

from tests.parsing.strategies import FRAGMENTS, NAMES, SPECS  # noqa: E402


def check(texts: list, spec) -> None:
    a = parse_scores(texts, spec, backend="cpu", num_threads=1)
    b = parse_scores(texts, spec, backend="reference")
    same = (
        a.status.tolist() == b.status.tolist()
        and a.values.isnan().tolist() == b.values.isnan().tolist()
        and a.values.nan_to_num().tolist() == b.values.nan_to_num().tolist()
        and a.spans.tolist() == b.spans.tolist()
    )
    if not same:
        raise AssertionError(
            f"C++ and oracle disagree\n texts={texts!r}\n spec={spec}\n cpu={a.status.tolist()} {a.values.tolist()} "
            f"{a.spans.tolist()}\n ref={b.status.tolist()} {b.values.tolist()} {b.spans.tolist()}"
        )


PIECES = FRAGMENTS + [b"<" + n + b">" for n in NAMES] + [b"</" + n + b">" for n in NAMES] + [n + b":" for n in NAMES]


def texts_from(pick_int, pick_bytes, pick_unicode) -> tuple[list, object]:
    """Decode a spec and 1-3 texts from a source of choices (fuzzer bytes or a random generator)."""
    spec = SPECS[pick_int(0, len(SPECS) - 1)]
    texts: list = []
    for _ in range(pick_int(1, 3)):
        kind = pick_int(0, 3)
        if kind == 0:
            texts.append(pick_bytes(pick_int(0, 300)))
        elif kind == 1:
            texts.append(pick_unicode(pick_int(0, 100)))
        else:  # grammar fragments glued with a few random bytes: reaches deep states quickly
            parts = []
            for _ in range(pick_int(0, 24)):
                parts.append(PIECES[pick_int(0, len(PIECES) - 1)] if pick_int(0, 3) else pick_bytes(pick_int(0, 3)))
            texts.append(b"".join(parts))
    return texts, spec


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    texts, spec = texts_from(fdp.ConsumeIntInRange, fdp.ConsumeBytes, fdp.ConsumeUnicode)
    check(texts, spec)


def run_random(seconds: float, seed: int = 0) -> int:
    """Random inputs for `seconds`; returns how many batches were checked."""
    rng = random.Random(seed)
    unicode_pool = "abc<>/:=[]{}\"\\ 0123456789.+-\uff10\uff17\uff0e\u00a0\u3000\u2212\ud800\U0001f600\x00\n"
    pick_bytes = lambda n: bytes(rng.getrandbits(8) for _ in range(n))  # noqa: E731
    pick_unicode = lambda n: "".join(rng.choice(unicode_pool) for _ in range(n))  # noqa: E731
    deadline, count = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        texts, spec = texts_from(rng.randint, pick_bytes, pick_unicode)
        check(texts, spec)
        count += 1
    return count


def main(argv: list[str]) -> int:
    if len(argv) > 2 and argv[1] == "--random":
        count = run_random(float(argv[2]))
        print(f"fuzz_parse_scores: {count} random batches, C++ and oracle agree")
        return 0
    if atheris is None:
        print("atheris is not installed (pip install atheris); use --random SECONDS", file=sys.stderr)
        return 2
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
