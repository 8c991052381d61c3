"""Unit tests of the advantage estimates and returns in :mod:`trpo.buffer`.

The oracle is a deliberately naive loop written here: for each env, walk forward, split the steps into episodes
where they terminated, were truncated, or were cut by the end of the buffer, and sum each episode's TD residuals
and rewards with explicit powers of gamma and gamma * lambda.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trpo.buffer import RolloutBuffer, gae_advantages, rewards_to_go

T, N = 50, 3


def naive_gae_and_returns(rewards, values, terminated, truncated, final_values, last_values, gamma, lam):
    """Per env and per episode, A_t = sum_l (gamma lam)^l delta_{t+l} and R_t = sum_l gamma^l r_{t+l} + gamma^k V_end.

    ``values[t, n]`` is V(s_t); ``final_values[t, n]`` is V of the final observation where step t was truncated;
    ``last_values[n]`` is V(s_T), the state after the buffer's last step. An episode that terminated ends with
    value 0 (termination wins over a simultaneous truncation).
    """
    steps, envs = rewards.shape
    advantages = np.full((steps, envs), np.nan)
    returns = np.full((steps, envs), np.nan)
    for n in range(envs):
        start = 0
        for t in range(steps):
            ended = terminated[t, n] or truncated[t, n]
            if not ended and t != steps - 1:
                continue
            end = t  # the episode (or its stored part) is steps start..end
            if terminated[end, n]:
                end_value = 0.0
            elif truncated[end, n]:
                end_value = final_values[end, n]
            else:
                end_value = last_values[n]
            next_v = [values[k + 1, n] for k in range(start, end)] + [end_value]
            deltas = [rewards[k, n] + gamma * next_v[k - start] - values[k, n] for k in range(start, end + 1)]
            for k in range(start, end + 1):
                advantages[k, n] = sum((gamma * lam) ** (j - k) * deltas[j - start] for j in range(k, end + 1))
                returns[k, n] = sum(gamma ** (j - k) * rewards[j, n] for j in range(k, end + 1))
                returns[k, n] += gamma ** (end + 1 - k) * end_value
            start = end + 1
    assert not np.isnan(advantages).any() and not np.isnan(returns).any()
    return advantages, returns


def episode_data(seed: int):
    """Random rewards and values for N=3 envs, T=50 steps, with episode ends of every kind:

    env 0: terminated at 9, truncated at 30, then cut by the end of the buffer;
    env 1: a one-step episode terminated at 0, truncated at 20, terminated at the last step;
    env 2: terminated and truncated together at 15, truncated at the last step, truncated at 48 (one-step episode).
    """
    rng = np.random.default_rng(seed)
    terminated = np.zeros((T, N), dtype=bool)
    truncated = np.zeros((T, N), dtype=bool)
    terminated[[9], 0] = True
    truncated[[30], 0] = True
    terminated[[0, T - 1], 1] = True
    truncated[[20], 1] = True
    terminated[15, 2] = truncated[15, 2] = True
    truncated[[48, T - 1], 2] = True
    return dict(
        rewards=rng.normal(size=(T, N)),
        values=rng.normal(size=(T, N)),
        terminated=terminated,
        truncated=truncated,
        final_values=rng.normal(size=(T, N)),  # V(final obs), read only where truncated
        last_values=rng.normal(size=N),  # V(s_T)
    )


def next_values_and_ends(data):
    """The inputs of gae_advantages/rewards_to_go: V of the state after each step, and where episodes end."""
    next_values = np.empty((T, N))
    next_values[:-1] = data["values"][1:]
    next_values[-1] = data["last_values"]
    next_values = np.where(data["truncated"], data["final_values"], next_values)
    next_values = np.where(data["terminated"], 0.0, next_values)
    return next_values, data["terminated"] | data["truncated"]


GAMMA_LAM = [(0.99, 0.95), (0.9, 0.5), (0.99, 0.0), (0.99, 1.0), (1.0, 0.97), (1.0, 1.0), (1.0, 0.0)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("gamma, lam", GAMMA_LAM)
def test_gae_matches_naive_per_episode_oracle(gamma, lam, seed):
    """gae_advantages equals the naive per-episode sum of (gamma lam)^l TD residuals, for every kind of episode end."""
    data = episode_data(seed)
    next_values, episode_ends = next_values_and_ends(data)
    expected, _ = naive_gae_and_returns(**data, gamma=gamma, lam=lam)
    actual = gae_advantages(data["rewards"], data["values"], next_values, episode_ends, gamma, lam)
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("gamma", [0.0, 0.9, 0.99, 1.0])
def test_rewards_to_go_matches_naive_per_episode_oracle(gamma, seed):
    """rewards_to_go equals the naive per-episode discounted reward sum plus gamma^k times the episode's end value."""
    data = episode_data(seed)
    next_values, episode_ends = next_values_and_ends(data)
    _, expected = naive_gae_and_returns(**data, gamma=gamma, lam=0.95)
    actual = rewards_to_go(data["rewards"], next_values, episode_ends, gamma)
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gamma", [0.9, 1.0])
def test_gae_lambda_zero_is_one_step_td_error(gamma):
    """lam = 0: A_t = r_t + gamma V(s_{t+1}) - V(s_t), written out directly."""
    data = episode_data(2)
    next_values, episode_ends = next_values_and_ends(data)
    expected = data["rewards"] + gamma * next_values - data["values"]
    actual = gae_advantages(data["rewards"], data["values"], next_values, episode_ends, gamma, 0.0)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.9, 1.0])
def test_gae_lambda_one_is_returns_minus_values(gamma):
    """lam = 1: A_t = R_t - V(s_t), with R_t the oracle's bootstrapped discounted return."""
    data = episode_data(3)
    next_values, episode_ends = next_values_and_ends(data)
    _, returns = naive_gae_and_returns(**data, gamma=gamma, lam=1.0)
    actual = gae_advantages(data["rewards"], data["values"], next_values, episode_ends, gamma, 1.0)
    np.testing.assert_allclose(actual, returns - data["values"], rtol=1e-10, atol=1e-10)


def test_gae_and_returns_keep_float32():
    """The buffer stores float32; the estimates stay float32 and agree with the float64 oracle to float32 precision."""
    data = episode_data(4)
    next_values, episode_ends = next_values_and_ends(data)
    expected_adv, expected_ret = naive_gae_and_returns(**data, gamma=0.99, lam=0.97)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    adv = gae_advantages(f32(data["rewards"]), f32(data["values"]), f32(next_values), episode_ends, 0.99, 0.97)
    ret = rewards_to_go(f32(data["rewards"]), f32(next_values), episode_ends, 0.99)
    assert adv.dtype == np.float32 and ret.dtype == np.float32
    np.testing.assert_allclose(adv, expected_adv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ret, expected_ret, rtol=1e-4, atol=1e-4)


class SumValue(torch.nn.Module):
    """A deterministic linear value function, V(s) = sum of the observation's entries."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.sum(-1)


def filled_buffer(steps: int, num_envs: int, terminated_at, truncated_at, seed: int = 0) -> RolloutBuffer:
    """A buffer of random observations, actions, log-probs and rewards; ``next_obs`` is random too, so it differs
    from the next stored observation everywhere (as it does after a reset) and any wrong read shows."""
    rng = np.random.default_rng(seed)
    buffer = RolloutBuffer(steps, num_envs, (3,), (2,), np.float32)
    buffer.obs[:] = rng.normal(size=buffer.obs.shape)
    buffer.next_obs[:] = rng.normal(size=buffer.next_obs.shape) + 5.0
    buffer.actions[:] = rng.normal(size=buffer.actions.shape)
    buffer.logp[:] = rng.normal(size=buffer.logp.shape)
    buffer.rewards[:] = rng.normal(size=buffer.rewards.shape)
    for t, n in terminated_at:
        buffer.terminated[t, n] = True
    for t, n in truncated_at:
        buffer.truncated[t, n] = True
    return buffer


def oracle_of(buffer: RolloutBuffer, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """The naive oracle's advantages and returns for a buffer filled by :func:`filled_buffer`, with V = SumValue:
    0 after termination, V(next_obs[t]) after truncation, V(obs[t+1]) otherwise, V(next_obs[T-1]) at the end."""
    obs64, next_obs64 = buffer.obs.astype(np.float64), buffer.next_obs.astype(np.float64)
    return naive_gae_and_returns(
        rewards=buffer.rewards.astype(np.float64),
        values=obs64.sum(-1),
        terminated=buffer.terminated,
        truncated=buffer.truncated,
        final_values=next_obs64.sum(-1),
        last_values=next_obs64[-1].sum(-1),
        gamma=gamma,
        lam=lam,
    )


BUFFER_CASES = {
    # env 0: terminated at 1, truncated at 3, cut by the buffer at 5; env 1: truncated at 0, terminated and
    # truncated together at 2, terminated at the last step.
    "mixed": dict(terminated_at=[(1, 0), (2, 1), (5, 1)], truncated_at=[(3, 0), (0, 1), (2, 1)]),
    # Nothing ends: every env is bootstrapped from V(next_obs[T-1]).
    "no-ends": dict(terminated_at=[], truncated_at=[]),
    # Every env terminates at the last step and none is truncated: nothing at all is bootstrapped.
    "all-terminated-last": dict(terminated_at=[(2, 0), (5, 0), (5, 1)], truncated_at=[]),
    # Every env truncated at the last step: bootstrapped from the final observation.
    "all-truncated-last": dict(terminated_at=[(0, 0)], truncated_at=[(5, 0), (5, 1)]),
}


@pytest.mark.parametrize("case", list(BUFFER_CASES))
@pytest.mark.parametrize("gamma, lam", [(0.99, 0.97), (0.9, 0.0), (1.0, 1.0)])
def test_compute_batch_matches_oracle(case, gamma, lam):
    """compute_batch's advantages and returns equal the naive oracle on a hand-filled buffer with a linear V."""
    steps, num_envs = 6, 2
    buffer = filled_buffer(steps, num_envs, **BUFFER_CASES[case])
    obs64 = buffer.obs.astype(np.float64)
    expected_adv, expected_ret = oracle_of(buffer, gamma, lam)

    batch, values = buffer.compute_batch(SumValue(), gamma, lam)

    np.testing.assert_allclose(values, obs64.sum(-1), rtol=1e-5, atol=1e-5)
    assert values.shape == (steps, num_envs)
    # Flattened step-major: row t * N + n holds env n's step t.
    np.testing.assert_allclose(batch.advantages.numpy(), expected_adv.reshape(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch.returns.numpy(), expected_ret.reshape(-1), rtol=1e-5, atol=1e-5)
    assert torch.equal(batch.obs, torch.as_tensor(buffer.obs.reshape(steps * num_envs, 3)))
    assert torch.equal(batch.actions, torch.as_tensor(buffer.actions.reshape(steps * num_envs, 2)))
    assert torch.equal(batch.logp_old, torch.as_tensor(buffer.logp.reshape(-1)))
    assert batch.advantages.dtype == torch.float32 and batch.returns.dtype == torch.float32


@pytest.mark.parametrize("case", list(BUFFER_CASES))
def test_compute_batch_lambda_returns_are_advantages_plus_values(case):
    """With value_target=lambda_returns the targets are the oracle's GAE advantages plus V(s_t), and the
    advantages themselves do not change."""
    buffer = filled_buffer(6, 2, **BUFFER_CASES[case])
    obs64 = buffer.obs.astype(np.float64)
    expected_adv, _ = oracle_of(buffer, 0.99, 0.95)
    batch, _ = buffer.compute_batch(SumValue(), 0.99, 0.95, value_target="lambda_returns")
    np.testing.assert_allclose(batch.advantages.numpy(), expected_adv.reshape(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        batch.returns.numpy(), (expected_adv + obs64.sum(-1)).reshape(-1), rtol=1e-5, atol=1e-5
    )


def test_compute_batch_truncation_uses_final_observation():
    """Hand-computed returns and advantages: truncation bootstraps from V(final obs), termination from 0."""
    buffer = RolloutBuffer(3, 1, (1,), (), np.int64)
    buffer.obs[:, 0, 0] = [1.0, 2.0, 3.0]  # V(s) = s
    buffer.rewards[:, 0] = [10.0, 20.0, 30.0]
    buffer.truncated[0, 0] = True
    buffer.next_obs[0, 0, 0] = 100.0  # the final obs of the truncated episode; obs[1] = 2 is the reset obs
    buffer.terminated[1, 0] = True
    buffer.next_obs[1, 0, 0] = 200.0  # must be ignored: terminated
    buffer.next_obs[2, 0, 0] = 7.0  # V(s_T) for the episode cut by the end of the buffer
    batch, _ = buffer.compute_batch(SumValue(), gamma=1.0, lam=1.0)
    assert batch.returns.tolist() == [110.0, 20.0, 37.0]
    assert batch.advantages.tolist() == [109.0, 18.0, 34.0]
