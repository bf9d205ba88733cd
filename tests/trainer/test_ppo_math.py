"""PPO's math on a hand-computed episode: token rewards with KL, GAE, whitening, value loss."""
import pytest
import torch

from mpo_fast.trainer.ppo import ValueHead, ppo_advantages, token_rewards, value_loss, whiten


def test_token_rewards_put_the_score_on_the_last_token_and_kl_on_every_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    k1 = torch.tensor([[0.1, -0.2, 0.3, 9.0], [0.4, 0.0, 9.0, 9.0]])
    r = token_rewards(torch.tensor([1.0, 0.5]), mask, k1, kl_coef=0.5)
    assert r.flatten().tolist() == pytest.approx([-0.05, 0.1, 1.0 - 0.15, 0.0, -0.2, 0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="no valid token"):
        token_rewards(torch.tensor([1.0]), torch.zeros(1, 3, dtype=torch.bool))


def test_gae_on_a_hand_computed_episode():
    # one episode of 3 tokens: rewards r = [-0.05, 0.1, 0.85], values V = [0.2, 0.4, 0.6], gamma 1, lam 0.9
    mask = torch.ones(1, 3, dtype=torch.bool)
    k1 = torch.tensor([[0.1, -0.2, 0.3]])
    values = torch.tensor([[0.2, 0.4, 0.6]])
    adv, ret = ppo_advantages(torch.tensor([1.0]), values, mask, k1=k1, kl_coef=0.5, gamma=1.0, lam=0.9,
                              whiten_advantages=False, backend="reference")
    d2 = 0.85 + 0.0 - 0.6          # 0.25
    d1 = 0.1 + 0.6 - 0.4           # 0.3
    d0 = -0.05 + 0.4 - 0.2         # 0.15
    a2 = d2
    a1 = d1 + 0.9 * a2             # 0.525
    a0 = d0 + 0.9 * a1             # 0.6225
    assert adv.flatten().tolist() == pytest.approx([a0, a1, a2])
    assert ret.flatten().tolist() == pytest.approx([a0 + 0.2, a1 + 0.4, a2 + 0.6])
    w = whiten(adv, mask).flatten()
    mean = (a0 + a1 + a2) / 3
    std = (((a0 - mean) ** 2 + (a1 - mean) ** 2 + (a2 - mean) ** 2) / 3) ** 0.5
    assert w.tolist() == pytest.approx([(a - mean) / std for a in (a0, a1, a2)], rel=1e-5)


def test_value_loss_clips_like_trl():
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    old = torch.tensor([[0.0, 0.0, 0.0]])
    ret = torch.tensor([[1.0, -1.0, 5.0]])
    v = torch.tensor([[0.5, 0.1, 7.0]], requires_grad=True)
    loss = value_loss(v, old, ret, mask, clip=0.2)
    # token 0: unclipped (0.5-1)^2 = 0.25, clipped (0.2-1)^2 = 0.64 -> 0.64; token 1: (0.1+1)^2 = 1.21 both
    assert float(loss) == pytest.approx(0.5 * (0.64 + 1.21) / 2)
    loss.backward()
    assert v.grad[0, 0] == 0.0 and v.grad[0, 2] == 0.0 and v.grad[0, 1] != 0.0  # clipped and padding: no gradient


def test_value_head_starts_at_zero_and_learns():
    torch.manual_seed(0)  # unseeded, the 50 SGD steps reached the 1e-2 bar only for some draws
    head = ValueHead(4)
    h = torch.randn(2, 3, 4)
    assert torch.equal(head(h), torch.zeros(2, 3))
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    target = torch.ones(2, 3)
    for _ in range(50):
        loss = value_loss(head(h), torch.zeros(2, 3), target, torch.ones(2, 3, dtype=torch.bool), clip=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 1e-2
