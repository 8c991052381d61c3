"""Unit tests of the trust-region mathematics in :mod:`trpo.trust_region` and of :meth:`trpo.updates.TRPO.policy_step`.

Every quantity is checked against an independent oracle: ``torch.linalg.solve`` for conjugate gradient, an explicit
Hessian from ``torch.autograd.functional.hessian`` for the Fisher-vector product, closed-form KL divergences, and
hand-written surrogates. Everything runs in float64 on tiny networks so the tolerances can be tight.
"""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.func import functional_call

import trpo.updates
from trpo.buffer import Batch
from trpo.config import ConfigError
from trpo.networks import BetaPolicy, CategoricalPolicy, GaussianPolicy, ValueFunction, make_policy
from trpo.trust_region import (
    backtracking_line_search,
    conjugate_gradient,
    fisher_vector_product,
    flat_grad,
    flat_params,
    max_step,
    mean_kl,
    surrogate_advantage,
)
from trpo.updates import TRPO

OBS_DIM = 3
BATCH_SIZE = 64
ACTION_SPACES = {
    "gaussian": gym.spaces.Box(-1.0, 1.0, (2,)),
    "bounded_gaussian": gym.spaces.Box(np.float32([-1.0, 0.0]), np.float32([3.0, 0.5])),  # policy.bounded_mean=true
    "categorical": gym.spaces.Discrete(3),
    "beta": gym.spaces.Box(np.float32([-1.0, 0.0]), np.float32([3.0, 0.5])),  # policy.distribution=beta
    "scheduled_gaussian": gym.spaces.Box(-1.0, 1.0, (2,)),  # policy.final_log_std=-1.5
}


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Run these tiny problems on one torch thread: on a busy 2-core machine, idle intra-op threads spinning
    against other processes made the tests several times slower. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_policy(kind: str, seed: int = 0, activation: str = "tanh", hidden_sizes: tuple = (5,)):
    """A float64 policy (obs_dim 3, by default one hidden layer of 5) for ``kind`` in ACTION_SPACES."""
    torch.manual_seed(seed)
    observation_space = gym.spaces.Box(-1.0, 1.0, (OBS_DIM,))
    bounded = kind == "bounded_gaussian"
    distribution = "beta" if kind == "beta" else "gaussian"
    policy = make_policy(
        observation_space,
        ACTION_SPACES[kind],
        list(hidden_sizes),
        activation,
        -0.5,
        bounded_mean=bounded,
        distribution=distribution,
        final_log_std=-1.5 if kind == "scheduled_gaussian" else None,
    ).double()
    expected_type = {"categorical": CategoricalPolicy, "beta": BetaPolicy}.get(kind, GaussianPolicy)
    assert isinstance(policy, expected_type)
    # Out of the near-zero start, so the mean's tanh and the softplus of the concentrations are curved, and the
    # Betas differ between states and dimensions, where the tests look.
    if bounded:
        with torch.no_grad():
            policy.mean_net[-2].weight.mul_(300.0)
    if kind == "beta":
        with torch.no_grad():
            policy.concentration_net[-1].weight.mul_(10.0)
    return policy


def random_spd(dim: int, seed: int) -> torch.Tensor:
    """A random symmetric positive-definite float64 matrix ``M M^T + I``."""
    generator = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return m @ m.T + torch.eye(dim, dtype=torch.float64)


def closed_form_kl(old, new) -> torch.Tensor:
    """Mean over the batch of KL(old || new), written out by hand for diagonal Gaussians, categoricals and Betas
    (a Beta stretched to the box has the KL of the Betas on [0, 1])."""
    if isinstance(old, torch.distributions.Categorical):
        log_p, log_q = old.logits, new.logits  # both normalised log-probabilities
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    if isinstance(old.base_dist, torch.distributions.TransformedDistribution):
        (a_p, b_p), (a_q, b_q) = (
            (d.base_dist.base_dist.concentration1, d.base_dist.base_dist.concentration0) for d in (old, new)
        )

        def log_beta_function(a, b):
            return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)

        per_dim = (
            log_beta_function(a_q, b_q)
            - log_beta_function(a_p, b_p)
            + (a_p - a_q) * torch.digamma(a_p)
            + (b_p - b_q) * torch.digamma(b_p)
            + (a_q - a_p + b_q - b_p) * torch.digamma(a_p + b_p)
        )
        return per_dim.sum(-1).mean()
    mu_p, sigma_p, mu_q, sigma_q = old.mean, old.stddev, new.mean, new.stddev
    per_dim = torch.log(sigma_q / sigma_p) + (sigma_p**2 + (mu_p - mu_q) ** 2) / (2 * sigma_q**2) - 0.5
    return per_dim.sum(-1).mean()


class _DistributionOf(torch.nn.Module):
    """Wraps a policy so that ``torch.func.functional_call`` can evaluate its distribution at given parameters."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, obs):
        return self.policy.distribution(obs)


def explicit_kl_hessian(policy, obs: torch.Tensor) -> torch.Tensor:
    """``hessian(theta -> mean KL(pi_old || pi_theta))`` at the current parameters theta_old, as a dense matrix,
    from a closed-form KL of the flat parameter vector (split back into the policy's parameter shapes)."""
    wrapper = _DistributionOf(policy)
    names = [name for name, _ in wrapper.named_parameters()]
    shapes = [p.shape for _, p in wrapper.named_parameters()]
    theta_old = flat_params(list(policy.parameters()))
    with torch.no_grad():
        old = policy.distribution(obs)

    def kl_of_flat(theta: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, [s.numel() for s in shapes])
        params = {name: piece.view(shape) for name, piece, shape in zip(names, pieces, shapes)}
        return closed_form_kl(old, functional_call(wrapper, params, (obs,)))

    return torch.autograd.functional.hessian(kl_of_flat, theta_old, vectorize=True)


def random_batch(policy, seed: int, size: int = BATCH_SIZE) -> Batch:
    """Random states, actions sampled from ``policy``, their log-probs, and random advantages (float64)."""
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(size, OBS_DIM, generator=generator, dtype=torch.float64)
    torch.manual_seed(seed)
    with torch.no_grad():
        distribution = policy.distribution(obs)
        actions = distribution.sample()
        logp = distribution.log_prob(actions)
    advantages = torch.randn(size, generator=generator, dtype=torch.float64)
    return Batch(obs, actions, logp, advantages, torch.zeros(size, dtype=torch.float64))


def make_trpo(policy, delta: float, **options) -> TRPO:
    """TRPO at Spinning Up's settings (10 CG iterations, 10 backtracks of 0.8) with the given delta; ``options``
    add to or override them."""
    value_function = ValueFunction(OBS_DIM, [5], "tanh").double()
    settings = dict(damping_coeff=0.1, cg_iters=10, backtrack_iters=10, backtrack_coeff=0.8, gamma=0.99, lam=0.97,
                    vf_lr=1e-3, train_v_iters=1)
    return TRPO(policy, value_function, delta=delta, **{**settings, **options})


# --- conjugate gradient -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "iters, rtol",
    [
        # Exact termination after dim steps holds only in exact arithmetic; in float64 the lost conjugacy of a
        # condition number ~80 leaves ~1e-4 relative error at iters == dim, gone a few iterations later.
        (20, 1e-3),
        (25, 1e-9),
        (40, 1e-9),
    ],
)
def test_conjugate_gradient_solves_spd_system(seed, iters, rtol):
    """CG with iters >= dim solves a random 20x20 SPD system M M^T + I, compared with torch.linalg.solve."""
    a = random_spd(20, seed)
    b = torch.randn(20, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=iters, residual_tol=1e-24)
    expected = torch.linalg.solve(a, b)
    assert torch.linalg.norm(x - expected) <= rtol * torch.linalg.norm(expected)


def test_conjugate_gradient_default_tolerance_meets_residual_tol():
    """With the default residual_tol, CG stops with ||b - Ax||^2 below 1e-10 (the documented stopping rule)."""
    a = random_spd(20, 3)
    b = torch.randn(20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=20)
    residual = b - a @ x
    assert residual @ residual < 1e-10
    expected = torch.linalg.solve(a, b)
    assert torch.linalg.norm(x - expected) <= 1e-4 * torch.linalg.norm(expected)


def test_conjugate_gradient_fewer_iterations_are_worse():
    """Truncated CG: the A-norm error (vs torch.linalg.solve) falls every iteration; 1-5 iterations leave residuals."""
    a = random_spd(20, 4)
    b = torch.randn(20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = torch.linalg.solve(a, b)

    def a_norm_error(k):
        e = conjugate_gradient(lambda v: a @ v, b, iters=k, residual_tol=0.0) - exact
        return torch.sqrt(e @ a @ e).item()

    def residual_norm(k):
        return torch.linalg.norm(b - a @ conjugate_gradient(lambda v: a @ v, b, iters=k, residual_tol=1e-24)).item()

    errors = [a_norm_error(k) for k in range(0, 13)]
    for k in range(1, len(errors)):
        assert errors[k] < errors[k - 1], f"A-norm error did not decrease at iteration {k}: {errors}"
    full = residual_norm(20)
    for k in (1, 2, 5):
        assert residual_norm(k) > 1e3 * max(full, 1e-14)


def test_conjugate_gradient_stops_early_at_residual_tol():
    """When b is an eigenvector of A, CG converges in one step and makes no further matrix-vector products."""
    a = torch.diag(torch.tensor([2.0, 3.0, 5.0, 7.0], dtype=torch.float64))
    b = torch.tensor([0.0, 0.0, 4.0, 0.0], dtype=torch.float64)
    calls = []

    def product(v):
        calls.append(v.clone())
        return a @ v

    x = conjugate_gradient(product, b, iters=10)
    assert len(calls) == 1
    assert torch.allclose(x, torch.tensor([0.0, 0.0, 0.8, 0.0], dtype=torch.float64), rtol=1e-12, atol=0.0)


# --- Fisher-vector product ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
@pytest.mark.parametrize("kind", ["gaussian", "bounded_gaussian", "categorical", "beta", "scheduled_gaussian"])
def test_fisher_vector_product_matches_explicit_hessian(kind, activation):
    """fisher_vector_product(v), the Gauss-Newton form J^T M J v with a hand-written J v through two hidden layers,
    equals (explicit Hessian of the mean KL at theta_old + damping I) @ v."""
    policy = small_policy(kind, activation=activation, hidden_sizes=(5, 4))
    obs = torch.randn(32, OBS_DIM, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    params = list(policy.parameters())
    hessian = explicit_kl_hessian(policy, obs)
    assert torch.linalg.matrix_norm(hessian) > 1e-2  # a non-trivial Fisher matrix, so the comparison means something
    eye = torch.eye(len(hessian), dtype=torch.float64)

    generator = torch.Generator().manual_seed(8)
    outputs, jvp = policy.linearize(obs)
    for damping in (0.0, 0.1, 1.0):
        product = fisher_vector_product(outputs, jvp, policy.fisher_metric, params, damping)
        for _ in range(3):  # the graph of the distribution's parameters is reused across products
            v = torch.randn(len(hessian), generator=generator, dtype=torch.float64)
            actual, expected = product(v), (hessian + damping * eye) @ v
            assert torch.allclose(actual, expected, rtol=1e-9, atol=1e-11), (actual - expected).abs().max()


@pytest.mark.parametrize("kind", ["gaussian", "bounded_gaussian", "categorical", "beta"])
def test_the_linearisation_outputs_give_the_policy_distribution(kind):
    """The policy step takes its surrogate from the linearisation's forward pass: distribution_of(outputs) must be
    the policy's distribution, values and gradients alike."""
    policy = small_policy(kind, hidden_sizes=(5, 4))
    obs = torch.randn(16, OBS_DIM, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    direct = policy.distribution(obs)
    actions = direct.sample()
    outputs, _ = policy.linearize(obs)
    from_outputs = policy.distribution_of(outputs)
    params = list(policy.parameters())
    assert torch.equal(from_outputs.log_prob(actions), direct.log_prob(actions))
    assert torch.equal(
        flat_grad(from_outputs.log_prob(actions).mean(), params), flat_grad(direct.log_prob(actions).mean(), params)
    )


def test_bounded_mean_stays_inside_the_action_box_however_far_the_network_points():
    """policy.bounded_mean=true: mu = center + half_range * tanh(net), so a network scaled to point far out still
    puts the mean (the deterministic action) inside [low, high] and reaches both ends; unbounded, it leaves."""
    obs = 3 * torch.randn(256, OBS_DIM, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    box = ACTION_SPACES["bounded_gaussian"]
    low, high = (torch.as_tensor(bound, dtype=torch.float64) for bound in (box.low, box.high))
    means = {}
    for kind in ("bounded_gaussian", "gaussian"):
        policy = small_policy(kind)
        with torch.no_grad():
            policy.mean_net[-2 if kind == "bounded_gaussian" else -1].weight.mul_(1e3)
            means[kind] = policy.deterministic_action(obs)
            torch.testing.assert_close(policy.distribution(obs).mean, means[kind])
    bounded = means["bounded_gaussian"]
    assert ((bounded >= low) & (bounded <= high)).all()
    torch.testing.assert_close(bounded.min(0).values, low, atol=0.02, rtol=0)
    torch.testing.assert_close(bounded.max(0).values, high, atol=0.02, rtol=0)
    assert means["gaussian"].abs().max() > 10


def test_beta_policy_acts_inside_the_box_with_the_stretched_betas_probabilities():
    """policy.distribution=beta: a = low + (high - low) x with x ~ Beta(alpha, beta). Samples stay inside [low, high]
    (off its edges, so every log-probability is finite), the deterministic action is the stretched Beta's mean, and
    the log-probability of a is the Beta's at x less log(high - low), summed over dimensions."""
    policy = small_policy("beta")
    box = ACTION_SPACES["beta"]
    low, high = (torch.as_tensor(bound, dtype=torch.float64) for bound in (box.low, box.high))
    obs = 3 * torch.randn(256, OBS_DIM, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.manual_seed(0)
    with torch.no_grad():
        actions = policy.sample(obs)
        distribution = policy.distribution(obs)
        log_probs = distribution.log_prob(actions)
        alpha, beta = policy.linearize(obs)[0]
        unit = torch.distributions.Beta(alpha, beta)
        torch.testing.assert_close(policy.deterministic_action(obs), low + (high - low) * unit.mean)
    assert ((actions > low) & (actions < high)).all()
    assert torch.isfinite(log_probs).all()
    expected = (unit.log_prob((actions - low) / (high - low)) - torch.log(high - low)).sum(-1)
    torch.testing.assert_close(log_probs, expected)
    # The Betas differ between states, and some samples come within 5% of the box's width of each end.
    assert alpha.std() > 0.1 and beta.std() > 0.1
    assert (actions.min(0).values - low < 0.05 * (high - low)).all()
    assert (high - actions.max(0).values < 0.05 * (high - low)).all()


@pytest.mark.parametrize("kind", ["gaussian", "bounded_gaussian", "scheduled_gaussian"])
def test_the_gaussians_fast_sampler_draws_from_its_distribution(kind):
    """sample() skips building the distribution (mu + sigma * eps): 40,000 draws at two states have the
    distribution's mean and std per dimension (within 5 standard errors) and are uncorrelated across dimensions."""
    policy = small_policy(kind, seed=1)
    obs = torch.tensor([[0.3, -0.7, 0.1], [-0.9, 0.2, 0.5]], dtype=torch.float64)
    torch.manual_seed(2)
    draws = policy.sample(obs.repeat_interleave(20_000, dim=0)).reshape(2, 20_000, -1)
    with torch.no_grad():
        distribution = policy.distribution(obs)
    mean, std = distribution.mean, distribution.stddev
    assert (draws.mean(1) - mean).abs().max() < 5 * std.max() / math.sqrt(20_000)
    torch.testing.assert_close(draws.std(1), std, rtol=0.03, atol=0)
    for state in draws:
        assert abs(torch.corrcoef(state.T)[0, 1]) < 0.03


def test_orthogonal_initialisation_has_the_stated_gains_and_zero_biases():
    """policy.ortho_init: each weight matrix W of shape (out, in) is orthogonal times its gain, i.e. W W^T (out <=
    in) or W^T W (out > in) is gain^2 I: sqrt(2) in hidden layers, 0.01 on the policy's output, 1 on the critic's.
    The biases are 0."""
    obs_space = gym.spaces.Box(-1.0, 1.0, (OBS_DIM,))
    policy = make_policy(obs_space, ACTION_SPACES["gaussian"], [16, 3], "tanh", -0.5, ortho_init=True)
    critic = ValueFunction(OBS_DIM, [16, 3], "tanh", ortho_init=True)
    for net, output_gain in ((policy.mean_net, 0.01), (critic.net, 1.0)):
        linears = [layer for layer in net if isinstance(layer, torch.nn.Linear)]
        assert len(linears) == 3
        for i, layer in enumerate(linears):
            gain = output_gain if i == len(linears) - 1 else math.sqrt(2)
            w = layer.weight.detach().double()
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            torch.testing.assert_close(gram, gain**2 * torch.eye(len(gram), dtype=torch.float64), atol=1e-6, rtol=0)
            assert not layer.bias.any()


@pytest.mark.parametrize(
    "space, options, message",
    [
        (gym.spaces.Discrete(3), {"distribution": "beta"}, "needs Box actions"),
        (gym.spaces.Box(-np.inf, np.inf, (2,)), {"distribution": "beta"}, "infinite bounds"),
        (ACTION_SPACES["beta"], {"distribution": "beta", "bounded_mean": True}, "bounded_mean=True is not allowed"),
        (gym.spaces.Box(-np.inf, np.inf, (2,)), {"bounded_mean": True}, "bounded_mean=true .* infinite bounds"),
    ],
)
def test_policy_refuses_what_it_cannot_be(space, options, message):
    with pytest.raises(ConfigError, match=message):
        make_policy(gym.spaces.Box(-1.0, 1.0, (OBS_DIM,)), space, [5], "tanh", -0.5, **options)


def test_scheduled_log_std_follows_its_schedule_and_the_step_moves_only_the_mean():
    """policy.final_log_std: log sigma = init + (final - init) * progress (here -0.5 to -1.5), saved with the policy
    but not a parameter, so a TRPO step changes the mean network, leaves log sigma, and still keeps KL <= delta. A
    learned log-std is a parameter that anneal() leaves alone."""
    policy = small_policy("scheduled_gaussian")
    assert "log_std" not in dict(policy.named_parameters()) and "log_std" in policy.state_dict()
    for progress, expected in ((0.0, -0.5), (0.25, -0.75), (1.0, -1.5), (0.5, -1.0)):
        policy.anneal(progress)
        assert policy.log_std.tolist() == pytest.approx([expected] * 2, abs=1e-12)
    batch = random_batch(policy, seed=3)
    with torch.no_grad():
        old = policy.distribution(batch.obs)
    mean_before = flat_params(list(policy.parameters()))
    stats = make_trpo(policy, delta=0.01).policy_step(batch)
    assert (flat_params(list(policy.parameters())) - mean_before).norm() > 0
    assert policy.log_std.tolist() == pytest.approx([-1.0, -1.0], abs=1e-12)
    with torch.no_grad():
        assert 0.0 < closed_form_kl(old, policy.distribution(batch.obs)).item() <= 0.01
    assert stats["BacktrackIters"] < 10

    learned = small_policy("gaussian")
    learned.anneal(1.0)
    assert "log_std" in dict(learned.named_parameters())
    assert learned.log_std.tolist() == pytest.approx([-0.5, -0.5])


@pytest.mark.parametrize(
    "space, distribution",
    [(gym.spaces.Discrete(3), "gaussian"), (ACTION_SPACES["beta"], "beta")],
)
def test_a_log_std_schedule_is_refused_where_there_is_no_gaussian(space, distribution):
    with pytest.raises(ConfigError, match="final_log_std needs a Gaussian policy"):
        make_policy(
            gym.spaces.Box(-1.0, 1.0, (OBS_DIM,)), space, [5], "tanh", -0.5, distribution=distribution,
            final_log_std=-1.0,
        )


# --- max_step -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "bounded_gaussian", "categorical", "beta"])
def test_max_step_meets_quadratic_kl_model_exactly(kind):
    """For s = max_step(x, Hx, delta) with H the damped KL Hessian, 0.5 s^T H s == delta (H explicit, 1e-6 rel)."""
    policy = small_policy(kind, seed=1)
    obs = torch.randn(32, OBS_DIM, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    params = list(policy.parameters())
    product = fisher_vector_product(*policy.linearize(obs), policy.fisher_metric, params, 0.1)
    hessian = explicit_kl_hessian(policy, obs) + 0.1 * torch.eye(sum(p.numel() for p in params), dtype=torch.float64)

    g = torch.randn(len(hessian), generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    x = conjugate_gradient(product, g, iters=10)
    for delta in (1e-3, 0.01, 0.5):
        s = max_step(x, product(x), delta)
        assert 0.5 * (s @ hessian @ s).item() == pytest.approx(delta, rel=1e-6)
        # s is a positive multiple of x: the direction is kept, only the length is set.
        cosine = (s @ x) / (torch.linalg.norm(s) * torch.linalg.norm(x))
        assert cosine.item() == pytest.approx(1.0, abs=1e-12)


def test_a_kl_averaged_over_action_dimensions_is_this_limit_times_their_number():
    """sb3-contrib's TRPO averages the KL over action dimensions as well as states (docs/trpo.md, 2.1). Its full step
    at target_kl and damping d, from the explicit Hessian of that average, is this project's full step at
    delta = A * target_kl and damping A * d for A action dimensions."""
    target_kl, damping = 0.01, 0.1
    dims = ACTION_SPACES["gaussian"].shape[0]
    policy = small_policy("gaussian", seed=2)
    batch = random_batch(policy, seed=3)
    params = list(policy.parameters())
    surrogate = surrogate_advantage(policy.distribution(batch.obs).log_prob(batch.actions), batch.logp_old,
                                    batch.advantages)
    g = flat_grad(surrogate, params)
    averaged = explicit_kl_hessian(policy, batch.obs) / dims + damping * torch.eye(len(g), dtype=torch.float64)
    x = torch.linalg.solve(averaged, g)
    their_step = torch.sqrt(2 * target_kl / (x @ averaged @ x)) * x

    def our_step(delta: float, damping_coeff: float) -> torch.Tensor:
        rule = make_trpo(policy, delta=delta, damping_coeff=damping_coeff, cg_iters=len(g))
        return rule.natural_gradient_step(batch).full_step

    same_units = our_step(dims * target_kl, dims * damping)
    # To 1e-3 of its length, not to rounding: CG stops on an absolute residual (here 5e-5 off; the other
    # settings below, 0.26).
    assert ((same_units - their_step).norm() / their_step.norm()).item() < 1e-3
    # Taken as this project's own delta and damping, the same numbers give another step.
    assert ((our_step(target_kl, damping) - their_step).norm() / their_step.norm()).item() > 0.1


def test_max_step_is_the_natural_gradient_step_where_that_lies_inside_the_trust_region():
    """With max_multiplier eta below the boundary's multiplier b = sqrt(2 delta / x^T H x), s = eta x exactly (its
    quadratic KL (eta / b)^2 delta); above it, s is the boundary step, bit for bit (H explicit)."""
    hessian = random_spd(6, seed=3)
    x = torch.randn(6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    delta = 0.01
    boundary = math.sqrt(2 * delta / (x @ hessian @ x).item())

    inside = max_step(x, hessian @ x, delta, max_multiplier=boundary / 4)
    torch.testing.assert_close(inside, boundary / 4 * x, rtol=1e-12, atol=0)
    assert 0.5 * (inside @ hessian @ inside).item() == pytest.approx(delta / 16, rel=1e-9)
    assert torch.equal(max_step(x, hessian @ x, delta, max_multiplier=4 * boundary), max_step(x, hessian @ x, delta))


@pytest.mark.parametrize("kind", ["gaussian", "categorical", "beta"])
def test_natural_lr_sizes_the_step_by_the_advantages_as_estimated(kind):
    """With normalised advantages, g (and TRPO's step) is the same whatever the advantages' scale c. natural_lr
    eta caps the step at eta * c * x: advantages 10x smaller move the policy exactly 10x less (StepScale < 1),
    while large advantages get TRPO's own step (StepScale 1) -- small advantages, as on a solved task, no longer
    move the policy a full delta."""
    moves, scales, backtracks = {}, {}, {}
    for scale, natural_lr in [(1e-3, 1.0), (1e-2, 1.0), (1e3, 1.0), (1e3, None)]:
        policy = small_policy(kind)
        batch = random_batch(policy, seed=0)
        batch.advantages = batch.advantages * scale
        before = flat_params(list(policy.parameters()))
        stats = make_trpo(policy, 0.01, normalize_advantages=True, natural_lr=natural_lr).improve_policy(batch)
        moves[scale, natural_lr] = flat_params(list(policy.parameters())) - before
        scales[scale, natural_lr] = stats["StepScale"]
        backtracks[scale, natural_lr] = stats["BacktrackIters"]
    # The capped steps are taken whole: the exact 10x below holds only if the line search shrank neither.
    assert scales[1e-2, 1.0] < 1 and backtracks[1e-2, 1.0] == backtracks[1e-3, 1.0] == 0
    torch.testing.assert_close(moves[1e-2, 1.0], 10 * moves[1e-3, 1.0], rtol=1e-6, atol=1e-12)
    assert scales[1e-2, 1.0] == pytest.approx(10 * scales[1e-3, 1.0], rel=1e-6)
    assert torch.equal(moves[1e3, 1.0], moves[1e3, None])
    assert scales[1e3, 1.0] == pytest.approx(1.0, rel=1e-9) and scales[1e3, None] == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("kind", ["gaussian", "categorical", "beta"])
def test_trpo_step_does_not_depend_on_the_gradients_size(kind):
    """Scaling every advantage by c scales g by c, and the step sqrt(2 delta / g^T H^-1 g) H^-1 g not at all: TRPO
    moves the policy as far when the batch carries only noise as when it carries signal (docs/trpo.md, 2.2). Equal
    to 1e-4 of its length, not to rounding: CG stops on an absolute residual, so a larger g can take one more
    iteration."""
    moves = []
    for scale in (1.0, 10.0, 100.0):
        policy = small_policy(kind)
        batch = random_batch(policy, seed=0)
        batch.advantages = batch.advantages * scale
        before = flat_params(list(policy.parameters()))
        make_trpo(policy, delta=0.01).improve_policy(batch)
        moves.append(flat_params(list(policy.parameters())) - before)
    assert moves[0].norm() > 0
    for move in moves[1:]:
        assert ((move - moves[0]).norm() / moves[0].norm()).item() < 1e-4


# --- backtracking line search -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, delta, must_backtrack",
    [
        ("gaussian", 0.01, False),
        ("categorical", 0.01, False),
        ("gaussian", 0.1, False),
        ("categorical", 0.1, False),
        ("beta", 0.01, False),
        ("beta", 0.1, False),
        ("scheduled_gaussian", 0.01, False),
        # Deltas so large that the quadratic model is wrong for some seeds: the line search has to shrink the step.
        # A categorical policy's KL grows slowly far out, so it needs a much larger delta than the Gaussian.
        ("gaussian", 2.0, True),
        ("categorical", 20.0, True),
    ],
)
def test_policy_step_accepts_step_inside_trust_region(kind, delta, must_backtrack):
    """TRPO.policy_step's accepted step has hand-computed KL <= delta and a better surrogate, over 10 seeds."""
    # With the large deltas the line search must also have backtracked at least once, to prove it was exercised.
    backtracks = []
    for seed in range(10):
        policy = small_policy(kind, seed=seed)
        batch = random_batch(policy, seed=seed)
        with torch.no_grad():
            old = policy.distribution(batch.obs)
            surrogate_old = (torch.exp(old.log_prob(batch.actions) - batch.logp_old) * batch.advantages).mean()
        before = [p.detach().clone() for p in policy.parameters()]

        stats = make_trpo(policy, delta).policy_step(batch)

        with torch.no_grad():
            new = policy.distribution(batch.obs)
            kl = closed_form_kl(old, new).item()
            surrogate_new = (torch.exp(new.log_prob(batch.actions) - batch.logp_old) * batch.advantages).mean()
        assert stats["BacktrackIters"] < 10, f"seed {seed}: no step accepted"
        assert any(not torch.equal(b, p) for b, p in zip(before, policy.parameters()))
        assert 0.0 < kl <= delta
        assert surrogate_new > surrogate_old
        assert stats["KL"] == pytest.approx(kl, rel=1e-9)
        assert stats["LossPi"] == pytest.approx(-surrogate_old.item(), rel=1e-9)
        assert stats["DeltaLossPi"] == pytest.approx(-(surrogate_new - surrogate_old).item(), rel=1e-6, abs=1e-12)
        backtracks.append(stats["BacktrackIters"])
    if must_backtrack:
        assert max(backtracks) > 0, f"line search never backtracked: {backtracks}"


def test_line_search_accepts_first_acceptable_shrink():
    """The search tries p_old + 0.8^j s in order and stops at the first j passing, found by hand (j = 4)."""
    # KL(p) = ||p - p_old||^2 and ||s||^2 = 4 delta, so 0.8^j s passes once 0.8^j <= 1/2: j = 4 (0.8^3 = 0.512).
    delta = 0.01
    params_old = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    full_step = torch.tensor([0.0, 0.2, 0.0], dtype=torch.float64)  # ||s||^2 = 0.04 = 4 delta
    tried = []

    def evaluate(p):
        tried.append(p.clone())
        return 1.0, ((p - params_old) @ (p - params_old)).item()

    result = backtracking_line_search(evaluate, params_old, full_step, 0.0, delta, 0.8, 10)
    assert result.accepted
    assert result.backtracks == 4
    assert torch.equal(result.params, params_old + 0.8**4 * full_step)
    assert result.kl == pytest.approx(0.8**8 * 0.04)
    assert result.surrogate == 1.0
    for j, candidate in enumerate(tried):
        assert torch.equal(candidate, params_old + 0.8**j * full_step)
    assert len(tried) == 5


def test_line_search_accepts_kl_exactly_delta():
    """The trust region is closed (KL <= delta): a full step whose KL equals delta exactly is taken unshrunk."""
    params_old = torch.zeros(3, dtype=torch.float64)
    full_step = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    result = backtracking_line_search(lambda p: (1.0, 0.01), params_old, full_step, 0.5, 0.01, 0.8, 10)
    assert result.accepted and result.backtracks == 0
    assert torch.equal(result.params, params_old + full_step)
    assert (result.surrogate, result.kl) == (1.0, 0.01)


@pytest.mark.parametrize(
    "outcome",
    [pytest.param((1.0, 1.0), id="kl-too-large"), pytest.param((0.0, 0.0), id="surrogate-not-improved")],
)
@pytest.mark.parametrize("backtrack_iters", [1, 10])
def test_line_search_failure_returns_old_params(outcome, backtrack_iters):
    """When no candidate passes, the result is params_old bit for bit after backtrack_iters tries, not accepted."""
    params_old = torch.randn(7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full_step = torch.randn(7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    surrogate, kl = outcome
    tried = []

    def evaluate(p):
        tried.append(p.clone())
        return surrogate, kl

    result = backtracking_line_search(evaluate, params_old, full_step, 0.0, 0.01, 0.8, backtrack_iters)
    assert not result.accepted
    assert result.backtracks == backtrack_iters
    assert torch.equal(result.params, params_old)
    assert len([p for p in tried if not torch.equal(p, params_old)]) == backtrack_iters


@pytest.mark.parametrize("kind", ["gaussian", "categorical", "beta"])
def test_policy_step_failed_search_restores_policy_bit_for_bit(kind, monkeypatch):
    """A policy_step whose line search accepts nothing leaves every policy parameter bit-for-bit unchanged."""
    # Every KL is reported 1.0 above the truth, so nothing is accepted; the candidates are still written into the
    # live policy by evaluate(), which is what the restore has to undo.
    real_mean_kl = trpo.updates.mean_kl
    # The offset leaves the gradient and Hessian unchanged, so the step is the usual one; only acceptance fails.
    monkeypatch.setattr(trpo.updates, "mean_kl", lambda old, new: real_mean_kl(old, new) + 1.0)
    written = []
    real_set_flat_params = trpo.updates.set_flat_params

    def spy_set_flat_params(params, flat):
        written.append(flat.clone())
        real_set_flat_params(params, flat)

    monkeypatch.setattr(trpo.updates, "set_flat_params", spy_set_flat_params)

    policy = small_policy(kind, seed=3)
    batch = random_batch(policy, seed=3)
    before = [p.detach().clone() for p in policy.parameters()]
    stats = make_trpo(policy, delta=0.01).policy_step(batch)

    assert stats["BacktrackIters"] == 10
    assert stats["KL"] == pytest.approx(1.0, abs=1e-12)
    assert stats["DeltaLossPi"] == pytest.approx(0.0, abs=1e-12)
    old_flat = torch.cat([b.reshape(-1) for b in before])
    assert sum(not torch.equal(w, old_flat) for w in written) == 10  # the candidates really were written
    for b, p in zip(before, policy.parameters()):
        assert torch.equal(b, p.detach())


# --- surrogate and KL ---------------------------------------------------------------------------------------------


def test_surrogate_advantage_is_mean_advantage_at_old_policy():
    """With logp == logp_old every importance weight is 1, so L is the plain mean of the advantages."""
    generator = torch.Generator().manual_seed(0)
    logp = torch.randn(50, generator=generator, dtype=torch.float64)
    advantages = torch.randn(50, generator=generator, dtype=torch.float64)
    assert surrogate_advantage(logp, logp.clone(), advantages).item() == pytest.approx(
        advantages.mean().item(), rel=1e-12
    )


def test_surrogate_advantage_weights_by_probability_ratio():
    """L = mean(pi/pi_old * A), checked on hand-picked numbers."""
    logp_old = torch.log(torch.tensor([0.5, 0.25, 0.1], dtype=torch.float64))
    logp = torch.log(torch.tensor([0.25, 0.5, 0.3], dtype=torch.float64))
    advantages = torch.tensor([2.0, -1.0, 4.0], dtype=torch.float64)
    expected = (0.5 * 2.0 + 2.0 * -1.0 + 3.0 * 4.0) / 3
    assert surrogate_advantage(logp, logp_old, advantages).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "categorical", "beta"])
def test_mean_kl_is_zero_for_identical_distributions(kind):
    """KL(pi || pi) = 0 for the policy's own distributions."""
    policy = small_policy(kind)
    obs = torch.randn(20, OBS_DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        assert mean_kl(policy.distribution(obs), policy.distribution(obs)).item() == pytest.approx(0.0, abs=1e-14)


def test_mean_kl_matches_closed_form_diagonal_gaussian():
    """mean_kl(old, new) equals the closed-form KL(old || new) of two batches of diagonal Gaussians."""
    # KL = sum_i [log(s_q/s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2], averaged over the batch.
    generator = torch.Generator().manual_seed(0)
    mu_p, mu_q = (torch.randn(10, 4, generator=generator, dtype=torch.float64) for _ in range(2))
    sigma_p = torch.rand(10, 4, generator=generator, dtype=torch.float64) + 0.2
    sigma_q = torch.rand(10, 4, generator=generator, dtype=torch.float64) + 0.2
    old = torch.distributions.Independent(torch.distributions.Normal(mu_p, sigma_p), 1)
    new = torch.distributions.Independent(torch.distributions.Normal(mu_q, sigma_q), 1)
    per_dim = torch.log(sigma_q / sigma_p) + (sigma_p**2 + (mu_p - mu_q) ** 2) / (2 * sigma_q**2) - 0.5
    expected = per_dim.sum(-1).mean().item()
    assert mean_kl(old, new).item() == pytest.approx(expected, rel=1e-12)
    assert mean_kl(new, old).item() != pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("kind", ["gaussian", "categorical", "beta"])
def test_linear_delta_schedule_scales_the_natural_step_by_the_root_of_what_is_left(kind):
    """With delta_schedule=linear, a run 75% done steps with delta / 4: the full step sqrt(2 delta / x^T H x) x
    is then exactly half the constant schedule's (NPG takes it whole), and at the end (progress 1) nothing moves."""
    moves = {}
    for schedule, progress in [("constant", 0.75), ("linear", 0.75), ("linear", 1.0)]:
        policy = small_policy(kind)
        batch = random_batch(policy, seed=0)
        rule = trpo.updates.NPG(
            policy, ValueFunction(OBS_DIM, [5], "tanh").double(), delta=0.01, damping_coeff=0.1, cg_iters=10,
            delta_schedule=schedule, gamma=0.99, lam=0.97, vf_lr=1e-3, train_v_iters=1,
        )
        before = flat_params(list(policy.parameters()))
        rule.anneal(progress)
        rule.improve_policy(batch)
        moves[schedule, progress] = flat_params(list(policy.parameters())) - before
    constant = moves["constant", 0.75]
    assert constant.norm() > 0
    torch.testing.assert_close(moves["linear", 0.75], constant / 2, rtol=1e-9, atol=1e-12)
    assert moves["linear", 1.0].norm() == 0


# --- the other update rules behind the same interface ------------------------------------------------------------


def make_npg(policy, delta: float) -> trpo.updates.NPG:
    return trpo.updates.NPG(
        policy, ValueFunction(OBS_DIM, [5], "tanh").double(), delta=delta, damping_coeff=0.1, cg_iters=10,
        gamma=0.99, lam=0.97, vf_lr=1e-3, train_v_iters=1,
    )


def surrogate_of(policy, batch: Batch) -> float:
    with torch.no_grad():
        logp = policy.distribution(batch.obs).log_prob(batch.actions)
    return (torch.exp(logp - batch.logp_old) * batch.advantages).mean().item()


@pytest.mark.parametrize("make", [make_trpo, make_npg], ids=["trpo", "npg"])
@pytest.mark.parametrize("natural_lr", [None, 20.0])
def test_all_zero_advantages_leave_the_policy_as_it_was(make, natural_lr):
    """g = 0 (every advantage 0, as normalising constant advantages gives): the step is 0, not inf * 0 = NaN, so
    the policy stays bit for bit and every stat is finite; TRPO's line search finds no gain and keeps it."""
    policy = small_policy("gaussian", seed=4)
    batch = dataclasses.replace(random_batch(policy, seed=4), advantages=torch.zeros(BATCH_SIZE, dtype=torch.float64))
    before = flat_params(list(policy.parameters()))
    rule = make(policy, 0.01)
    rule.natural_lr = natural_lr
    stats = rule.policy_step(batch)
    assert torch.equal(flat_params(list(policy.parameters())), before)
    assert all(math.isfinite(value) for value in stats.values())
    assert stats["StepScale"] == 0 and stats["KL"] == 0 and stats["BacktrackIters"] == 0


def test_npg_takes_the_full_step_that_trpo_shrinks_and_flags_what_the_line_search_would_refuse():
    """At delta 2 the Gaussian's quadratic model is wrong for some seeds: there TRPO backtracks j times to
    0.8^j of NPG's step, and NPG, which takes the full step, reports KLExceeded / SurrogateWorse exactly where the
    hand-computed KL exceeds delta / the surrogate fell. TRPO's accepted steps never carry either flag."""
    delta, exceeded = 2.0, []
    for seed in range(10):
        moves, stats = {}, {}
        for name, make in (("trpo", make_trpo), ("npg", make_npg)):
            policy = small_policy("gaussian", seed=seed)
            batch = random_batch(policy, seed=seed)
            with torch.no_grad():
                old = policy.distribution(batch.obs)
            surrogate_old, before = surrogate_of(policy, batch), flat_params(list(policy.parameters()))
            stats[name] = make(policy, delta).policy_step(batch)
            moves[name] = flat_params(list(policy.parameters())) - before
            with torch.no_grad():
                kl = closed_form_kl(old, policy.distribution(batch.obs)).item()
            assert stats[name]["KLExceeded"] == float(kl > delta)
            assert stats[name]["SurrogateWorse"] == float(surrogate_of(policy, batch) < surrogate_old)
        backtracks = stats["trpo"]["BacktrackIters"]
        torch.testing.assert_close(moves["trpo"], 0.8**backtracks * moves["npg"], rtol=1e-9, atol=1e-12)
        assert stats["trpo"]["KLExceeded"] == stats["trpo"]["SurrogateWorse"] == 0.0
        assert stats["npg"]["BacktrackIters"] == 0
        exceeded.append(stats["npg"]["KLExceeded"])
    assert 0 < sum(exceeded) < 10, exceeded  # both outcomes were exercised


@pytest.mark.parametrize("train_pi_iters", [1, 3])
def test_vpg_takes_train_pi_iters_adam_steps_up_the_surrogate_and_reports_the_kl_it_moved(train_pi_iters):
    """VPG's policy equals a hand-written Adam loop on -L(theta), and its KL is the closed-form KL(old || new)."""
    policy, reference = small_policy("gaussian", seed=3), small_policy("gaussian", seed=3)
    batch = random_batch(policy, seed=3)
    with torch.no_grad():
        old = policy.distribution(batch.obs)
    rule = trpo.updates.VPG(
        policy, ValueFunction(OBS_DIM, [5], "tanh").double(), pi_lr=0.05, train_pi_iters=train_pi_iters,
        gamma=0.99, lam=0.97, vf_lr=1e-3, train_v_iters=1,
    )
    surrogate_old = surrogate_of(policy, batch)
    stats = rule.policy_step(batch)

    adam = torch.optim.Adam(reference.parameters(), lr=0.05)
    for _ in range(train_pi_iters):
        adam.zero_grad()
        logp = reference.distribution(batch.obs).log_prob(batch.actions)
        (-(torch.exp(logp - batch.logp_old) * batch.advantages).mean()).backward()
        adam.step()
    for mine, theirs in zip(policy.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        kl = closed_form_kl(old, policy.distribution(batch.obs)).item()
    assert kl > 0 and stats["KL"] == pytest.approx(kl, rel=1e-9)
    assert stats["LossPi"] == pytest.approx(-surrogate_old, rel=1e-12)
    assert stats["DeltaLossPi"] == pytest.approx(-(surrogate_of(policy, batch) - surrogate_old), rel=1e-9)
