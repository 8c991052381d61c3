"""The env batch: lockstep stepping changes nothing about each env's episodes, in-process or over workers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from trpo.config import ConfigError
from trpo.envs import EnvBatch, SubprocEnvBatch, make_env, make_env_batch


def single_env_rollout(
    env_id: str, max_ep_len: int, seed: int, actions: np.ndarray, clip_actions: bool = True
) -> tuple[list, list, np.ndarray]:
    """One plain Gymnasium env driven by ``actions`` (clipped to the box if ``clip_actions``), reset on episode end:
    the oracle."""
    env = gym.make(env_id, max_episode_steps=max_ep_len)
    obs, _ = env.reset(seed=seed)
    returns, rewards, total = [], [], 0.0
    observations = [obs]
    for action in actions:
        if clip_actions:
            action = np.clip(action, env.action_space.low, env.action_space.high)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        total += reward
        if terminated or truncated:
            returns.append(total)
            total = 0.0
            obs, _ = env.reset()
        observations.append(obs)
    return returns, rewards, np.array(observations, dtype=np.float32)


@pytest.mark.parametrize("clip_actions", [True, False])
@pytest.mark.parametrize("workers", [0, 2])
def test_batched_envs_match_single_envs(workers: int, clip_actions: bool) -> None:
    """Env i of a batch seeded with s gives the same rewards, observations and episode returns as a lone env
    seeded with s + i fed the same actions, including episodes that end (time limit 30) and reset mid-batch.
    The actions reach 1.5 against Hopper's bound of 1: clipped only with ``clip_actions`` (Hopper's control cost
    charges the action it is given, so an unclipped one shows in the rewards)."""
    env_id, max_ep_len, num_envs, seed, steps = "Hopper-v5", 30, 3, 7, 80
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1.5, 1.5, size=(steps, num_envs, 3)).astype(np.float32)
    batch = (
        EnvBatch(env_id, max_ep_len, num_envs, clip_actions)
        if workers == 0
        else SubprocEnvBatch(env_id, max_ep_len, num_envs, 2, clip_actions)
    )
    try:
        obs = [batch.reset(seed=seed)]
        rewards, finished = [], []
        for t in range(steps):
            result = batch.step(actions[t])
            obs.append(result.obs)
            rewards.append(result.rewards)
            finished += result.finished_returns
    finally:
        batch.close()
    obs, rewards = np.array(obs), np.array(rewards)
    all_returns = []
    for i in range(num_envs):
        returns, env_rewards, env_obs = single_env_rollout(env_id, max_ep_len, seed + i, actions[:, i], clip_actions)
        np.testing.assert_array_equal(rewards[:, i], env_rewards)
        np.testing.assert_array_equal(obs[:, i], env_obs)
        all_returns += returns
        assert len(returns) >= 2  # episodes did end and reset inside the test
    assert sorted(finished) == pytest.approx(sorted(all_returns))


@pytest.mark.parametrize("workers", [0, 2])
def test_env_kwargs_reach_every_env_and_a_wrong_one_is_a_one_line_config_error(workers: int) -> None:
    """``env.kwargs`` go to each env's constructor, in this process and in the workers (HalfCheetah-v5 with its x
    position in the observation: 18 numbers instead of 17); a keyword the env does not take is refused as a
    :class:`ConfigError` naming env.kwargs, from the workers too."""
    kwargs = {"exclude_current_positions_from_observation": False}
    batch = make_env_batch("HalfCheetah-v5", 10, 2, workers, make_kwargs=kwargs)
    try:
        assert batch.observation_space.shape == (18,)
        assert batch.reset(seed=0).shape == (2, 18)
    finally:
        batch.close()
    assert make_env("HalfCheetah-v5", 10).observation_space.shape == (17,)
    with pytest.raises(ConfigError, match=r"^env\.kwargs=\{'no_such_option': 1\} is not allowed for HalfCheetah-v5"):
        make_env_batch("HalfCheetah-v5", 10, 2, workers, make_kwargs={"no_such_option": 1})
