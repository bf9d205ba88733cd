"""Token-id parsing: the id -> bytes table from SmolLM2's real tokenizer, the Triton kernels (under
the CPU interpreter here, on the GPU where there is one) against the C++ parser on the same texts,
and the fused parse + group advantages step."""
import math

import pytest
import torch

from mpo_fast.parsing import ScoreSpec, TokenByteTable, parse_scores, parse_scores_and_advantages, parse_token_scores
from mpo_fast.parsing.api import resolve_backend
from mpo_fast.parsing.tokens import flat_row_bytes
from mpo_fast.reference import advantages as ref_adv

HAS_CPU = resolve_backend("auto") == "cpu"
TEXT_BACKEND = "cpu" if HAS_CPU else "reference"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

JUDGE_TEXTS = [
    "The essay is clear and well argued.\n\n**Score:** <score>7</score>",
    "Rubric: reply with <score>N</score>.\nThe response ignores the prompt.\n<score>2</score>",
    "Strong thesis; weak evidence.\n<score> 6 </score> and on reflection <score>5</score>",
    "Full-width digits from a CJK judge: <score>\uff18</score>",
    "Fraction: <score>4/5</score>", "Decimal: <score>7.5</score>", "Out of range: <score>11</score>",
    "Malformed: <score>seven</score>", "Cut off: <score>8", "Cut in the close tag: <score>8</sc",
    "No score at all, just a rationale that goes on and on about caf\u00e9s and \U0001f600.",
    "<score>-0</score>", "<score>\u00a03\u3000</score>", "<score>1e3</score>", "<score>" + "9" * 16 + "</score>",
    "<score>3</score><score>3</score><score>4</score>", "",
    "<clarity>4</clarity> <accuracy>2</accuracy> <style>3</style>", "<style>1</style><clarity>x</clarity>",
    "<score-3f9a1c>9</score-3f9a1c> quoted: <score>10</score>", "<verdict> right </verdict>",
    "<verdict>WRONG</verdict> <verdict>RIGHT</verdict>", "<verdict>maybe</verdict>",
]

TAG_TEXTS = [t for t in JUDGE_TEXTS if "<verdict>" not in t and "<clarity>" not in t and "<style>" not in t]
ITEM_TEXTS = [t for t in JUDGE_TEXTS if "<clarity>" in t or "<style>" in t] + JUDGE_TEXTS[:3] + [""]
VERDICT_TEXTS = [t for t in JUDGE_TEXTS if "<verdict>" in t] + ["<verdict>RIGHT", "<verdict>RIGHT</verd", "x"]

# (spec, texts): each spec on the texts that exercise it (the interpreter costs ~0.1 s a row)
TRITON_CASES = [
    (ScoreSpec(), TAG_TEXTS),
    (ScoreSpec(select="first", integer=False), TAG_TEXTS),
    (ScoreSpec(select="unique"), TAG_TEXTS),
    (ScoreSpec(k=2, select="last", hi=(10, 5)), TAG_TEXTS[:8]),
    (ScoreSpec(k=3, item_names=("clarity", "accuracy", "style"), hi=5, select="unique"), ITEM_TEXTS),
    (ScoreSpec(nonce="3f9a1c"), [t for t in TAG_TEXTS if "3f9a1c" in t] + TAG_TEXTS[:3]),
    (ScoreSpec(fractions="divide", integer=False, lo=-1, hi=1), TAG_TEXTS[3:9]),
    (ScoreSpec(format="verdict", labels=("WRONG", "RIGHT")), VERDICT_TEXTS),
    (ScoreSpec(format="verdict", labels={"RIGHT": 1.0, "WRONG": -1.0}, case_sensitive=True, select="unique"), VERDICT_TEXTS),
]
TRITON_SPECS = [spec for spec, _ in TRITON_CASES]


def encode(tokenizer, texts, pad_id=0, extra=3):
    """Right-padded ids [B, T] (garbage after each length, to prove it is ignored) and lengths."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    T = max(1, max(len(r) for r in rows)) + extra
    junk = tokenizer("<score>0</score>", add_special_tokens=False)["input_ids"]
    ids = torch.full((len(rows), T), pad_id, dtype=torch.int64)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.int64)
        tail = junk[: T - len(r)]
        ids[b, len(r): len(r) + len(tail)] = torch.tensor(tail, dtype=torch.int64)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.int64)


def assert_same(a, b, what=""):
    assert torch.equal(a.status.cpu(), b.status.cpu()), (what, a.status, b.status)
    assert torch.equal(a.values.cpu().isnan(), b.values.cpu().isnan()), (what, a.values, b.values)
    assert torch.equal(a.values.cpu().nan_to_num(), b.values.cpu().nan_to_num()), (what, a.values, b.values)


def test_table_decodes_exactly_what_the_tokenizer_encoded(smollm2, smollm2_table):
    table = smollm2_table
    assert table.vocab_size >= len(smollm2) and table.data.dtype == torch.uint8
    for text in JUDGE_TEXTS + ["\u4e2d\u6587\uff1a\uff17\uff0f\uff11\uff10", "tabs\tand\nnewlines  ", "\\boxed{\\frac{1}{2}}"]:
        ids = smollm2(text, add_special_tokens=False)["input_ids"]
        assert table.decode(ids) == text.encode("utf-8"), text
        assert smollm2.decode(ids) == text
    # special tokens decode to nothing, as decode(skip_special_tokens=True) does
    for sid in smollm2.all_special_ids:
        assert table.token_bytes(sid) == b""


def test_flat_row_bytes_matches_per_row_decode(smollm2, smollm2_table):
    ids, lengths = encode(smollm2, JUDGE_TEXTS)
    flat, offsets = flat_row_bytes(ids, lengths, smollm2_table, chunk_bytes=1 << 12)  # several chunks
    rows = [bytes(flat[offsets[b]: offsets[b + 1]].tolist()) for b in range(len(JUDGE_TEXTS))]
    assert rows == [t.encode() for t in JUDGE_TEXTS]


@pytest.mark.parametrize("spec, texts", TRITON_CASES, ids=[f"{s.format}-{s.select}-k{s.k}-{i}" for i, (s, _) in enumerate(TRITON_CASES)])
def test_triton_token_parser_matches_cpp_on_real_tokens(smollm2, smollm2_table, spec, texts):
    ids, lengths = encode(smollm2, texts)
    want = parse_scores(texts, spec, backend=TEXT_BACKEND)
    got = parse_token_scores(ids.to(DEVICE), lengths.to(DEVICE), smollm2_table, spec, backend="triton")
    assert got.values.device.type == DEVICE and got.spans is None
    assert_same(got, want, spec)


def test_triton_per_row_nonces_and_small_buffer_chunks(smollm2, smollm2_table):
    texts = ["<score-aa1>3</score-aa1> <score-bb2>4</score-bb2>"] * 3 + ["<score-bb2>6</score-bb2>"]
    nonces = ["aa1", "bb2", "cc3", "bb2"]
    ids, lengths = encode(smollm2, texts)
    spec = ScoreSpec()
    want = parse_scores(texts, spec, nonces=nonces, backend=TEXT_BACKEND)
    # a buffer of one row at a time exercises the chunk loop and the row offsets of the patterns
    got = parse_token_scores(ids.to(DEVICE), lengths.to(DEVICE), smollm2_table, spec, backend="triton", nonces=nonces,
                             max_buffer_bytes=1)
    assert_same(got, want)
    assert got.status.flatten().tolist() == [0, 0, 1, 0]  # row 2's nonce appears nowhere: MISSING
    assert got.values[[0, 1, 3], 0].tolist() == [3.0, 4.0, 6.0] and math.isnan(got.values[2, 0].item())


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("fmt", ["tag", "kv", "json", "boxed", "verdict"])
def test_host_token_backends_read_every_format(smollm2, smollm2_table, backend, fmt):
    if backend == "cpu" and not HAS_CPU:
        pytest.skip("mpo_fast._C is not built")
    texts = JUDGE_TEXTS + ["**Score:** 7/10", '```json\n{"score": 8}\n```', "so \\boxed{\\frac{3}{4}}"]
    spec = ScoreSpec(format=fmt, labels=("WRONG", "RIGHT")) if fmt == "verdict" else ScoreSpec(format=fmt)
    ids, lengths = encode(smollm2, texts)
    assert_same(parse_token_scores(ids, lengths, smollm2_table, spec, backend=backend),
                parse_scores(texts, spec, backend=TEXT_BACKEND), (backend, fmt))


def test_lengths_and_ids_outside_the_vocabulary():
    table = TokenByteTable(torch.arange(256, dtype=torch.uint8)[:, None].clone(), torch.ones(256, dtype=torch.int32))
    text = b"<score>7</score>"
    ids = torch.tensor([list(text) + [60, 115], [60, 115, 99, 111, 114, 101, 62, 999, -5, 56, 60, 47, 115, 99] + [999] * 4], dtype=torch.int64)
    lengths = torch.tensor([len(text), 100])  # row 1: more than T, and two ids outside the table
    # row 1 reads "<score>" + "8" + "</sc": ids 999 and -5 are empty tokens, the tag is cut off
    for backend in ("triton", "reference") + (("cpu",) if HAS_CPU else ()):
        got = parse_token_scores(ids.to(DEVICE) if backend == "triton" else ids,
                                 lengths.to(DEVICE) if backend == "triton" else lengths, table, ScoreSpec(), backend=backend)
        assert got.status.cpu().flatten().tolist() == [0, 5], backend
        assert got.values[0, 0].item() == 7.0


def test_fused_parse_and_group_advantages(smollm2, smollm2_table):
    texts = [f"Rationale {i}. <clarity>{i % 6}</clarity> <accuracy>{(i * 3) % 6}</accuracy>" for i in range(12)]
    texts[3] = "The judge forgot the accuracy tag. <clarity>4</clarity>"
    texts[8] = "<clarity>9</clarity> <accuracy>1</accuracy>"  # out of range: masked, not 0
    spec = ScoreSpec(k=2, item_names=("clarity", "accuracy"), hi=5)
    ids, lengths = encode(smollm2, texts)
    weights = [0.1, 0.1]
    out = parse_scores_and_advantages(ids.to(DEVICE), lengths.to(DEVICE), smollm2_table, spec, group_size=4,
                                      weights=weights, backend="triton")
    parsed = parse_scores(texts, spec, backend=TEXT_BACKEND)
    valid = parsed.all_ok
    rewards = torch.where(valid, (parsed.values.nan_to_num() * torch.tensor(weights)).sum(1), 0.0)
    assert out.valid.cpu().tolist() == valid.tolist() and out.valid.device.type == DEVICE
    assert not out.valid[3] and not out.valid[8]
    torch.testing.assert_close(out.rewards.cpu(), rewards)
    want, _ = ref_adv.group_advantages(rewards.double(), 4, "grpo", 1e-6, valid)
    torch.testing.assert_close(out.advantages.cpu().double(), want, rtol=1e-5, atol=1e-6)
    assert out.advantages[3].item() == 0.0 and out.advantages[8].item() == 0.0
    # the host backends give the same rewards and advantages
    host = parse_scores_and_advantages(ids, lengths, smollm2_table, spec, group_size=4, weights=weights,
                                       backend="cpu" if HAS_CPU else "reference")
    torch.testing.assert_close(host.rewards, out.rewards.cpu())
    torch.testing.assert_close(host.advantages, out.advantages.cpu())


def test_token_api_rejects_bad_arguments(smollm2_table):
    ids = torch.zeros((2, 4), dtype=torch.int64)
    lengths = torch.tensor([4, 4])
    with pytest.raises(ValueError, match="2-D"):
        parse_token_scores(ids[0], lengths, smollm2_table, ScoreSpec())
    with pytest.raises(TypeError, match="int32 or int64"):
        parse_token_scores(ids.float(), lengths, smollm2_table, ScoreSpec())
    with pytest.raises(ValueError, match="one entry per row"):
        parse_token_scores(ids, lengths[:1], smollm2_table, ScoreSpec())
    with pytest.raises(TypeError, match="TokenByteTable"):
        parse_token_scores(ids, lengths, {}, ScoreSpec())
    with pytest.raises(ValueError, match="triton token-id parser reads formats"):
        parse_token_scores(ids, lengths, smollm2_table, ScoreSpec(format="kv"), backend="triton")
    with pytest.raises(ValueError, match="weights has 3 entries"):
        parse_scores_and_advantages(ids, lengths, smollm2_table, ScoreSpec(), 2, weights=[1, 2, 3])


_AOT_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from mpo_fast.kernels import parse_tokens as k
sig = {"buf_ptr": "*u8", "row_cap": "i32", "row_len_ptr": "*i32", "pat_ptr": "*u8", "pat_len_ptr": "*i32",
       "pat_row_stride": "i32", "pat_len_row_stride": "i32", "lo_ptr": "*fp64", "hi_ptr": "*fp64",
       "labels_ptr": "*u8", "label_len_ptr": "*i32", "label_val_ptr": "*fp64", "NL": "i32", "weights_ptr": "*fp32",
       "values_ptr": "*fp32", "status_ptr": "*i8", "reward_ptr": "*fp32", "valid_ptr": "*i8", "row_offset": "i32"}
cfg = dict(K=3, KP=4, G=3, BY_NAME=True, SELECT=2, INTEGER=True, FRACTIONS=0, VERDICT=True, CASE_SENSITIVE=False,
           WITH_REWARD=True, PMAX=32, LMAX=8, BLOCK=1024, CAP=256)
sig.update({c: "constexpr" for c in cfg})
target = GPUTarget("cuda", 90, 32)
c = triton.compile(triton.compiler.ASTSource(fn=k._parse_rows_kernel, signature=sig, constexprs=cfg), target=target)
assert c.asm["cubin"]
dsig = {"ids_ptr": "*i64", "lengths_ptr": "*i32", "offsets_ptr": "*i32", "table_ptr": "*u8", "table_len_ptr": "*i32",
        "buf_ptr": "*u8", "row_len_ptr": "*i32", "T": "i32", "row_cap": "i32", "ids_row_stride": "i32", "V": "i32",
        "W": "constexpr", "BLOCK_T": "constexpr", "WP": "constexpr"}
c = triton.compile(triton.compiler.ASTSource(fn=k._detokenize_kernel, signature=dsig,
                                             constexprs={"W": 81, "BLOCK_T": 32, "WP": 128}), target=target)
assert c.asm["cubin"]
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_hopper(tmp_path):
    """The interpreter accepts code the GPU compiler rejects (types across branches, masks): build
    both kernels for sm_90 ahead of time with Triton's NVIDIA backend and ptxas, no GPU needed.
    In a subprocess, since this process interprets Triton."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("Triton with its NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "ptxas" in proc.stderr.lower() and "not found" in proc.stderr.lower():
        pytest.skip("no ptxas for the NVIDIA backend")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.gpu
def test_gpu_large_batch_matches_cpp(smollm2, smollm2_table):
    texts = [JUDGE_TEXTS[i % len(JUDGE_TEXTS)] + f" <score>{i % 11}</score>" * (i % 3) for i in range(4096)]
    ids, lengths = encode(smollm2, texts)
    for spec in TRITON_SPECS:
        got = parse_token_scores(ids.cuda(), lengths.cuda(), smollm2_table, spec, backend="triton")
        assert_same(got, parse_scores(texts, spec, backend=TEXT_BACKEND), spec)


@pytest.mark.slow
def test_triton_matches_cpp_on_random_judge_text(smollm2, smollm2_table):
    """Hypothesis-generated judge-like text (near-miss tags, full-width digits, truncations),
    tokenised by SmolLM2, through the kernel: same statuses and values as C++ on the text."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from .strategies import structured_text

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(structured_text, min_size=1, max_size=4), st.sampled_from(TRITON_SPECS))
    def run(raw, spec):
        texts = [r.decode("utf-8", "replace") for r in raw]
        ids, lengths = encode(smollm2, texts)
        got = parse_token_scores(ids.to(DEVICE), lengths.to(DEVICE), smollm2_table, spec, backend="triton")
        assert_same(got, parse_scores(texts, spec, backend=TEXT_BACKEND), (texts, spec))

    run()
