"""Running statistics that put observations and rewards on a common scale.

Both are off by default (Spinning Up's TRPO uses neither). They matter on MuJoCo tasks whose observation entries
differ by orders of magnitude, and where rewards are large: the policy and value networks then see inputs and
targets near unit scale. Their state is saved in checkpoints and frozen at evaluation.
"""

from __future__ import annotations

import numpy as np


class RunningMeanStd:
    """Mean and variance of a stream of batches, merged with Chan et al.'s parallel update."""

    def __init__(self, shape: tuple = (), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = epsilon  # a tiny prior count, so the first batch does not divide by zero

    def update(self, batch: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        self.var = np.asarray(state["var"], dtype=np.float64)
        self.count = state["count"]


class ObservationNormalizer:
    r""":math:`\text{clip}((o - \mu) / \sqrt{\sigma^2 + \epsilon}, \pm 10)`, with running :math:`\mu` and
    :math:`\sigma^2`."""

    def __init__(self, shape: tuple, clip: float = 10.0, epsilon: float = 1e-8):
        self.stats = RunningMeanStd(shape)
        self.clip = clip
        self.epsilon = epsilon

    def update(self, obs: np.ndarray) -> None:
        # A non-finite observation (its epoch's update is skipped) stays out of the stats, which would stay NaN.
        finite_rows = np.isfinite(obs).all(axis=1)
        if finite_rows.any():
            self.stats.update(obs[finite_rows])

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        scaled = (obs - self.stats.mean) / np.sqrt(self.stats.var + self.epsilon)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state)


class RewardScaler:
    """Divides rewards by the running standard deviation of the discounted return (not centred, so the sign of a
    reward is kept), as SB3's ``VecNormalize`` does. The discounted return restarts with each episode."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8):
        self.stats = RunningMeanStd(())
        self.returns = np.zeros(num_envs)
        self.gamma = gamma
        self.clip = clip
        self.epsilon = epsilon

    def __call__(self, rewards: np.ndarray, episode_ends: np.ndarray) -> np.ndarray:
        finite = np.isfinite(rewards)
        # A non-finite reward (its epoch's update is skipped) restarts that env's return and stays out of the stats.
        self.returns = np.where(finite, self.returns * self.gamma + rewards, 0.0)
        if finite.any():
            self.stats.update(self.returns[finite])
        self.returns[episode_ends] = 0.0
        return np.clip(rewards / np.sqrt(self.stats.var + self.epsilon), -self.clip, self.clip)

    def state_dict(self) -> dict:
        return {**self.stats.state_dict(), "returns": self.returns.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state)
        self.returns = np.asarray(state["returns"], dtype=np.float64)
