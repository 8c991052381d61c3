"""Collecting one epoch of experience with the current policy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from trpo.buffer import RolloutBuffer
from trpo.envs import EnvBatch, SubprocEnvBatch
from trpo.networks import Policy
from trpo.normalization import ObservationNormalizer, RewardScaler


@dataclass
class EpisodeRecord:
    """Undiscounted returns and lengths of the episodes that finished during one epoch."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


class Sampler:
    """Steps an :class:`~trpo.envs.EnvBatch` with the policy, one batched policy call per lockstep step.

    Episodes run on across epochs: the part of an episode inside one epoch is bootstrapped with :math:`V`
    where the epoch cuts it, and the episode is counted in the epoch where it finishes.

    With an ``obs_normalizer`` the policy, the buffer and the value function see normalised observations (its
    statistics updated with every step); with a ``reward_scaler`` the buffer holds scaled rewards. Episode
    returns are always reported in the env's own reward units.
    """

    def __init__(
        self,
        envs: EnvBatch | SubprocEnvBatch,
        policy: Policy,
        seed: int,
        obs_normalizer: ObservationNormalizer | None = None,
        reward_scaler: RewardScaler | None = None,
    ):
        self.envs = envs
        self.policy = policy
        self.obs_normalizer = obs_normalizer
        self.reward_scaler = reward_scaler
        self.obs = envs.reset(seed=seed)  # raw observations, as the envs return them
        if obs_normalizer is not None:
            obs_normalizer.update(self.obs)

    def _normalize(self, obs: np.ndarray) -> np.ndarray:
        return obs if self.obs_normalizer is None else self.obs_normalizer(obs)

    def collect(self, buffer: RolloutBuffer) -> EpisodeRecord:
        """Fill ``buffer`` with ``buffer.steps`` lockstep steps of every env."""
        episodes = EpisodeRecord()
        for t in range(buffer.steps):
            obs = self._normalize(self.obs)
            with torch.inference_mode():
                actions = self.policy.sample(torch.from_numpy(obs)).numpy()
            step = self.envs.step(actions)
            if self.obs_normalizer is not None:
                self.obs_normalizer.update(step.obs)
            rewards = step.rewards
            if self.reward_scaler is not None:
                rewards = self.reward_scaler(rewards, step.terminated | step.truncated)
            buffer.obs[t] = obs
            buffer.actions[t] = actions
            buffer.rewards[t] = rewards
            buffer.terminated[t] = step.terminated
            buffer.truncated[t] = step.truncated
            buffer.next_obs[t] = self._normalize(step.final_obs)
            episodes.returns += step.finished_returns
            episodes.lengths += step.finished_lengths
            self.obs = step.obs
        # The policy is fixed during the epoch, so log pi_old(a|s) is one batched call instead of one per step.
        with torch.inference_mode():
            flat_obs = torch.from_numpy(buffer.obs.reshape(-1, *buffer.obs.shape[2:]))
            flat_actions = torch.from_numpy(buffer.actions.reshape(-1, *buffer.actions.shape[2:]))
            buffer.logp[:] = (
                self.policy.distribution(flat_obs).log_prob(flat_actions).numpy().reshape(buffer.logp.shape)
            )
        return episodes
