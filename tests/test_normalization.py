"""Running statistics against answers computed another way: numpy over all the data at once, and a hand loop of
the discounted return."""

from __future__ import annotations

import numpy as np
import pytest

from trpo.normalization import ObservationNormalizer, RewardScaler, RunningMeanStd


def test_running_statistics_of_batches_equal_numpys_over_all_of_them() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=5.0, scale=[1.0, 30.0], size=(n, 2)) for n in (1, 7, 300, 64)]
    stats = RunningMeanStd((2,))
    for batch in batches:
        stats.update(batch)
    everything = np.concatenate(batches)
    # The prior count of 1e-4 (mean 0, var 1) moves the answer by about 1e-4 / 372 of the data's weight.
    np.testing.assert_allclose(stats.mean, everything.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats.var, everything.var(axis=0), rtol=1e-5)
    assert stats.count == pytest.approx(len(everything), abs=1e-3)


def test_observations_are_standardised_clipped_and_their_non_finite_rows_left_out() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(loc=[-2.0, 100.0], scale=[0.5, 10.0], size=(500, 2))
    normalizer = ObservationNormalizer((2,))
    normalizer.update(np.vstack([data, [[np.nan, 1.0]], [[np.inf, 0.0]]]))
    scaled = normalizer(data)
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(scaled.std(axis=0), 1.0, rtol=1e-4)
    far = normalizer(np.array([[-2.0 + 0.5 * 50, 100.0 - 10.0 * 50]]))
    assert far[0].tolist() == pytest.approx([10.0, -10.0])  # 50 std away, clipped at +-10


def test_rewards_are_divided_by_the_running_std_of_the_discounted_return() -> None:
    """Two envs, episodes ending at random steps: a hand loop keeps each env's discounted return (restarted after
    an episode's end), pools every return seen so far, and divides each reward by their std."""
    rng = np.random.default_rng(2)
    gamma, steps = 0.9, 200
    rewards = rng.normal(loc=1.0, scale=3.0, size=(steps, 2))
    rewards[17, 1] = -40.0  # a large negative reward keeps its sign
    ends = rng.random((steps, 2)) < 0.05
    scaler = RewardScaler(num_envs=2, gamma=gamma)

    running, seen = np.zeros(2), []
    for t in range(steps):
        running = gamma * running + rewards[t]
        seen.extend(running)
        expected = np.clip(rewards[t] / np.sqrt(np.var(seen) + 1e-8), -10.0, 10.0)
        np.testing.assert_allclose(scaler(rewards[t], ends[t]), expected, rtol=2e-4)
        running[ends[t]] = 0.0


def test_a_non_finite_reward_restarts_its_envs_return_and_stays_out_of_the_statistics() -> None:
    """Env 1's reward is NaN at the third step: the statistics then take env 0's return alone (no 0 for env 1),
    and env 1's return restarts from its next reward."""
    gamma = 0.5
    scaler = RewardScaler(num_envs=2, gamma=gamma)
    never_ends = np.zeros(2, dtype=bool)
    for rewards in ([1.0, 2.0], [3.0, 4.0], [5.0, np.nan], [7.0, 8.0]):
        scaler(np.array(rewards), never_ends)
    env0 = [1.0, 3.5, 6.75, 10.375]
    env1 = [2.0, 5.0, 8.0]  # 2, then 2 * 0.5 + 4, then (restarted) 8
    seen = env0 + env1
    assert scaler.stats.count == pytest.approx(len(seen) + 1e-4)  # RunningMeanStd starts from a count of 1e-4
    assert scaler.stats.mean == pytest.approx(np.mean(seen), rel=1e-4)
    assert scaler.stats.var == pytest.approx(np.var(seen), rel=1e-4)
    np.testing.assert_allclose(scaler.returns, [env0[-1], env1[-1]])
