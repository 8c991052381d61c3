"""Environment factory and a lean batch of environments stepped in lockstep.

:class:`EnvBatch` steps ``num_envs`` Gymnasium environments and returns stacked arrays, so the sampler makes
one batched policy call per step. An episode that ends is reset in the same step: the observation returned
for that env is the new episode's first one, and the last observation of the finished episode is handed back
separately (``final_obs``) so a time-limited episode can be bootstrapped with :math:`V` of its true last state.
No transition of one episode ever leaks into the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np


def make_env(env_id: str, max_ep_len: int, render_mode: str | None = None) -> gym.Env:
    """One Gymnasium env whose episodes are cut (``truncated``) after ``max_ep_len`` steps."""
    return gym.make(env_id, max_episode_steps=max_ep_len, render_mode=render_mode)


@dataclass
class StepResult:
    """What one lockstep step of all envs returns; arrays have the batch as their first axis."""

    obs: np.ndarray  # next observation; the reset one where the episode just ended
    rewards: np.ndarray
    terminated: np.ndarray  # the episode reached a terminal state: its future value is 0
    truncated: np.ndarray  # the episode was cut by the time limit: its future value is V(final_obs)
    final_obs: np.ndarray  # the last observation of the finished episode where truncated, else obs
    finished_returns: list[float]  # undiscounted returns of the episodes that ended this step
    finished_lengths: list[int]


class EnvBatch:
    """``num_envs`` copies of one env, stepped in lockstep in this process, reset as soon as an episode ends."""

    def __init__(self, env_id: str, max_ep_len: int, num_envs: int, clip_actions: bool = True):
        self.envs = [make_env(env_id, max_ep_len) for _ in range(num_envs)]
        self.num_envs = num_envs
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self._clip = clip_actions and isinstance(self.action_space, gym.spaces.Box)
        self._episode_returns = np.zeros(num_envs)
        self._episode_lengths = np.zeros(num_envs, dtype=np.int64)

    def reset(self, seed: int) -> np.ndarray:
        """Start a fresh episode in every env; env ``i`` is seeded with ``seed + i``."""
        self._episode_returns[:] = 0
        self._episode_lengths[:] = 0
        return np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)]).astype(np.float32)

    def step(self, actions: np.ndarray) -> StepResult:
        if self._clip:
            actions = np.clip(actions, self.action_space.low, self.action_space.high)
        obs, final_obs = [], []
        rewards = np.empty(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        finished_returns, finished_lengths = [], []
        for i, env in enumerate(self.envs):
            o, r, term, trunc, _ = env.step(actions[i])
            rewards[i], terminated[i], truncated[i] = r, term, trunc and not term
            self._episode_returns[i] += r
            self._episode_lengths[i] += 1
            final_obs.append(o)
            if term or trunc:
                finished_returns.append(float(self._episode_returns[i]))
                finished_lengths.append(int(self._episode_lengths[i]))
                self._episode_returns[i] = 0
                self._episode_lengths[i] = 0
                o, _ = env.reset()
            obs.append(o)
        return StepResult(
            obs=np.stack(obs).astype(np.float32),
            rewards=rewards,
            terminated=terminated,
            truncated=truncated,
            final_obs=np.stack(final_obs).astype(np.float32),
            finished_returns=finished_returns,
            finished_lengths=finished_lengths,
        )

    def close(self) -> None:
        for env in self.envs:
            env.close()
