"""The sampler: what one epoch of stepping the policy writes into the buffer, against the env batch's own steps."""

from __future__ import annotations

import numpy as np
import torch

from trpo.buffer import RolloutBuffer
from trpo.envs import EnvBatch, StepResult
from trpo.networks import make_policy
from trpo.normalization import ObservationNormalizer, RewardScaler
from trpo.sampler import Sampler


class RecordingEnvBatch(EnvBatch):
    """An env batch that keeps the raw observations and step results it handed out."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reset_obs: np.ndarray | None = None
        self.steps: list[StepResult] = []

    def reset(self, seed: int) -> np.ndarray:
        self.reset_obs = super().reset(seed)
        return self.reset_obs

    def step(self, actions: np.ndarray) -> StepResult:
        self.steps.append(super().step(actions))
        return self.steps[-1]


def test_an_epoch_holds_normalised_observations_scaled_rewards_and_the_policys_own_samples() -> None:
    """Hopper, 2 envs x 40 steps, episodes cut at 25 steps or ending early. Replaying the envs' raw stream through
    fresh normalisers: each stored observation is normalised by the statistics of every observation up to and
    including it, each next observation (the state before a reset) by those including its step's, and each reward
    is scaled as the scaler sees the stream. The actions are the policy's samples, unclipped (the env clips them);
    log pi_old is the policy's log-probability of them; the returns and lengths reported are the env's raw ones."""
    torch.manual_seed(0)
    num_envs, steps, gamma = 2, 40, 0.99
    envs = RecordingEnvBatch("Hopper-v5", 25, num_envs)
    policy = make_policy(envs.observation_space, envs.action_space, [8], "tanh", init_log_std=0.5)
    obs_shape, act_space = envs.observation_space.shape, envs.action_space
    buffer = RolloutBuffer(steps, num_envs, obs_shape, act_space.shape, act_space.dtype)
    sampler = Sampler(envs, policy, seed=3, obs_normalizer=ObservationNormalizer(obs_shape),
                      reward_scaler=RewardScaler(num_envs, gamma))
    episodes = sampler.collect(buffer)
    envs.close()

    normalizer, scaler = ObservationNormalizer(obs_shape), RewardScaler(num_envs, gamma)
    normalizer.update(envs.reset_obs)
    obs = envs.reset_obs
    for t, step in enumerate(envs.steps):
        np.testing.assert_array_equal(buffer.obs[t], normalizer(obs))
        normalizer.update(step.obs)
        np.testing.assert_array_equal(buffer.next_obs[t], normalizer(step.final_obs))
        expected_rewards = scaler(step.rewards, step.terminated | step.truncated).astype(np.float32)
        np.testing.assert_array_equal(buffer.rewards[t], expected_rewards)
        np.testing.assert_array_equal(buffer.terminated[t], step.terminated)
        np.testing.assert_array_equal(buffer.truncated[t], step.truncated)
        obs = step.obs
    assert len(envs.steps) == steps

    assert (np.abs(buffer.actions) > 1).any()  # samples past Hopper's bound of 1 are stored as drawn
    with torch.no_grad():
        flat_obs = torch.from_numpy(buffer.obs.reshape(-1, *obs_shape))
        logp = policy.distribution(flat_obs).log_prob(torch.from_numpy(buffer.actions.reshape(-1, *act_space.shape)))
    np.testing.assert_allclose(buffer.logp.reshape(-1), logp.numpy(), rtol=1e-6, atol=1e-6)

    assert episodes.returns == [r for step in envs.steps for r in step.finished_returns]
    assert episodes.lengths == [n for step in envs.steps for n in step.finished_lengths]
    assert len(episodes.returns) >= 2 and buffer.terminated.any() and buffer.truncated.any()
    assert not np.allclose(buffer.rewards, np.array([step.rewards for step in envs.steps]))  # scaled, not raw
