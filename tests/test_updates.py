"""The value-function fit every update rule shares: full-batch and minibatch passes."""

from __future__ import annotations

import pytest
import torch

from trpo.buffer import Batch
from trpo.networks import GaussianPolicy, ValueFunction
from trpo.updates import VPG

OBS_DIM, ROWS = 3, 64


class RecordingValueFunction(ValueFunction):
    """A value function that remembers which observation rows each forward pass saw (column 0 holds the row id)."""

    def __init__(self):
        super().__init__(OBS_DIM, [16], "tanh")
        self.seen: list[torch.Tensor] = []

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.seen.append(obs[:, 0].long().clone())
        return super().forward(obs)


def value_batch() -> Batch:
    generator = torch.Generator().manual_seed(0)
    obs = torch.randn(ROWS, OBS_DIM, generator=generator)
    obs[:, 0] = torch.arange(ROWS, dtype=torch.float32)
    returns = obs[:, 1] * 2.0 - obs[:, 2]
    return Batch(obs, torch.zeros(ROWS, 1), torch.zeros(ROWS), torch.zeros(ROWS), returns)


@pytest.mark.parametrize("minibatches", [1, 4])
def test_value_fit_visits_every_row_once_per_pass_and_lowers_the_loss(minibatches: int) -> None:
    torch.manual_seed(0)
    value_function = RecordingValueFunction()
    policy = GaussianPolicy(OBS_DIM, 1, [8], "tanh", -0.5)
    rule = VPG(policy, value_function, pi_lr=1e-3, train_pi_iters=1, gamma=0.99, lam=0.97, vf_lr=1e-2,
               train_v_iters=3, vf_minibatches=minibatches)

    stats = rule.fit_value_function(value_batch())

    assert len(value_function.seen) == 3 * minibatches  # one Adam step per minibatch per pass
    for p in range(3):
        rows = torch.cat(value_function.seen[p * minibatches : (p + 1) * minibatches])
        assert sorted(rows.tolist()) == list(range(ROWS))
        if minibatches > 1:
            assert rows.tolist() != list(range(ROWS))  # shuffled
            assert all(len(s) == ROWS // minibatches for s in value_function.seen)
    assert stats["DeltaLossV"] < 0


def test_full_batch_value_fit_draws_no_random_numbers() -> None:
    """Spinning Up's full-batch fit leaves the torch RNG untouched, so runs made before minibatches existed
    keep their numbers."""
    torch.manual_seed(0)
    rule = VPG(GaussianPolicy(OBS_DIM, 1, [8], "tanh", -0.5), ValueFunction(OBS_DIM, [16], "tanh"),
               pi_lr=1e-3, train_pi_iters=1, gamma=0.99, lam=0.97, vf_lr=1e-2, train_v_iters=3)
    state = torch.get_rng_state()
    rule.fit_value_function(value_batch())
    assert torch.equal(torch.get_rng_state(), state)
