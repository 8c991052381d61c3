"""Deterministic evaluation of a trained policy."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from trpo.envs import make_env
from trpo.networks import Policy


def evaluate(policy: Policy, env_id: str, max_ep_len: int, episodes: int, seed: int) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes acting with the policy's deterministic action
    (the Gaussian's mean, the Categorical's most likely class); episode ``i`` is seeded with ``seed + i``."""
    env = make_env(env_id, max_ep_len)
    continuous = isinstance(env.action_space, gym.spaces.Box)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                action = policy.deterministic_action(torch.as_tensor(obs, dtype=torch.float32)).numpy()
            if continuous:
                action = np.clip(action, env.action_space.low, env.action_space.high)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns
