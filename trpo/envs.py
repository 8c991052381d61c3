"""Environment factory and a lean batch of environments stepped in lockstep.

:class:`EnvBatch` steps ``num_envs`` Gymnasium environments and returns stacked arrays, so the sampler makes
one batched policy call per step. An episode that ends is reset in the same step: the observation returned
for that env is the new episode's first one, and the last observation of the finished episode is handed back
separately (``final_obs``) so a time-limited episode can be bootstrapped with :math:`V` of its true last state.
No transition of one episode ever leaks into the next.

:class:`SubprocEnvBatch` has the same interface and the same results for the same seed, but splits the envs
over worker processes that step in parallel, so the physics runs on every core while this process runs the
policy.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import pickle
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np

from trpo.config import ConfigError


def make_env(
    env_id: str, max_ep_len: int, render_mode: str | None = None, make_kwargs: Mapping[str, Any] | None = None
) -> gym.Env:
    """One Gymnasium env whose episodes are cut (``truncated``) after ``max_ep_len`` steps; ``make_kwargs`` (the
    config's ``env.kwargs``) go to the env's constructor, e.g. Ant-v5's ``include_cfrc_ext_in_observation``.

    Raises :class:`ConfigError` (one line) for a keyword the env does not take.
    """
    if not make_kwargs:
        return gym.make(env_id, max_episode_steps=max_ep_len, render_mode=render_mode)
    try:
        return gym.make(env_id, max_episode_steps=max_ep_len, render_mode=render_mode, **make_kwargs)
    except TypeError as error:  # the constructor's own refusal of a keyword or of a value's type
        raise ConfigError(f"env.kwargs={dict(make_kwargs)} is not allowed for {env_id}: {error}") from None


@dataclass
class StepResult:
    """What one lockstep step of all envs returns; arrays have the batch as their first axis."""

    obs: np.ndarray  # next observation; the reset one where the episode just ended
    rewards: np.ndarray
    terminated: np.ndarray  # the episode reached a terminal state: its future value is 0
    truncated: np.ndarray  # the episode was cut by the time limit: its future value is V(final_obs)
    final_obs: np.ndarray  # where an episode ended, its last observation (used where truncated); else obs
    finished_returns: list[float]  # undiscounted returns of the episodes that ended this step
    finished_lengths: list[int]


class EnvBatch:
    """``num_envs`` copies of one env, stepped in lockstep in this process, reset as soon as an episode ends."""

    def __init__(
        self,
        env_id: str,
        max_ep_len: int,
        num_envs: int,
        clip_actions: bool = True,
        make_kwargs: Mapping[str, Any] | None = None,
    ):
        self.envs = [make_env(env_id, max_ep_len, make_kwargs=make_kwargs) for _ in range(num_envs)]
        self.num_envs = num_envs
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self._clip = clip_actions and isinstance(self.action_space, gym.spaces.Box)
        self._episode_returns = np.zeros(num_envs)
        self._episode_lengths = np.zeros(num_envs, dtype=np.int64)
        # How each env's current episode began and the actions taken since: enough to rebuild its exact state
        # (see get_state) from plain numbers, for any env, without pickling simulator objects.
        self._episode_starts: list[dict] = [{} for _ in range(num_envs)]
        self._episode_actions: list[list] = [[] for _ in range(num_envs)]

    def reset(self, seed: int) -> np.ndarray:
        """Start a fresh episode in every env; env ``i`` is seeded with ``seed + i``."""
        self._episode_returns[:] = 0
        self._episode_lengths[:] = 0
        for i in range(self.num_envs):
            self._episode_starts[i] = {"seed": seed + i}
            self._episode_actions[i] = []
        return np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)]).astype(np.float32)

    def get_state(self) -> list[dict]:
        """Each env's state as plain data: its episode's reset seed or RNG state, and the actions since."""
        return [
            {**start, "actions": np.asarray(actions).tolist()}
            for start, actions in zip(self._episode_starts, self._episode_actions)
        ]

    def set_state(self, states: list[dict]) -> np.ndarray:
        """Rebuild the exact state of :meth:`get_state` by resetting as then and replaying the actions;
        returns the current observations."""
        obs = []
        for i, (env, state) in enumerate(zip(self.envs, states)):
            if "seed" in state:
                o, _ = env.reset(seed=state["seed"])
            else:
                env.unwrapped.np_random.bit_generator.state = state["rng_state"]
                o, _ = env.reset()
            self._episode_starts[i] = {k: v for k, v in state.items() if k != "actions"}
            self._episode_actions[i] = []
            self._episode_returns[i] = 0
            self._episode_lengths[i] = 0
            for action in np.asarray(state["actions"], dtype=self.action_space.dtype):
                o, r, *_ = env.step(action)
                self._episode_actions[i].append(action)
                self._episode_returns[i] += r
                self._episode_lengths[i] += 1
            obs.append(o)
        return np.stack(obs).astype(np.float32)

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
            self._episode_actions[i].append(actions[i])
            final_obs.append(o)
            if term or trunc:
                finished_returns.append(float(self._episode_returns[i]))
                finished_lengths.append(int(self._episode_lengths[i]))
                self._episode_returns[i] = 0
                self._episode_lengths[i] = 0
                self._episode_starts[i] = {"rng_state": env.unwrapped.np_random.bit_generator.state}
                self._episode_actions[i] = []
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


def _env_worker(
    conn: Connection,
    env_id: str,
    max_ep_len: int,
    num_envs: int,
    clip_actions: bool,
    make_kwargs: Mapping[str, Any] | None,
) -> None:
    """Serve one slice of the envs until told to close. An exception, in making the envs or in a command, is sent to
    the parent and ends the worker: the parent raises it again, so a run fails with the error it would have in one
    process, not with the EOFError of a pipe whose other end died."""
    envs = None
    try:
        envs = EnvBatch(env_id, max_ep_len, num_envs, clip_actions, make_kwargs)
        conn.send((envs.observation_space, envs.action_space))
        while True:
            command, argument = conn.recv()
            if command == "close":
                return
            method = getattr(envs, command)  # step, reset, get_state or set_state
            conn.send(method() if command == "get_state" else method(argument))
    except Exception as error:
        with contextlib.suppress(OSError):  # OSError: the parent is gone
            conn.send(_sendable(error))
    finally:
        if envs is not None:
            envs.close()
        conn.close()


def _sendable(error: Exception) -> Exception:
    """``error`` with the worker's traceback added as a note, which the parent's traceback shows (its one-line
    ``str``, e.g. a ConfigError's message, stays as it is); a RuntimeError of its type and message instead if it
    would not come out of the pipe as it went in (a custom exception whose arguments do not rebuild it)."""
    error.add_note(f"raised in an env worker:\n{traceback.format_exc()}")
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


class SubprocEnvBatch:
    """An :class:`EnvBatch` whose envs are split over ``num_workers`` processes stepping in parallel.

    Env ``i`` is seeded with ``seed + i`` whichever worker holds it, so a run does not depend on
    ``num_workers``. Each step sends every worker its slice of the actions, then gathers the results in env order.
    """

    def __init__(
        self,
        env_id: str,
        max_ep_len: int,
        num_envs: int,
        num_workers: int,
        clip_actions: bool = True,
        make_kwargs: Mapping[str, Any] | None = None,
    ):
        num_workers = min(num_workers, num_envs)
        bounds = [round(k * num_envs / num_workers) for k in range(num_workers + 1)]
        self.slices = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.num_envs = num_envs
        # spawn, not fork: the parent may already run threads (torch, W&B) that fork would copy half-way.
        context = mp.get_context("spawn")
        self.connections, self.processes = [], []
        for part in self.slices:
            parent, child = context.Pipe()
            process = context.Process(
                target=_env_worker,
                args=(child, env_id, max_ep_len, part.stop - part.start, clip_actions, make_kwargs),
                daemon=True,
            )
            process.start()
            child.close()
            self.connections.append(parent)
            self.processes.append(process)
        self.observation_space, self.action_space = self._gather()[0]

    def reset(self, seed: int) -> np.ndarray:
        for conn, part in zip(self.connections, self.slices):
            conn.send(("reset", seed + part.start))
        return np.concatenate(self._gather())

    def get_state(self) -> list[dict]:
        for conn in self.connections:
            conn.send(("get_state", None))
        return [state for states in self._gather() for state in states]

    def set_state(self, states: list[dict]) -> np.ndarray:
        for conn, part in zip(self.connections, self.slices):
            conn.send(("set_state", states[part]))
        return np.concatenate(self._gather())

    def step(self, actions: np.ndarray) -> StepResult:
        for conn, part in zip(self.connections, self.slices):
            conn.send(("step", actions[part]))
        parts = self._gather()
        return StepResult(
            obs=np.concatenate([p.obs for p in parts]),
            rewards=np.concatenate([p.rewards for p in parts]),
            terminated=np.concatenate([p.terminated for p in parts]),
            truncated=np.concatenate([p.truncated for p in parts]),
            final_obs=np.concatenate([p.final_obs for p in parts]),
            finished_returns=[r for p in parts for r in p.finished_returns],
            finished_lengths=[n for p in parts for n in p.finished_lengths],
        )

    def _gather(self) -> list[Any]:
        """Every worker's reply to the last command, in env order. Where a worker sent an exception instead (and
        ended), or died without a word, the batch is closed and the error raised here."""
        try:
            replies = [conn.recv() for conn in self.connections]
        except EOFError:
            self.close()
            raise RuntimeError("an env worker process died without a reply (killed, or out of memory?)") from None
        if failed := [reply for reply in replies if isinstance(reply, Exception)]:
            self.close()
            raise failed[0]
        return replies

    def close(self) -> None:
        for conn in self.connections:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


def make_env_batch(
    env_id: str,
    max_ep_len: int,
    num_envs: int,
    workers: int,
    clip_actions: bool = True,
    make_kwargs: Mapping[str, Any] | None = None,
) -> EnvBatch | SubprocEnvBatch:
    """``num_envs`` envs in this process (``workers`` = 0) or split over ``workers`` processes."""
    if workers == 0:
        return EnvBatch(env_id, max_ep_len, num_envs, clip_actions, make_kwargs)
    return SubprocEnvBatch(env_id, max_ep_len, num_envs, workers, clip_actions, make_kwargs)
