"""Collecting one epoch of experience with the current policy."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trpo.buffer import RolloutBuffer
from trpo.envs import EnvBatch, SubprocEnvBatch
from trpo.networks import Policy


@dataclass
class EpisodeRecord:
    """Undiscounted returns and lengths of the episodes that finished during one epoch."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


class Sampler:
    """Steps an :class:`~trpo.envs.EnvBatch` with the policy, one batched policy call per lockstep step.

    Episodes run on across epochs: the part of an episode inside one epoch is bootstrapped with :math:`V`
    where the epoch cuts it, and the episode is counted in the epoch where it finishes.
    """

    def __init__(self, envs: EnvBatch | SubprocEnvBatch, policy: Policy, seed: int):
        self.envs = envs
        self.policy = policy
        self.obs = envs.reset(seed=seed)

    def collect(self, buffer: RolloutBuffer) -> EpisodeRecord:
        """Fill ``buffer`` with ``buffer.steps`` lockstep steps of every env."""
        episodes = EpisodeRecord()
        for t in range(buffer.steps):
            with torch.inference_mode():
                actions = self.policy.sample(torch.from_numpy(self.obs)).numpy()
            step = self.envs.step(actions)
            buffer.obs[t] = self.obs
            buffer.actions[t] = actions
            buffer.rewards[t] = step.rewards
            buffer.terminated[t] = step.terminated
            buffer.truncated[t] = step.truncated
            buffer.next_obs[t] = step.final_obs
            episodes.returns += step.finished_returns
            episodes.lengths += step.finished_lengths
            self.obs = step.obs
        # The policy is fixed during the epoch, so log pi_old(a|s) is one batched call instead of one per step.
        with torch.inference_mode():
            flat_obs = torch.from_numpy(buffer.obs.reshape(-1, *buffer.obs.shape[2:]))
            flat_actions = torch.from_numpy(buffer.actions.reshape(-1, *buffer.actions.shape[2:]))
            buffer.logp[:] = self.policy.distribution(flat_obs).log_prob(flat_actions).numpy().reshape(buffer.logp.shape)
        return episodes
