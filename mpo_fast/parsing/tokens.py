"""Judge scores read straight from generated token ids, on the device that holds them.

An in-process judge generates ids [B, T] on the GPU. Decoding them to Python strings costs a
device->host copy, a tokenizer call and a host->device copy of the rewards. Here a table from
token id to bytes (built once from the tokenizer) lets the Triton kernels in
kernels/parse_tokens.py rebuild each row's bytes and parse them on the device;
`parse_scores_and_advantages` then feeds the rewards into `group_advantages` without a sync.

Backends: "triton" (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1; formats tag and
verdict), "cpu" (the C++ parser over the decoded bytes, every format; CUDA tensors are copied to
the host and back) and "reference" (bytes decoded in Python, the Python oracle).
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .. import _backend, _native
from ..reference import parse_scores as oracle
from .api import _check_nonces, _cpu_ext, default_threads
from .spec import FRACTIONS, SELECTS, ParsedScores, ScoreSpec

SUPPORTED = ("reference", "cpu", "triton")
TRITON_FORMATS = ("tag", "verdict")
DEFAULT_BUFFER_BYTES = 256 << 20  # device scratch for row bytes: rows are decoded in chunks that fit


# ---- token id -> bytes ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable-character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _decoder_types(node) -> list[str]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [t for d in node.get("decoders", []) for t in _decoder_types(d)]
    return [node.get("type", "")]


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>\Z")


@dataclass(frozen=True)
class TokenByteTable:
    """Bytes of every token id: data uint8 [V, W] (zero padded), lengths int32 [V].

    Special tokens are empty by default (as `decode(..., skip_special_tokens=True)`); for
    SentencePiece vocabularies a word's leading space is kept (the Python decoder strips it from
    the first token), which no score grammar can see.
    """

    data: torch.Tensor
    lengths: torch.Tensor
    _on_device: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def vocab_size(self) -> int:
        return self.data.shape[0]

    @property
    def width(self) -> int:
        return self.data.shape[1]

    def to(self, device) -> TokenByteTable:
        """This table on `device` (copied once per device, then reused)."""
        device = torch.device(device)
        if self.data.device == device:
            return self
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = TokenByteTable(self.data.to(device), self.lengths.to(device))
        return self._on_device[key]

    def token_bytes(self, token_id: int) -> bytes:
        n = int(self.lengths[token_id])
        return bytes(self.data[token_id, :n].tolist())

    def decode(self, ids: Sequence[int]) -> bytes:
        """The bytes of a sequence of ids (ids outside the table are empty)."""
        V = self.vocab_size
        return b"".join(self.token_bytes(int(i)) for i in ids if 0 <= int(i) < V)

    def decode_rows(self, ids: torch.Tensor, lengths: torch.Tensor) -> list[bytes]:
        """Each row's bytes as Python bytes (the reference path; slow but plain)."""
        ids, lengths = ids.cpu(), lengths.cpu()
        return [self.decode(ids[b, : max(0, min(int(lengths[b]), ids.shape[1]))].tolist()) for b in range(ids.shape[0])]


def token_byte_table(tokenizer, *, special_tokens: str = "skip") -> TokenByteTable:
    """Build the id -> bytes table from a Hugging Face tokenizer (fast or slow).

    Byte-level BPE vocabularies (GPT-2, Qwen, SmolLM2, Llama 3) map each token's characters back
    to bytes exactly; SentencePiece ones map '▁' to a space and `<0xNN>` to the byte; anything else
    falls back to decoding each token alone. special_tokens: "skip" (empty) or "text".
    """
    if special_tokens not in ("skip", "text"):
        raise ValueError(f"special_tokens={special_tokens!r}; expected 'skip' or 'text'")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    kinds = _decoder_types(json.loads(backend.to_str()).get("decoder")) if backend is not None else []
    if "ByteLevel" in kinds:
        kind = "byte_level"
    elif "ByteFallback" in kinds or "Metaspace" in kinds:
        kind = "sentencepiece"
    else:
        kind = "decode"
    vocab_size = len(tokenizer)
    if backend is not None:
        vocab_size = max(vocab_size, backend.get_vocab_size(with_added_tokens=True))
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    byte_of = _byte_level_decoder()
    pieces: list[bytes] = []
    for i in range(vocab_size):
        tok = backend.id_to_token(i) if backend is not None else tokenizer.convert_ids_to_tokens(i)
        if tok is None:
            pieces.append(b"")
        elif i in special_ids or (i in added and getattr(added[i], "special", False)):
            content = getattr(added.get(i), "content", tok)
            pieces.append(b"" if special_tokens == "skip" else content.encode("utf-8"))
        elif i in added:  # added non-special tokens are stored as plain text
            pieces.append(getattr(added[i], "content", tok).encode("utf-8"))
        elif kind == "byte_level" and all(ch in byte_of for ch in tok):
            pieces.append(bytes(byte_of[ch] for ch in tok))
        elif kind == "sentencepiece":
            m = _BYTE_TOKEN.match(tok)
            pieces.append(bytes([int(m.group(1), 16)]) if m else tok.replace("\u2581", " ").encode("utf-8"))
        else:
            pieces.append(tokenizer.decode([i]).encode("utf-8", "surrogatepass"))
    width = max(1, max(len(p) for p in pieces))
    data = torch.zeros((vocab_size, width), dtype=torch.uint8)
    flat = b"".join(p.ljust(width, b"\0") for p in pieces)
    data.view(-1).copy_(torch.frombuffer(bytearray(flat), dtype=torch.uint8))
    lengths = torch.tensor([len(p) for p in pieces], dtype=torch.int32)
    return TokenByteTable(data, lengths)


# ---- validation ----------------------------------------------------------------------------------
def _check_token_inputs(ids, lengths, table):
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise ValueError(
            f"ids must be a 2-D tensor [batch, tokens], got {type(ids).__name__}"
            + (f" with shape {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else "")
            + "; stack the generated sequences (right-padded) into one tensor"
        )
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"ids has dtype {ids.dtype}, expected int32 or int64 token ids")
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1 or lengths.shape[0] != ids.shape[0]:
        raise ValueError(
            f"lengths must be a 1-D tensor with one entry per row of ids ({ids.shape[0]}), got "
            f"{tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__}"
        )
    if lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"lengths has dtype {lengths.dtype}, expected int32 or int64")
    if lengths.device != ids.device:
        raise ValueError(f"lengths is on {lengths.device} but ids on {ids.device}; move them to one device")
    if not isinstance(table, TokenByteTable):
        raise TypeError(f"table must be a TokenByteTable (see token_byte_table(tokenizer)), got {type(table).__name__}")


def _resolve(backend: str, device: torch.device, spec: ScoreSpec) -> str:
    name = _backend.resolve("parse_token_scores", backend, device, SUPPORTED)
    if name == "triton" and spec.format not in TRITON_FORMATS:
        if backend == "triton":
            raise ValueError(
                f"the triton token-id parser reads formats {TRITON_FORMATS}, not {spec.format!r}; "
                "use backend='cpu' (C++ over the decoded bytes) or a tag/verdict spec"
            )
        return "cpu" if _cpu_ext("auto") is not None else "reference"
    if name == "cpu" and _cpu_ext(backend) is None:
        return "reference"
    return name


# ---- the triton path -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _DeviceSpec:
    patterns: torch.Tensor  # uint8 [1, G, PMAX]
    pattern_lengths: torch.Tensor  # int32 [1, G]
    lo: torch.Tensor
    hi: torch.Tensor
    labels: torch.Tensor
    label_lengths: torch.Tensor
    label_values: torch.Tensor


def _pattern_tensors(names_per_row: list[tuple[str, ...]]):
    """Open tags `<NAME>` as uint8 [rows, G, PMAX] (PMAX a power of two) and their lengths [rows, G].
    Built in one bytearray: per-row nonces for 64k rows take milliseconds, not a tensor per tag."""
    opens = [[f"<{n}>".encode() for n in names] for names in names_per_row]
    rows, groups = len(opens), len(opens[0])
    longest = max(len(o) for row in opens for o in row)
    pmax = 1 << max(0, (longest - 1).bit_length())
    flat = bytearray(rows * groups * pmax)
    for r, row in enumerate(opens):
        for g, o in enumerate(row):
            start = (r * groups + g) * pmax
            flat[start:start + len(o)] = o
    pat = torch.frombuffer(flat, dtype=torch.uint8).view(rows, groups, pmax).clone()
    plen = torch.tensor([[len(o) for o in row] for row in opens], dtype=torch.int32)
    return pat, plen


@functools.lru_cache(maxsize=64)
def _device_spec(spec: ScoreSpec, device: str) -> _DeviceSpec:
    """Constant tensors of a spec on a device, built once (specs are hashable and immutable)."""
    pat, plen = _pattern_tensors([spec.names()])
    if spec.format == "verdict":
        labs = [lab.encode() for lab, _ in spec.labels]
        lmax = 1 << max(0, (max(len(x) for x in labs) - 1).bit_length())
        labels = torch.zeros((len(labs), lmax), dtype=torch.uint8)
        for j, x in enumerate(labs):
            labels[j, : len(x)] = torch.tensor(list(x), dtype=torch.uint8)
        label_lengths = torch.tensor([len(x) for x in labs], dtype=torch.int32)
        label_values = torch.tensor([v for _, v in spec.labels], dtype=torch.float64)
    else:
        labels = torch.zeros((1, 1), dtype=torch.uint8)
        label_lengths = torch.zeros(1, dtype=torch.int32)
        label_values = torch.zeros(1, dtype=torch.float64)
    t = lambda x: x.to(device)  # noqa: E731
    return _DeviceSpec(
        t(pat), t(plen), t(torch.tensor(spec.lo, dtype=torch.float64)), t(torch.tensor(spec.hi, dtype=torch.float64)),
        t(labels), t(label_lengths), t(label_values),
    )


def _triton_kernels():
    from ..kernels import parse_tokens

    return parse_tokens


def _run_triton(ids, lengths, table, spec: ScoreSpec, nonces, weights, max_buffer_bytes):
    from .. import _native

    with _native.on_device(ids.device):  # Triton launches on the current device, not the tensors'
        return _run_triton_on_device(ids, lengths, table, spec, nonces, weights, max_buffer_bytes)


def _run_triton_on_device(ids, lengths, table, spec: ScoreSpec, nonces, weights, max_buffer_bytes):
    kern = _triton_kernels()
    device = ids.device
    B, T = ids.shape
    k = spec.k
    table = table.to(device)
    dev = _device_spec(spec, str(device))
    if nonces is not None:
        pat, plen = _pattern_tensors([spec.names(n) for n in nonces])
        patterns, pattern_lengths = pat.to(device), plen.to(device)
    else:
        patterns, pattern_lengths = dev.patterns, dev.pattern_lengths
    values = torch.empty((B, k), dtype=torch.float32, device=device)
    status = torch.empty((B, k), dtype=torch.int8, device=device)
    rewards = valid = None
    if weights is not None:
        rewards = torch.empty(B, dtype=torch.float32, device=device)
        valid = torch.empty(B, dtype=torch.int8, device=device)
    row_cap = max(1, T * table.width)  # no row can hold more: known without reading lengths back
    rows_per_chunk = max(1, max_buffer_bytes // row_cap)
    for c0 in range(0, B, rows_per_chunk):
        c1 = min(B, c0 + rows_per_chunk)
        buf, row_len = kern.detokenize(ids[c0:c1], lengths[c0:c1], table.data, table.lengths, row_cap)
        kern.parse_rows(
            buf, row_len, patterns, pattern_lengths, dev.lo, dev.hi, dev.labels, dev.label_lengths, dev.label_values,
            values, status, k=k, by_name=spec.by_name, select=SELECTS.index(spec.select), integer=spec.integer,
            fractions=FRACTIONS.index(spec.fractions), verdict=spec.format == "verdict",
            case_sensitive=spec.case_sensitive, row_offset=c0, weights=weights, rewards=rewards, valid=valid,
        )
    return values, status, rewards, valid


# ---- the host paths ------------------------------------------------------------------------------
def flat_row_bytes(ids: torch.Tensor, lengths: torch.Tensor, table: TokenByteTable, chunk_bytes: int = 64 << 20):
    """All rows' bytes back to back (uint8 [total]) and int64 offsets [B + 1], with torch ops.

    The gather makes a [rows, T, W] temporary, so rows go in chunks of about `chunk_bytes`.
    """
    table = table.to(ids.device)
    B, T = ids.shape
    V, W = table.data.shape
    lens = lengths.to(torch.int64).clamp(0, T)
    in_vocab = (ids >= 0) & (ids < V)
    idc = ids.clamp(0, V - 1).long()
    tok_len = torch.where(in_vocab & (torch.arange(T, device=ids.device)[None, :] < lens[:, None]), table.lengths[idc], 0)
    offsets = torch.zeros(B + 1, dtype=torch.int64, device=ids.device)
    offsets[1:] = torch.cumsum(tok_len.sum(dim=1, dtype=torch.int64), dim=0)
    cols = torch.arange(W, device=ids.device)
    rows = max(1, chunk_bytes // max(1, T * W))
    pieces = [
        table.data[idc[c0:c0 + rows]][cols[None, None, :] < tok_len[c0:c0 + rows, :, None]] for c0 in range(0, B, rows)
    ]
    flat = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.uint8, device=ids.device)
    return flat, offsets


def _run_cpu(ids, lengths, table, spec: ScoreSpec, nonces, num_threads):
    flat, offsets = flat_row_bytes(ids, lengths, table)
    flat, offsets = flat.cpu().contiguous(), offsets.cpu().contiguous()
    B, k = ids.shape[0], spec.k
    values = torch.empty((B, k), dtype=torch.float32)
    status = torch.empty((B, k), dtype=torch.int8)
    _native.cpu_ext.parse_scores_flat(
        flat.data_ptr(), offsets.data_ptr(), B, spec.native_args, nonces, values.data_ptr(), status.data_ptr(), 0,
        num_threads or default_threads(),
    )
    return values.to(ids.device), status.to(ids.device)


def _run_reference(ids, lengths, table, spec: ScoreSpec, nonces):
    rows = table.decode_rows(ids, lengths)
    vals, stats, _ = oracle.parse_scores(rows, spec, nonces)
    B, k = ids.shape[0], spec.k
    values = torch.tensor(vals, dtype=torch.float32).reshape(B, k)
    status = torch.tensor(stats, dtype=torch.int8).reshape(B, k)
    return values.to(ids.device), status.to(ids.device)


def parse_token_scores(
    ids: torch.Tensor,
    lengths: torch.Tensor,
    table: TokenByteTable,
    spec: ScoreSpec,
    *,
    backend: str = "auto",
    nonces: Sequence[str] | None = None,
    num_threads: int | None = None,
    max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
) -> ParsedScores:
    """Scores read from generated ids [B, T] (row b's first lengths[b] tokens), on ids' device.

    Same grammar and results as parse_scores on the decoded bytes. values float32 [B, k],
    status int8 [B, k]; no spans. On CUDA the "triton" backend never leaves the device.
    """
    _check_token_inputs(ids, lengths, table)
    if not isinstance(spec, ScoreSpec):
        raise TypeError(f"spec must be a ScoreSpec, got {type(spec).__name__}")
    nonce_list = _check_nonces(nonces, ids.shape[0], spec)
    name = _resolve(backend, ids.device, spec)
    if name == "triton":
        values, status, _, _ = _run_triton(ids, lengths, table, spec, nonce_list, None, max_buffer_bytes)
    elif name == "cpu":
        values, status = _run_cpu(ids, lengths, table, spec, nonce_list, num_threads)
    else:
        values, status = _run_reference(ids, lengths, table, spec, nonce_list)
    return ParsedScores(values, status, None)


class ScoredAdvantages(NamedTuple):
    """Result of parse_scores_and_advantages; every tensor stays on the ids' device.

    advantages: float32 [B], 0 for rows whose judgement failed and for degenerate groups.
    rewards: float32 [B], weighted sum of the items' scores (0 where invalid).
    valid: bool [B], every item of the row parsed OK.
    parsed: the per-item ParsedScores.
    group: the full GroupAdvantages (valid counts per group, masked and degenerate counts).
    """

    advantages: torch.Tensor
    rewards: torch.Tensor
    valid: torch.Tensor
    parsed: ParsedScores
    group: object


def parse_scores_and_advantages(
    ids: torch.Tensor,
    lengths: torch.Tensor,
    table: TokenByteTable,
    spec: ScoreSpec,
    group_size: int,
    *,
    weights: Sequence[float] | torch.Tensor | None = None,
    mode: str = "grpo",
    eps: float = 1e-6,
    backend: str = "auto",
    advantages_backend: str = "auto",
    nonces: Sequence[str] | None = None,
    max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
) -> ScoredAdvantages:
    """Judge ids -> per-item scores -> reward per row -> group-relative advantages, on one device.

    reward = sum_i weights[i] * score_i (weights default to 1; pass 1 / rubric.max_total for a
    normalised reward). Rows with any item not OK are masked (valid False), never scored 0. With
    the triton backend the rewards come out of the parse kernel itself; nothing is synchronised or
    copied to the host.
    """
    from ..ops.advantages import group_advantages

    _check_token_inputs(ids, lengths, table)
    if not isinstance(spec, ScoreSpec):
        raise TypeError(f"spec must be a ScoreSpec, got {type(spec).__name__}")
    if weights is None:
        w = torch.ones(spec.k, dtype=torch.float32)
    else:
        w = torch.as_tensor(weights, dtype=torch.float32).flatten()
        if w.numel() != spec.k:
            raise ValueError(f"weights has {w.numel()} entries, expected one per item (k={spec.k})")
    w = w.to(ids.device)
    nonce_list = _check_nonces(nonces, ids.shape[0], spec)
    name = _resolve(backend, ids.device, spec)
    if name == "triton":
        values, status, rewards, valid8 = _run_triton(ids, lengths, table, spec, nonce_list, w, max_buffer_bytes)
        valid = valid8 != 0
    else:
        if name == "cpu":
            values, status = _run_cpu(ids, lengths, table, spec, nonce_list, None)
        else:
            values, status = _run_reference(ids, lengths, table, spec, nonce_list)
        valid = (status == 0).all(dim=1)
        rewards = torch.where(valid, torch.where(status == 0, values * w, 0.0).sum(dim=1), 0.0)
    group = group_advantages(rewards, group_size, mode=mode, eps=eps, valid=valid, backend=advantages_backend,
                             check_finite=False)
    return ScoredAdvantages(group.advantages, rewards, valid, ParsedScores(values, status, None), group)

