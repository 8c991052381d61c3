r"""The rollout buffer and the advantage estimates computed from it.

Data are stored with shape ``[T, N, ...]``: ``T`` steps of ``N`` envs stepped in lockstep. An episode can end
at any step of any env, and the epoch can end in the middle of an episode. Three cases fix the value of the
state after step :math:`t` (``next_values``):

- the episode *terminated*: the future is worth 0;
- the episode was *truncated* by the time limit: the future is worth :math:`V(s_{\text{final}})`;
- the epoch ended mid-episode: the future is worth :math:`V(s_{T})` (bootstrapping; the episode is not counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def gae_advantages(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    episode_ends: np.ndarray,
    gamma: float,
    lam: float,
) -> np.ndarray:
    r"""Generalised advantage estimates, :math:`\hat A_t = \sum_{l \ge 0} (\gamma\lambda)^l \delta_{t+l}` within the
    episode, with the TD residual :math:`\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)`.

    Computed backwards as :math:`\hat A_t = \delta_t + \gamma\lambda\,\hat A_{t+1}`, with the recursion cut where an
    episode ends (``episode_ends[t]``). All arrays are ``[T, N]``; ``next_values[t]`` is the value of the state
    after step ``t`` as described in the module docstring. :math:`\lambda = 0` gives one-step TD errors (low
    variance, biased by :math:`V`); :math:`\lambda = 1` gives Monte Carlo returns minus :math:`V` (unbiased, high
    variance).
    """
    deltas = rewards + gamma * next_values - values
    advantages = np.zeros_like(deltas)
    running = np.zeros(deltas.shape[1:], dtype=deltas.dtype)
    for t in reversed(range(len(deltas))):
        running = deltas[t] + gamma * lam * np.where(episode_ends[t], 0.0, running)
        advantages[t] = running
    return advantages


def rewards_to_go(rewards: np.ndarray, next_values: np.ndarray, episode_ends: np.ndarray, gamma: float) -> np.ndarray:
    r"""Discounted returns :math:`\hat R_t = r_t + \gamma \hat R_{t+1}`, the value function's regression targets.

    Where an episode ends, or at the last stored step, the sum is closed with ``next_values[t]`` (0 when
    terminated, :math:`V` of the last state when cut by the time limit or by the end of the epoch).
    """
    returns = np.zeros_like(rewards)
    running = next_values[-1]  # the last stored step is closed with its next value, like an episode's end
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * np.where(episode_ends[t], next_values[t], running)
        returns[t] = running
    return returns


@dataclass
class Batch:
    """One epoch of experience, flattened over steps and envs, ready for an update."""

    obs: torch.Tensor
    actions: torch.Tensor
    logp_old: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    # What the advantages were divided by when they were normalised (1: as estimated). A step sized in the
    # estimated advantages' own units (``natural_lr``) multiplies it back.
    advantage_scale: float = 1.0


class RolloutBuffer:
    """Holds ``steps`` x ``num_envs`` transitions and turns them into a :class:`Batch`."""

    def __init__(self, steps: int, num_envs: int, obs_shape: tuple, act_shape: tuple, act_dtype: np.dtype):
        self.obs = np.zeros((steps, num_envs, *obs_shape), dtype=np.float32)
        self.actions = np.zeros((steps, num_envs, *act_shape), dtype=act_dtype)
        self.logp = np.zeros((steps, num_envs), dtype=np.float32)
        self.rewards = np.zeros((steps, num_envs), dtype=np.float32)
        self.terminated = np.zeros((steps, num_envs), dtype=bool)
        self.truncated = np.zeros((steps, num_envs), dtype=bool)
        # The observation each step led to, before any reset: read only where a cut episode is bootstrapped.
        self.next_obs = np.zeros((steps, num_envs, *obs_shape), dtype=np.float32)
        self.steps = steps

    def compute_batch(
        self, value_fn: torch.nn.Module, gamma: float, lam: float, value_target: str = "rewards_to_go"
    ) -> tuple[Batch, np.ndarray]:
        """GAE advantages and the value targets for the stored epoch; returns the batch and :math:`V(s_t)`.

        ``value_target`` is ``rewards_to_go`` (:func:`rewards_to_go`) or ``lambda_returns``
        (:math:`\\hat A_t + V(s_t)`, GAE's own estimate of the return).
        """
        T, N = self.rewards.shape
        # V of the state after step t: the next stored state, except where the episode was cut (time limit, or
        # the epoch's last step), which is bootstrapped with V of its own last state, and where it terminated.
        needs_bootstrap = self.truncated.copy()
        needs_bootstrap[-1] = ~self.terminated[-1]
        with torch.no_grad():
            values = value_fn(torch.as_tensor(self.obs.reshape(T * N, -1))).numpy().reshape(T, N)
            bootstrap_values = value_fn(torch.as_tensor(self.next_obs[needs_bootstrap])).numpy()
        next_values = np.zeros_like(values)
        next_values[:-1] = values[1:]
        next_values[needs_bootstrap] = bootstrap_values
        next_values[self.terminated] = 0.0
        episode_ends = self.terminated | self.truncated
        advantages = gae_advantages(self.rewards, values, next_values, episode_ends, gamma, lam)
        if value_target == "lambda_returns":
            returns = advantages + values
        else:
            returns = rewards_to_go(self.rewards, next_values, episode_ends, gamma)
        flat = lambda a: torch.as_tensor(a.reshape(T * N, *a.shape[2:]))  # noqa: E731
        batch = Batch(flat(self.obs), flat(self.actions), flat(self.logp), flat(advantages), flat(returns))
        return batch, values
