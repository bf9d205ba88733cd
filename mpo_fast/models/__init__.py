"""Model loading helpers: the embedded SmolLM2-135M-Instruct (converted once, cached)."""
from .embedded import cache_root, embedded_gguf_path, embedded_model_dir, load_embedded, load_embedded_tokenizer

__all__ = ["cache_root", "embedded_gguf_path", "embedded_model_dir", "load_embedded", "load_embedded_tokenizer"]
