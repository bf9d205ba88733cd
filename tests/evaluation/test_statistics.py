"""The statistics of `mpo-fast eval`: tie rule, win rates, Bradley-Terry, bootstrap, length control."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mpo_fast.evaluation.bootstrap import bootstrap, mean_with_ci, weighted_mean
from mpo_fast.evaluation.length_control import lc_win_rate
from mpo_fast.evaluation.pairwise import Outcome, PairRecord, Position, combine, scores_of, summarise_pairs
from mpo_fast.evaluation.ratings import Comparison, fit_bradley_terry, rate

F, S = Position.FIRST, Position.SECOND


def test_tie_rule_both_orders():
    assert combine(F, S) is Outcome.WIN  # A first chosen, then A (second) chosen again
    assert combine(S, F) is Outcome.LOSS
    assert combine(F, F) is Outcome.TIE  # the judge followed the position both times
    assert combine(S, S) is Outcome.TIE
    assert combine(None, S) is Outcome.FAILED
    assert combine(F, None) is Outcome.FAILED


def _records(pairs, la=10, lb=10):
    return [PairRecord(str(i), a, b, la, lb) for i, (a, b) in enumerate(pairs)]


def test_failures_are_counted_never_a_loss_or_tie():
    records = _records([(F, S), (F, S), (S, F), (None, S), (F, None), (None, None)])
    s = summarise_pairs(records, resamples=200)
    assert (s.wins, s.ties, s.losses, s.failures) == (2, 0, 1, 3)
    assert s.win_rate.value == pytest.approx(2 / 3)
    assert s.judged == 3


def test_first_position_judge_gives_only_ties():
    s = summarise_pairs(_records([(F, F)] * 20), resamples=200)
    assert (s.wins, s.ties, s.losses) == (0, 20, 0)
    assert s.win_rate.value == 0.5
    assert s.position_bias.value == 1.0 and s.first_position_rate == 1.0
    assert math.isnan(s.decisive_win_rate.value)


def test_bootstrap_is_seeded_and_degenerate_on_constants():
    a = mean_with_ci(np.full(30, 0.25), resamples=500, seed=3)
    assert (a.value, a.low, a.high) == (0.25, 0.25, 0.25)
    rng = np.random.default_rng(0)
    x = rng.random(50)
    assert mean_with_ci(x, seed=7) == mean_with_ci(x, seed=7)
    assert mean_with_ci(x, seed=7) != mean_with_ci(x, seed=8)


def test_bootstrap_ci_matches_the_normal_approximation():
    # Bernoulli(0.6), n = 400: standard error sqrt(.6 * .4 / 400) = 0.0245, so a 95 % CI of +-0.048.
    x = (np.random.default_rng(1).random(400) < 0.6).astype(float)
    est = mean_with_ci(x, resamples=2000, seed=0)
    se = math.sqrt(x.mean() * (1 - x.mean()) / x.size)
    assert est.high - est.low == pytest.approx(2 * 1.96 * se, rel=0.12)
    assert est.low < x.mean() < est.high


def test_bootstrap_drops_undefined_resamples():
    values = np.array([1.0, 0.0, 1.0])
    valid = np.array([True, False, False])  # a third of resamples draws no valid prompt... often
    est = bootstrap(weighted_mean(values, valid), 3, resamples=1000, seed=0)
    assert est.value == 1.0 and est.low == 1.0 and est.high == 1.0


def test_bradley_terry_by_hand_two_players():
    # A beats B 3 times in 4: p_A / p_B = 3, so the Elo gap is 400 log10(3) = 190.85, split around 1000.
    wins = np.array([[0.0, 3.0], [1.0, 0.0]])
    games = np.array([[0.0, 4.0], [4.0, 0.0]])
    r = fit_bradley_terry(wins[None], games[None], prior_games=0.0)[0]
    gap = 400 * math.log10(3)
    assert r == pytest.approx([1000 + gap / 2, 1000 - gap / 2], abs=1e-6)


def test_bradley_terry_meets_the_score_equations_with_ties():
    # The MLE makes each player's expected score equal its actual score (ties count half).
    rng = np.random.default_rng(5)
    k = 4
    wins = np.zeros((k, k))
    games = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            n = rng.integers(5, 30)
            w = rng.integers(1, n) + 0.5 * rng.integers(0, 2)
            wins[i, j], wins[j, i] = w, n - w
            games[i, j] = games[j, i] = n
    r = fit_bradley_terry(wins[None], games[None], prior_games=0.0)[0]
    p = 10 ** ((r - 1000) / 400)
    expected = (games * p[:, None] / (p[:, None] + p[None, :])).sum(1)
    assert expected == pytest.approx(wins.sum(1), rel=1e-6)
    assert r.mean() == pytest.approx(1000)


def _tournament(true_elo, n_prompts, rng):
    names = [f"p{i}" for i in range(len(true_elo))]
    comps = []
    for prompt in range(n_prompts):
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                p_win = 1 / (1 + 10 ** ((true_elo[j] - true_elo[i]) / 400))
                score = float(rng.random() < p_win)  # the Bradley-Terry model itself, no ties
                comps.append(Comparison(prompt, names[i], names[j], score))
    return names, comps


def test_synthetic_tournament_recovered_within_ci_at_the_stated_rate():
    true = np.array([850.0, 1000.0, 1150.0])  # mean 1000, the scale's anchor
    rng = np.random.default_rng(11)
    covered, total = 0, 0
    for trial in range(30):
        names, comps = _tournament(true, 150, rng)
        ratings = rate(comps, 150, policies=names, resamples=1000, seed=trial, prior_games=0.0)
        for name, t in zip(names, true):
            e = ratings.elo[name]
            covered += e.low <= t <= e.high
            total += 1
        assert ratings.elo["p2"].value > ratings.elo["p1"].value > ratings.elo["p0"].value
    # 95 % nominal; 90 intervals at 95 % fall below 87 % with probability < 0.5 %.
    assert covered / total >= 0.87, covered / total


def test_a_policy_that_always_wins_gets_a_finite_rating():
    comps = [Comparison(p, "a", "b", 1.0) for p in range(20)]
    r = rate(comps, 20, resamples=200)
    assert np.isfinite(r.elo["a"].value) and r.elo["a"].value > r.elo["b"].value + 300


def test_length_control_removes_a_pure_length_preference():
    rng = np.random.default_rng(2)
    n = 600
    la = rng.normal(300, 80, n)
    lb = rng.normal(220, 80, n)  # A writes longer answers; quality is the same
    p_a = 1 / (1 + np.exp(-2.5 * np.tanh((la - lb) / np.std(la - lb))))
    scores = (rng.random(n) < p_a).astype(float)
    valid = np.ones(n, dtype=bool)
    raw = scores.mean()
    lc, phi = lc_win_rate(scores, valid, la, lb, resamples=1000)
    assert raw > 0.65  # the judge's length preference shows as a win for A
    assert lc.low <= 0.5 <= lc.high and abs(lc.value - 0.5) < 0.07
    assert phi > 1.5


def test_length_control_keeps_a_real_quality_difference():
    rng = np.random.default_rng(3)
    n = 600
    la, lb = rng.normal(250, 80, n), rng.normal(250, 80, n)
    scores = (rng.random(n) < 0.75).astype(float)  # A is better whatever the length
    lc, phi = lc_win_rate(scores, np.ones(n, dtype=bool), la, lb, resamples=1000)
    assert lc.value == pytest.approx(scores.mean(), abs=0.04)
    assert lc.low > 0.6


def test_lc_uses_pair_records_with_ties_and_failures():
    records = _records([(F, S)] * 10 + [(F, F)] * 4 + [(None, S)] * 3)
    scores, valid = scores_of(records)
    lc, _ = lc_win_rate(scores, valid, [10] * 17, [10] * 17, resamples=200)
    # no length difference: the raw win rate, up to the 1e-3 ridge on theta
    assert lc.value == pytest.approx(12 / 14, abs=5e-4)
