"""What every update rule shares: the value-function fit (full-batch and minibatch passes, its learning-rate
schedule) and the advantages' normalisation before the policy step."""

from __future__ import annotations

import copy

import pytest
import torch

import trpo.updates
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


@pytest.mark.parametrize("minibatches", [1, 4, 10])  # 10 does not divide the 64 rows: sizes 7 and 6
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
            assert {len(s) for s in value_function.seen} <= {ROWS // minibatches, -(-ROWS // minibatches)}
    assert stats["DeltaLossV"] < 0


@pytest.mark.parametrize("minibatches", [1, 4])
def test_value_fit_is_adam_on_each_minibatchs_mean_squared_error(minibatches: int) -> None:
    """The fit against Adam written out by hand (beta 0.9 / 0.999, eps 1e-8, bias-corrected) on
    mean((V(s) - R)^2) over the same minibatch rows: the same weights, LossV the full batch's loss before,
    DeltaLossV its change."""
    torch.manual_seed(0)
    rule = VPG(GaussianPolicy(OBS_DIM, 1, [8], "tanh", -0.5), ValueFunction(OBS_DIM, [16], "tanh"),
               pi_lr=1e-3, train_pi_iters=1, gamma=0.99, lam=0.97, vf_lr=1e-2, train_v_iters=3,
               vf_minibatches=minibatches)
    batch = value_batch()
    job = rule.value_fit_job(batch)
    oracle = copy.deepcopy(rule.value_function)
    params = list(oracle.parameters())
    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]

    def loss(rows=slice(None)) -> torch.Tensor:
        errors = oracle(batch.obs[rows]) - batch.returns[rows]
        return (errors**2).sum() / len(errors)

    with torch.no_grad():
        loss_before = loss().item()
    step = 0
    for minibatch_rows in job.passes:
        for rows in minibatch_rows:
            step += 1
            grads = torch.autograd.grad(loss(rows), params)
            with torch.no_grad():
                for p, g, m_p, v_p in zip(params, grads, m, v):
                    m_p.mul_(0.9).add_(0.1 * g)
                    v_p.mul_(0.999).add_(0.001 * g * g)
                    p -= 1e-2 * (m_p / (1 - 0.9**step)) / ((v_p / (1 - 0.999**step)).sqrt() + 1e-8)
    with torch.no_grad():
        loss_after = loss().item()

    stats = trpo.updates.fit_value_function(rule.value_function, rule.vf_optimizer, job)
    assert step == 3 * minibatches
    for fitted, expected in zip(rule.value_function.parameters(), params):
        torch.testing.assert_close(fitted, expected, rtol=1e-5, atol=1e-6)
    assert stats["LossV"] == pytest.approx(loss_before, rel=1e-6)
    assert stats["DeltaLossV"] == pytest.approx(loss_after - loss_before, rel=1e-4, abs=1e-6)


def test_full_batch_value_fit_draws_no_random_numbers() -> None:
    """Spinning Up's full-batch fit leaves the torch RNG untouched, so runs made before minibatches existed
    keep their numbers."""
    torch.manual_seed(0)
    rule = VPG(GaussianPolicy(OBS_DIM, 1, [8], "tanh", -0.5), ValueFunction(OBS_DIM, [16], "tanh"),
               pi_lr=1e-3, train_pi_iters=1, gamma=0.99, lam=0.97, vf_lr=1e-2, train_v_iters=3)
    state = torch.get_rng_state()
    rule.fit_value_function(value_batch())
    assert torch.equal(torch.get_rng_state(), state)


def vpg(**options) -> VPG:
    torch.manual_seed(0)
    return VPG(GaussianPolicy(OBS_DIM, 1, [8], "tanh", -0.5), ValueFunction(OBS_DIM, [16], "tanh"), pi_lr=1e-3,
               train_pi_iters=1, gamma=0.99, lam=0.97, vf_lr=1e-2, train_v_iters=3, **options)


@pytest.mark.parametrize("schedule, expected", [("constant", [1e-2, 1e-2, 1e-2]), ("linear", [1e-2, 2.5e-3, 0.0])])
def test_the_critic_learning_rate_follows_its_schedule(schedule: str, expected: list[float]) -> None:
    rule = vpg(vf_lr_schedule=schedule)
    rates = []
    for progress in (0.0, 0.75, 1.0):
        rule.anneal(progress)
        rates.append(rule.vf_optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("normalize", [False, True])
def test_the_policy_step_sees_advantages_centred_and_scaled_only_when_asked(normalize: bool, monkeypatch) -> None:
    """With normalize_advantages the step gets (A - mean) / std and the std as advantage_scale (natural_lr's
    units); without it, the batch as it came."""
    rule = vpg(normalize_advantages=normalize)
    seen: list[Batch] = []
    monkeypatch.setattr(rule, "policy_step", lambda batch: seen.append(batch) or {})
    generator = torch.Generator().manual_seed(1)
    advantages = 3.0 + 2.0 * torch.randn(ROWS, generator=generator)
    batch = Batch(torch.randn(ROWS, OBS_DIM, generator=generator), torch.zeros(ROWS, 1), torch.zeros(ROWS),
                  advantages, torch.zeros(ROWS))

    rule.improve_policy(batch)

    (stepped,) = seen
    if normalize:
        expected = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        torch.testing.assert_close(stepped.advantages, expected)
        assert stepped.advantage_scale == pytest.approx(advantages.std().item(), rel=1e-6)
    else:
        assert stepped is batch and stepped.advantage_scale == 1.0
