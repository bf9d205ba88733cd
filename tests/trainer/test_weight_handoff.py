"""RolloutCopy: the producer's policy changes only when it syncs a published version, never mid-update."""
from __future__ import annotations

import pytest
import torch

from mpo_fast.trainer.pipeline.weight_handoff import RolloutCopy
from tests.tiny_models import tiny_causal_lm


def test_the_copy_moves_only_at_sync_and_only_to_a_published_version(tokenizer):
    model = tiny_causal_lm(tokenizer)
    for p in model.model.layers[0].parameters():
        p.requires_grad_(False)  # frozen weights never travel
    handoff = RolloutCopy(model)
    assert all(".layers.0." not in n for n in handoff.names)
    original = {n: p.detach().clone() for n, p in handoff.module.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # an update in progress: the copy must not see it
    handoff.sync(0)
    assert all(torch.equal(original[n], p) for n, p in handoff.module.named_parameters())
    handoff.publish(model, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the next update, after publishing version 1
    assert all(torch.equal(original[n], p) for n, p in handoff.module.named_parameters())
    handoff.sync(1)
    assert handoff.loaded_version == 1
    current = dict(handoff.module.named_parameters())
    for n in handoff.names:
        torch.testing.assert_close(current[n], original[n] + 1.0, rtol=0, atol=0)
    frozen = [n for n in current if ".layers.0." in n]
    assert frozen and all(torch.equal(current[n], original[n]) for n in frozen)
    assert not any(p.requires_grad for p in handoff.module.parameters())
    with pytest.raises(RuntimeError, match="asked for policy version 2, only 1 was published"):
        handoff.sync(2)
