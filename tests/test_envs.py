"""The env batch: lockstep stepping changes nothing about each env's episodes, in-process or over workers."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest

from trpo.config import ConfigError
from trpo.envs import EnvBatch, SubprocEnvBatch, _sendable, make_env, make_env_batch


@dataclass
class Rollout:
    """What one env did, step by step: the oracle for that env's column of an env batch."""

    obs: np.ndarray  # after each step (the reset one where an episode ended), the first reset's in front
    rewards: np.ndarray
    final_obs: np.ndarray  # the step's own next observation, before any reset
    terminated: np.ndarray
    truncated: np.ndarray  # cut by the time limit and not terminal
    returns: list[float]  # of the episodes that ended, in order
    lengths: list[int]


def single_env_rollout(
    env_id: str, max_ep_len: int, seed: int, actions: np.ndarray, clip_actions: bool = True
) -> Rollout:
    """One plain Gymnasium env driven by ``actions`` (clipped to the box if ``clip_actions``), reset on episode end:
    the oracle."""
    env = gym.make(env_id, max_episode_steps=max_ep_len)
    obs, _ = env.reset(seed=seed)
    observations, rewards, final_obs, terminals, cuts, returns, lengths = [obs], [], [], [], [], [], []
    total, length = 0.0, 0
    for action in actions:
        if clip_actions:
            action = np.clip(action, env.action_space.low, env.action_space.high)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        final_obs.append(obs)
        terminals.append(terminated)
        cuts.append(truncated and not terminated)
        total, length = total + reward, length + 1
        if terminated or truncated:
            returns.append(total)
            lengths.append(length)
            total, length = 0.0, 0
            obs, _ = env.reset()
        observations.append(obs)
    as_float32 = lambda rows: np.array(rows, dtype=np.float32)  # noqa: E731
    return Rollout(
        as_float32(observations), np.array(rewards), as_float32(final_obs), np.array(terminals), np.array(cuts),
        returns, lengths,
    )


@pytest.mark.parametrize("clip_actions", [True, False])
@pytest.mark.parametrize("workers", [0, 2])
def test_batched_envs_match_single_envs(workers: int, clip_actions: bool) -> None:
    """Env i of a batch seeded with s gives the same rewards, observations, episode ends (terminated, or cut by
    the time limit 30), last observations before a reset (what a cut episode is bootstrapped from), and episode
    returns and lengths as a lone env seeded with s + i fed the same actions, with episodes ending mid-batch.
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
        results = [batch.step(actions[t]) for t in range(steps)]
    finally:
        batch.close()
    obs += [result.obs for result in results]
    column = lambda field: np.array([getattr(result, field) for result in results])  # noqa: E731
    finished = [(r, n) for result in results for r, n in zip(result.finished_returns, result.finished_lengths)]
    expected_finished = []
    for i in range(num_envs):
        oracle = single_env_rollout(env_id, max_ep_len, seed + i, actions[:, i], clip_actions)
        np.testing.assert_array_equal(column("rewards")[:, i], oracle.rewards)
        np.testing.assert_array_equal(np.array(obs)[:, i], oracle.obs)
        np.testing.assert_array_equal(column("final_obs")[:, i], oracle.final_obs)
        np.testing.assert_array_equal(column("terminated")[:, i], oracle.terminated)
        np.testing.assert_array_equal(column("truncated")[:, i], oracle.truncated)
        expected_finished += list(zip(oracle.returns, oracle.lengths))
        assert len(oracle.returns) >= 2  # episodes did end and reset inside the test
    finished, expected_finished = sorted(finished), sorted(expected_finished)
    assert [r for r, _ in finished] == pytest.approx([r for r, _ in expected_finished])
    assert [n for _, n in finished] == [n for _, n in expected_finished]
    assert column("terminated").any() and column("truncated").any()  # both kinds of episode end were checked


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


@pytest.mark.parametrize("workers", [0, 2])
def test_an_env_error_is_raised_as_it_would_be_in_one_process(workers: int, tmp_path) -> None:
    """Any error of an env, in making it or in a command, reaches the caller as itself, not as the EOFError of a
    pipe whose worker died: the worker sends it (with its traceback as a note) and ends, and the batch closes its
    other workers, which end cleanly."""
    missing = tmp_path / "missing.xml"
    with pytest.raises(OSError, match="missing.xml"):
        make_env_batch("Hopper-v5", 10, 2, workers, make_kwargs={"xml_file": str(missing)})
    batch = make_env_batch("Hopper-v5", 10, 2, workers)
    batch.reset(seed=0)
    first_env_state = batch.get_state()[0]
    try:
        with pytest.raises(KeyError) as error:
            batch.set_state([first_env_state, {}])  # the second env's state lacks its fields: its worker fails
        if workers:
            assert "raised in an env worker" in "".join(error.value.__notes__)
            # Ended by the failed command itself, before anyone closes the batch.
            assert [process.exitcode for process in batch.processes] == [0, 0]
    finally:
        batch.close()


class NeedsTwoArguments(Exception):
    def __init__(self, first, second):
        super().__init__(f"{first} and {second}")


def test_an_error_that_does_not_unpickle_is_sent_as_its_type_and_message() -> None:
    """Pickling keeps only the message of an exception, so one whose constructor needs other arguments would
    fail in the parent as a TypeError: the worker sends a RuntimeError saying what it was instead."""
    for raised, expected_type, expected_text in [
        (NeedsTwoArguments(1, 2), RuntimeError, "NeedsTwoArguments: 1 and 2"),
        (ConfigError("env.kwargs=... is not allowed"), ConfigError, "env.kwargs=... is not allowed"),
    ]:
        try:
            raise raised
        except Exception as error:  # as the worker catches it
            sent = pickle.loads(pickle.dumps(_sendable(error)))
        assert type(sent) is expected_type and str(sent) == expected_text
