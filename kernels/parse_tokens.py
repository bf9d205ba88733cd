"""Triton kernels that read judge scores from generated token ids, on the device that holds them.

Two kernels, no host round trip and no device sync:
1. `_detokenize_kernel` writes each row's bytes (token id -> bytes table built from the tokenizer)
   into a [rows, row_cap] buffer, row_cap = T * table width, so the size is known without reading
   the lengths back; the launcher processes rows in chunks to bound that buffer.
2. `_parse_rows_kernel`, one program per row, implements the tag and verdict formats of the
   grammar in mpo_fast/parsing/spec.py (the same as the C++ parser, byte for byte): a vectorised
   search for the open tag, BLOCK bytes at a time; for each candidate that the selection needs, a
   vectorised search of the 256-byte window for '<' and the close tag, then a small scalar state
   machine over the content (a score is a few bytes). Values are exact: a literal has at most 15
   digits, so M / 10**f in float64 is the correctly rounded value, as in C++ and Python.
   With WITH_REWARD it also writes each row's reward (weighted sum of its items) and whether all
   of them parsed, ready for group advantages.

Statuses: OK=0 MISSING=1 MALFORMED=2 OUT_OF_RANGE=3 AMBIGUOUS=4 TRUNCATED=5.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

CONTENT_CAP = 256  # the grammar's window for a tag's content
_DIGIT_CAP = tl.constexpr(15)  # digits per number (grammar); 10**15 < 2**53 keeps M / 10**f exact


def _interpreting() -> bool:
    # The CPU interpreter pays ~50 us per op whatever the tile size, so it gets 4-8x larger tiles.
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _detokenize_kernel(
    ids_ptr,
    lengths_ptr,
    offsets_ptr,
    table_ptr,
    table_len_ptr,
    buf_ptr,
    row_len_ptr,
    T,
    row_cap,
    ids_row_stride,
    V,
    W: tl.constexpr,
    BLOCK_T: tl.constexpr,
    WP: tl.constexpr,
):
    row = tl.program_id(0)
    blk = tl.program_id(1)
    t = blk * BLOCK_T + tl.arange(0, BLOCK_T)
    n_tok = tl.load(lengths_ptr + row)
    live = (t < T) & (t < n_tok)
    ids = tl.load(ids_ptr + row.to(tl.int64) * ids_row_stride + t, mask=live, other=0).to(tl.int64)
    live = live & (ids >= 0) & (ids < V)  # ids outside the table are empty tokens, never a wild read
    tlen = tl.load(table_len_ptr + ids, mask=live, other=0)
    off = tl.load(offsets_ptr + row.to(tl.int64) * T + t, mask=live, other=0)  # exclusive cumsum of tlen
    w = tl.arange(0, WP)
    take = live[:, None] & (w[None, :] < tlen[:, None])
    data = tl.load(table_ptr + ids[:, None] * W + w[None, :], mask=take, other=0)
    dst = off[:, None] + w[None, :]
    tl.store(buf_ptr + row.to(tl.int64) * row_cap + dst, data, mask=take & (dst < row_cap))
    if blk == 0:
        # offsets hold the exclusive prefix sum; the row's length adds its last token's bytes
        last = tl.maximum(tl.minimum(n_tok, T) - 1, 0)
        last_id = tl.load(ids_ptr + row.to(tl.int64) * ids_row_stride + last).to(tl.int64)
        last_ok = (n_tok > 0) & (last_id >= 0) & (last_id < V)
        last_len = tl.load(table_len_ptr + last_id, mask=last_ok, other=0)
        total = tl.where(n_tok > 0, tl.load(offsets_ptr + row.to(tl.int64) * T + last) + last_len, 0)
        tl.store(row_len_ptr + row, total)


@triton.jit
def _open_tag_hits(base, offs, n, pat_base, olen, PMAX: tl.constexpr):
    """bool [BLOCK]: an open tag (pattern bytes at pat_base, olen of them) starts at offs."""
    hit = (offs + olen <= n) & (tl.load(base + offs, mask=offs < n, other=0) == 60)  # '<'
    if tl.sum(hit.to(tl.int32), axis=0) > 0:
        for l in tl.static_range(1, PMAX):
            c = tl.load(pat_base + l)
            b = tl.load(base + offs + l, mask=hit & (offs + l < n), other=0)
            # tl.where keeps the mask a plain bool vector (the interpreter widens scalar | vector)
            hit = hit & tl.where(olen <= l, offs >= 0, b == c)
    return hit


@triton.jit
def _parse_value(base, s, q, INTEGER: tl.constexpr, FRACTIONS: tl.constexpr):
    """Content [s, q) as VALUE. Returns (status 0 OK / 2 MALFORMED, a, b, has_den) with a, b float64."""
    state = tl.full((), 0, tl.int32)
    i = s
    neg = tl.full((), 0, tl.int32)
    m_num = tl.full((), 0, tl.int64)
    f_num = tl.full((), 0, tl.int32)
    d_num = tl.full((), 0, tl.int32)
    nz_num = tl.full((), 0, tl.int32)
    m_den = tl.full((), 0, tl.int64)
    f_den = tl.full((), 0, tl.int32)
    d_den = tl.full((), 0, tl.int32)
    nz_den = tl.full((), 0, tl.int32)
    while (i < q) & (state != 11):
        # one symbol at byte i: full-width forms mapped to ASCII, any other non-ASCII byte to 128
        # (inlined: each nested jit call costs the interpreter ~4 ms)
        b0 = tl.load(base + i).to(tl.int32)
        b1 = tl.load(base + i + 1, mask=i + 1 < q, other=0).to(tl.int32)
        b2 = tl.load(base + i + 2, mask=i + 2 < q, other=0).to(tl.int32)
        three = i + 2 < q
        fw = three & (b0 == 0xEF) & (b1 == 0xBC)
        fw_digit = fw & (b2 >= 0x90) & (b2 <= 0x99)
        sym = tl.where(b0 < 128, b0, 128)
        sym = tl.where(fw_digit, b2 - 0x90 + 48, sym)
        sym = tl.where(fw & (b2 == 0x8B), 43, sym)  # +
        sym = tl.where(fw & (b2 == 0x8D), 45, sym)  # -
        sym = tl.where(fw & (b2 == 0x8E), 46, sym)  # .
        sym = tl.where(fw & (b2 == 0x8F), 47, sym)  # /
        sym = tl.where(fw & (b2 == 0x9A), 58, sym)  # :
        fw_any = fw_digit | (fw & ((b2 == 0x8B) | (b2 == 0x8D) | (b2 == 0x8E) | (b2 == 0x8F) | (b2 == 0x9A)))
        minus = three & (b0 == 0xE2) & (b1 == 0x88) & (b2 == 0x92)
        ideo = three & (b0 == 0xE3) & (b1 == 0x80) & (b2 == 0x80)
        nbsp = (i + 1 < q) & (b0 == 0xC2) & (b1 == 0xA0)
        sym = tl.where(minus, 45, sym)
        sym = tl.where(ideo | nbsp, 32, sym)
        ln = tl.where(fw_any | minus | ideo, 3, tl.where(nbsp, 2, 1))
        ws = (sym == 32) | ((sym >= 9) & (sym <= 13))
        dig = (sym >= 48) & (sym <= 57)
        dv = (sym - 48).to(tl.int64)
        dot = sym == 46
        slash = sym == 47
        sign = (sym == 43) | (sym == 45)
        nxt = tl.full((), 11, tl.int32)
        # numerator
        nxt = tl.where((state == 0) & ws, 0, nxt)
        nxt = tl.where((state == 0) & sign, 1, nxt)
        nxt = tl.where(((state == 0) | (state == 1) | (state == 2)) & dig, 2, nxt)
        nxt = tl.where(((state == 0) | (state == 1) | (state == 2)) & dot, 3, nxt)
        nxt = tl.where(((state == 3) | (state == 4)) & dig, 4, nxt)
        nxt = tl.where(((state == 2) | (state == 4) | (state == 5)) & ws, 5, nxt)
        nxt = tl.where(((state == 2) | (state == 4) | (state == 5)) & slash, 6, nxt)
        # denominator
        nxt = tl.where((state == 6) & ws, 6, nxt)
        nxt = tl.where(((state == 6) | (state == 7)) & dig, 7, nxt)
        nxt = tl.where(((state == 6) | (state == 7)) & dot, 8, nxt)
        nxt = tl.where(((state == 8) | (state == 9)) & dig, 9, nxt)
        nxt = tl.where(((state == 7) | (state == 9) | (state == 10)) & ws, 10, nxt)
        neg = tl.where((state == 0) & (sym == 45), 1, neg)
        in_num = (nxt == 2) | (nxt == 4)
        in_den = (nxt == 7) | (nxt == 9)
        m_num = tl.where(in_num & dig, m_num * 10 + dv, m_num)
        d_num = tl.where(in_num & dig, d_num + 1, d_num)
        f_num = tl.where((nxt == 4) & dig, f_num + 1, f_num)
        nz_num = tl.where((nxt == 4) & dig & (sym != 48), 1, nz_num)
        m_den = tl.where(in_den & dig, m_den * 10 + dv, m_den)
        d_den = tl.where(in_den & dig, d_den + 1, d_den)
        f_den = tl.where((nxt == 9) & dig, f_den + 1, f_den)
        nz_den = tl.where((nxt == 9) & dig & (sym != 48), 1, nz_den)
        nxt = tl.where((d_num > _DIGIT_CAP) | (d_den > _DIGIT_CAP), 11, nxt)
        state = nxt
        i += ln
    accept = (state == 2) | (state == 4) | (state == 5) | (state == 7) | (state == 9) | (state == 10)
    has_den = (state == 7) | (state == 9) | (state == 10)
    # 10**f by exact float64 products (f <= 15); M < 2**53, so one division rounds correctly
    p_num = tl.full((), 1.0, tl.float64)
    p_den = tl.full((), 1.0, tl.float64)
    for t in tl.static_range(_DIGIT_CAP):
        p_num = tl.where(t < f_num, p_num * 10.0, p_num)
        p_den = tl.where(t < f_den, p_den * 10.0, p_den)
    a = m_num.to(tl.float64) / p_num
    a = tl.where(neg == 1, -a, a)
    b = m_den.to(tl.float64) / p_den
    ok = accept
    if INTEGER:
        ok = ok & (nz_num == 0) & (nz_den == 0)
    if FRACTIONS == 2:
        ok = ok & ~has_den
    ok = ok & ~(has_den & (b == 0.0))
    status = tl.where(ok, 0, 2)
    return status, a, b, has_den


@triton.jit
def _parse_verdict(base, s, q, labels_ptr, label_len_ptr, label_val_ptr, NL, LMAX: tl.constexpr, CASE_SENSITIVE: tl.constexpr):
    """Content [s, q) trimmed of W, compared with the labels. Returns (status, value)."""
    # leading W: ASCII whitespace, C2 A0 (no-break space), E3 80 80 (ideographic space)
    a = s
    go = a < q
    while go:
        c1 = tl.load(base + a).to(tl.int32)
        c2 = tl.load(base + a + 1, mask=a + 1 < q, other=0).to(tl.int32)
        c3 = tl.load(base + a + 2, mask=a + 2 < q, other=0).to(tl.int32)
        one = (c1 == 32) | ((c1 >= 9) & (c1 <= 13))
        nb = (a + 1 < q) & (c1 == 0xC2) & (c2 == 0xA0)
        ideo = (a + 2 < q) & (c1 == 0xE3) & (c2 == 0x80) & (c3 == 0x80)
        step = tl.where(one, 1, tl.where(nb, 2, tl.where(ideo, 3, 0)))
        a = a + step
        go = (step > 0) & (a < q)
    # Trailing W, read backwards: the recognised forms' bytes after the first never start one,
    # so the last symbol is recognised from its final bytes alone.
    z = q
    go = z > a
    while go:
        c1 = tl.load(base + z - 1).to(tl.int32)
        c2 = tl.load(base + z - 2, mask=z - 2 >= a, other=0).to(tl.int32)
        c3 = tl.load(base + z - 3, mask=z - 3 >= a, other=0).to(tl.int32)
        one = (c1 == 32) | ((c1 >= 9) & (c1 <= 13))
        nb = (z - 2 >= a) & (c2 == 0xC2) & (c1 == 0xA0)
        ideo = (z - 3 >= a) & (c3 == 0xE3) & (c2 == 0x80) & (c1 == 0x80)
        step = tl.where(one, 1, tl.where(nb, 2, tl.where(ideo, 3, 0)))
        z = z - step
        go = (step > 0) & (z > a)
    n = z - a
    t = tl.arange(0, LMAX)
    content = tl.load(base + a + t, mask=t < n, other=0).to(tl.int32)
    if not CASE_SENSITIVE:
        content = tl.where((content >= 65) & (content <= 90), content + 32, content)
    status = tl.full((), 2, tl.int32)
    value = tl.full((), 0.0, tl.float64)
    for j in range(NL):
        ll = tl.load(label_len_ptr + j)
        lab = tl.load(labels_ptr + j * LMAX + t, mask=t < ll, other=0).to(tl.int32)
        if not CASE_SENSITIVE:
            lab = tl.where((lab >= 65) & (lab <= 90), lab + 32, lab)
        same = (ll == n) & (tl.sum((content != lab).to(tl.int32), axis=0) == 0)
        value = tl.where(same & (status != 0), tl.load(label_val_ptr + j), value)
        status = tl.where(same, 0, status)
    return status, value


@triton.jit
def _parse_candidate(
    base, p, n, pat_base, olen,
    labels_ptr, label_len_ptr, label_val_ptr, NL,
    VERDICT: tl.constexpr, INTEGER: tl.constexpr, FRACTIONS: tl.constexpr, CASE_SENSITIVE: tl.constexpr,
    PMAX: tl.constexpr, LMAX: tl.constexpr, CAP: tl.constexpr,
):
    """The tag candidate whose open tag starts at p: (status, a, b, has_den, direct)."""
    s = p + olen
    w = tl.arange(0, CAP)
    in_text = s + w < n
    win = tl.load(base + s + w, mask=in_text, other=0)
    q_rel = tl.min(tl.where(in_text & (win == 60), w, CAP), axis=0)
    q = s + q_rel
    # close tag: '<' '/' then the open tag's bytes after its '<'
    close_len = olen + 1
    t = tl.arange(0, 2 * PMAX)
    expected = tl.load(pat_base + t - 1, mask=(t >= 2) & (t - 1 < olen), other=0).to(tl.int32)
    expected = tl.where(t == 0, 60, tl.where(t == 1, 47, expected))
    got = tl.load(base + q + t, mask=(t < close_len) & (q + t < n), other=0).to(tl.int32)
    mismatch = (t < close_len) & (q + t < n) & (got != expected)
    prefix_ok = tl.sum(mismatch.to(tl.int32), axis=0) == 0
    found = q_rel < CAP
    complete = found & prefix_ok & (n - q >= close_len)
    status = tl.where(found, tl.where(prefix_ok, 5, 2), tl.where(s + CAP >= n, 5, 2))
    a = tl.full((), 0.0, tl.float64)
    b = tl.full((), 1.0, tl.float64)
    has_den = q_rel < 0  # False, as a tensor
    direct = q_rel < 0
    if complete:
        if VERDICT:
            status, a = _parse_verdict(base, s, q, labels_ptr, label_len_ptr, label_val_ptr, NL, LMAX, CASE_SENSITIVE)
            direct = q_rel >= 0
        else:
            status, a, b, has_den = _parse_value(base, s, q, INTEGER, FRACTIONS)
    return status, a, b, has_den, direct


@triton.jit
def _take(
    p, j, m, g, base, n, pat_base, olen, lo, hi, lanes, lane_ok,
    cnt, first_st, first_v, last_st, last_v, agree,
    labels_ptr, label_len_ptr, label_val_ptr, NL,
    K: tl.constexpr, BY_NAME: tl.constexpr, SELECT: tl.constexpr, INTEGER: tl.constexpr,
    FRACTIONS: tl.constexpr, VERDICT: tl.constexpr, CASE_SENSITIVE: tl.constexpr,
    PMAX: tl.constexpr, LMAX: tl.constexpr, CAP: tl.constexpr,
):
    """Parses candidate number j (open tag at p) and folds it into the items that take it."""
    st, a, b, has_den, direct = _parse_candidate(
        base, p, n, pat_base, olen, labels_ptr, label_len_ptr, label_val_ptr, NL,
        VERDICT, INTEGER, FRACTIONS, CASE_SENSITIVE, PMAX, LMAX, CAP,
    )
    # per item: fraction scaling and the range use the item's own lo / hi
    b = tl.where(b == 0.0, 1.0, b)  # b == 0 was already MALFORMED; keep the arithmetic finite
    if FRACTIONS == 1:
        scaled = a / b
    else:
        scaled = tl.where(b == hi, a, a * hi / b)
    v = tl.where(has_den & ~direct, scaled, a)
    in_range = (lo <= v) & (v <= hi)
    st_l = tl.where((st == 0) & ~direct, tl.where(in_range, st, 3), st)
    if BY_NAME:
        sel = lanes == g
    else:
        if m <= K:
            sel = lanes == j
        else:
            if SELECT == 0:
                sel = lanes == j
            elif SELECT == 1:
                sel = lanes == j - (m - K)
            else:  # unique: item i weighs candidates i .. i + m - K
                sel = (lanes >= j - (m - K)) & (lanes <= j)
    sel = sel & lane_ok
    differs = (st_l != last_st) | ((st_l == 0) & (v != last_v))
    agree = tl.where(sel & (cnt > 0) & differs, 0, agree)
    first_st = tl.where(sel & (cnt == 0), st_l, first_st)
    first_v = tl.where(sel & (cnt == 0), v, first_v)
    last_st = tl.where(sel, st_l, last_st)
    last_v = tl.where(sel, v, last_v)
    cnt = tl.where(sel, cnt + 1, cnt)
    return cnt, first_st, first_v, last_st, last_v, agree


@triton.jit
def _parse_rows_kernel(
    buf_ptr,
    row_cap,
    row_len_ptr,
    pat_ptr,
    pat_len_ptr,
    pat_row_stride,
    pat_len_row_stride,
    lo_ptr,
    hi_ptr,
    labels_ptr,
    label_len_ptr,
    label_val_ptr,
    NL,
    weights_ptr,
    values_ptr,
    status_ptr,
    reward_ptr,
    valid_ptr,
    row_offset,
    K: tl.constexpr,
    KP: tl.constexpr,
    G: tl.constexpr,
    BY_NAME: tl.constexpr,
    SELECT: tl.constexpr,
    INTEGER: tl.constexpr,
    FRACTIONS: tl.constexpr,
    VERDICT: tl.constexpr,
    CASE_SENSITIVE: tl.constexpr,
    WITH_REWARD: tl.constexpr,
    PMAX: tl.constexpr,
    LMAX: tl.constexpr,
    BLOCK: tl.constexpr,
    CAP: tl.constexpr,
):
    local = tl.program_id(0)
    row = local + row_offset  # row of the whole batch (outputs, per-row patterns); local: row of this chunk
    n = tl.load(row_len_ptr + local)
    base = buf_ptr + local.to(tl.int64) * row_cap
    lanes = tl.arange(0, KP)
    lane_ok = lanes < K
    lo = tl.load(lo_ptr + lanes, mask=lane_ok, other=0.0)
    hi = tl.load(hi_ptr + lanes, mask=lane_ok, other=1.0)
    cnt = tl.zeros([KP], tl.int32)
    first_st = tl.full([KP], 1, tl.int32)
    first_v = tl.zeros([KP], tl.float64)
    last_st = tl.full([KP], 1, tl.int32)
    last_v = tl.zeros([KP], tl.float64)
    agree = tl.full([KP], 1, tl.int32)
    for g in range(G):
        olen = tl.load(pat_len_ptr + row.to(tl.int64) * pat_len_row_stride + g)
        pat_base = pat_ptr + row.to(tl.int64) * pat_row_stride + g * PMAX
        # pass 1: how many candidates, and where the first and the last start
        m = tl.full((), 0, tl.int32)
        first_p = tl.full((), 2147483647, tl.int32)
        last_p = tl.full((), -1, tl.int32)
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            hit = _open_tag_hits(base, offs, n, pat_base, olen, PMAX)
            m += tl.sum(hit.to(tl.int32), axis=0)
            first_p = tl.minimum(first_p, tl.min(tl.where(hit, offs, 2147483647), axis=0))
            last_p = tl.maximum(last_p, tl.max(tl.where(hit, offs, -1), axis=0))
        # the candidate ordinals j some item takes
        if BY_NAME:
            j_lo = tl.where(SELECT == 1, m - 1, 0)
            j_hi = tl.where(SELECT == 0, 0, m - 1)
        else:
            j_lo = tl.where((SELECT == 1) & (m > K), m - K, 0)
            j_hi = tl.where((SELECT == 0) & (m > K), K - 1, m - 1)
        if (j_lo == j_hi) & (m > 0):
            # one candidate is needed, and pass 1 saw where it starts (j_lo is 0 or m - 1 here)
            p = tl.where(j_lo == 0, first_p, last_p)
            cnt, first_st, first_v, last_st, last_v, agree = _take(
                p, j_lo, m, g, base, n, pat_base, olen, lo, hi, lanes, lane_ok,
                cnt, first_st, first_v, last_st, last_v, agree,
                labels_ptr, label_len_ptr, label_val_ptr, NL,
                K, BY_NAME, SELECT, INTEGER, FRACTIONS, VERDICT, CASE_SENSITIVE, PMAX, LMAX, CAP,
            )
        else:
            # pass 2: candidates in order, parsing those with j_lo <= j <= j_hi
            j = tl.full((), 0, tl.int32)
            start = tl.full((), 0, tl.int32)
            go = m > 0
            while go:
                offs = start + tl.arange(0, BLOCK)
                hit = _open_tag_hits(base, offs, n, pat_base, olen, PMAX)
                nh = tl.sum(hit.to(tl.int32), axis=0)
                wanted = (nh > 0) & (j + nh > j_lo) & (j <= j_hi)
                hit = tl.where(wanted, hit, offs < 0)
                j = tl.where(wanted, j, j + nh)
                while tl.sum(hit.to(tl.int32), axis=0) > 0:
                    p = tl.min(tl.where(hit, offs, 2147483647), axis=0)
                    if (j >= j_lo) & (j <= j_hi):
                        cnt, first_st, first_v, last_st, last_v, agree = _take(
                            p, j, m, g, base, n, pat_base, olen, lo, hi, lanes, lane_ok,
                            cnt, first_st, first_v, last_st, last_v, agree,
                            labels_ptr, label_len_ptr, label_val_ptr, NL,
                            K, BY_NAME, SELECT, INTEGER, FRACTIONS, VERDICT, CASE_SENSITIVE, PMAX, LMAX, CAP,
                        )
                    hit = hit & (offs != p)
                    j += 1
                start += BLOCK
                go = (start < n) & (j <= j_hi)
    # selection per item
    if SELECT == 0:
        st = tl.where(cnt == 0, 1, first_st)
        val = first_v
    else:
        st = tl.where(cnt == 0, 1, last_st)
        val = last_v
    if SELECT == 2:
        st = tl.where((cnt > 0) & (agree == 0), 4, st)
    out_v = tl.where(st == 0, val.to(tl.float32), float("nan"))
    tl.store(values_ptr + row.to(tl.int64) * K + lanes, out_v, mask=lane_ok)
    tl.store(status_ptr + row.to(tl.int64) * K + lanes, st.to(tl.int8), mask=lane_ok)
    if WITH_REWARD:
        w = tl.load(weights_ptr + lanes, mask=lane_ok, other=0.0)
        all_ok = tl.min(((st == 0) | ~lane_ok).to(tl.int32), axis=0)
        reward = tl.sum(tl.where(lane_ok & (st == 0), out_v * w, 0.0), axis=0)
        tl.store(reward_ptr + row, tl.where(all_ok == 1, reward, 0.0))
        tl.store(valid_ptr + row, all_ok.to(tl.int8))


def detokenize(ids: torch.Tensor, lengths: torch.Tensor, table: torch.Tensor, table_len: torch.Tensor, row_cap: int):
    """Bytes of each row: (buf uint8 [B, row_cap], row_len int32 [B]).

    ids [B, T] int32/int64 (ids outside the table count as empty tokens), lengths [B] live tokens
    per row, table uint8 [V, W], table_len int32 [V]; row_cap >= T * W.
    """
    ids = ids.contiguous()
    B, T = ids.shape
    V, W = table.shape
    buf = torch.empty((B, row_cap), dtype=torch.uint8, device=ids.device)
    row_len = torch.zeros(B, dtype=torch.int32, device=ids.device)
    if B == 0 or T == 0:
        return buf, row_len
    lens = lengths.to(torch.int32).clamp(0, T)
    in_vocab = (ids >= 0) & (ids < V)
    tok_len = table_len[ids.clamp(0, V - 1).long()]
    tok_len = torch.where(in_vocab & (torch.arange(T, device=ids.device)[None, :] < lens[:, None]), tok_len, 0)
    offsets = (torch.cumsum(tok_len, dim=1, dtype=torch.int32) - tok_len).contiguous()
    block_t = 256 if _interpreting() else 32  # GPU: 32 tokens x W bytes per program
    _detokenize_kernel[(B, triton.cdiv(T, block_t))](
        ids, lens, offsets, table, table_len, buf, row_len, T, row_cap, ids.stride(0), V,
        W=W, BLOCK_T=block_t, WP=triton.next_power_of_2(max(W, 1)),
    )
    return buf, row_len


def parse_rows(
    buf: torch.Tensor,
    row_len: torch.Tensor,
    patterns: torch.Tensor,
    pattern_lengths: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    labels: torch.Tensor,
    label_lengths: torch.Tensor,
    label_values: torch.Tensor,
    values: torch.Tensor,
    status: torch.Tensor,
    *,
    k: int,
    by_name: bool,
    select: int,
    integer: bool,
    fractions: int,
    verdict: bool,
    case_sensitive: bool,
    row_offset: int = 0,
    weights: torch.Tensor | None = None,
    rewards: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    block: int | None = None,
) -> None:
    """Parses the rows of buf into values/status rows [row_offset, row_offset + len(buf)).

    patterns: uint8 [R, G, PMAX] open tags `<NAME>` (R = 1 shared, or one per row of the whole batch),
    pattern_lengths: int32 [R, G]. lo/hi/label_values float64; labels uint8 [NL, LMAX].
    """
    rows = buf.shape[0]
    if rows == 0:
        return
    if block is None:
        block = 4096 if _interpreting() else 1024  # GPU: 1024 bytes of a row per step, 8 per thread
    G, PMAX = patterns.shape[1], patterns.shape[2]
    per_row = patterns.shape[0] > 1
    with_reward = weights is not None
    dummy = values
    _parse_rows_kernel[(rows,)](
        buf, buf.shape[1], row_len,
        patterns, pattern_lengths,
        G * PMAX if per_row else 0, G if per_row else 0,
        lo, hi, labels, label_lengths, label_values, labels.shape[0],
        weights if with_reward else dummy, values, status,
        rewards if with_reward else dummy, valid if with_reward else dummy,
        row_offset,
        K=k, KP=triton.next_power_of_2(k), G=G, BY_NAME=by_name, SELECT=select, INTEGER=integer,
        FRACTIONS=fractions, VERDICT=verdict, CASE_SENSITIVE=case_sensitive, WITH_REWARD=with_reward,
        PMAX=PMAX, LMAX=labels.shape[1], BLOCK=block, CAP=CONTENT_CAP,
    )
