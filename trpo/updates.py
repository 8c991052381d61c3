"""Update rules: given one epoch's :class:`~trpo.buffer.Batch`, improve the policy and the value function.

Every rule has the same interface -- build it with the two networks and its hyperparameters (Hydra's
``_target_`` in ``conf/optimizer/*.yaml``), then once per epoch call :meth:`UpdateRule.improve_policy` and fit
the value function (:meth:`UpdateRule.fit_value_function`, or :mod:`trpo.value_fit`, which can run the fit
beside the next epoch's sampling) -- so the Runner does not know which rule it drives.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.distributions import Distribution

from trpo.buffer import Batch
from trpo.networks import Policy, ValueFunction
from trpo.trust_region import (
    backtracking_line_search,
    conjugate_gradient,
    fisher_vector_product,
    flat_grad,
    flat_params,
    max_step,
    mean_kl,
    set_flat_params,
    surrogate_advantage,
)


def batch_surrogate(policy: Policy, batch: Batch) -> torch.Tensor:
    """The surrogate advantage :math:`L(\\theta_k, \\theta)` of ``policy``'s current parameters on ``batch``."""
    return distribution_surrogate(policy.distribution(batch.obs), batch)


def distribution_surrogate(distribution: Distribution, batch: Batch) -> torch.Tensor:
    """The surrogate advantage of a policy whose action distributions at ``batch.obs`` are ``distribution``."""
    return surrogate_advantage(distribution.log_prob(batch.actions), batch.logp_old, batch.advantages)


def finite_outcome(network: torch.nn.Module, stats: dict[str, float]) -> bool:
    """Whether a step left ``network``'s parameters and its reported ``stats`` finite (else the caller undoes it)."""
    finite_params = all(torch.isfinite(p).all() for p in network.parameters())
    return finite_params and all(math.isfinite(v) for v in stats.values())


class UpdateRule:
    """Fits the value function by regression on the batch's targets; subclasses define the policy step.

    ``gamma``, ``lam`` and ``vf_target`` are held here, with the rest of the ``optimizer`` config group, for the
    Runner to hand to :meth:`~trpo.buffer.RolloutBuffer.compute_batch`, which estimates the advantages and targets.

    Args:
        policy: the policy :math:`\\pi_\\theta` to improve.
        value_function: the critic :math:`V_\\phi`.
        gamma: discount factor, in [0, 1]; usually 0.99.
        lam: GAE's :math:`\\lambda`, in [0, 1]; usually 0.95-0.97.
        vf_lr: Adam learning rate of the value function; usually 1e-3.
        train_v_iters: value-function passes over the batch per epoch, one Adam step per minibatch (with
            ``vf_minibatches`` 1, full-batch steps); usually 80.
        normalize_advantages: rescale each batch's advantages to mean 0 and std 1 before the policy step
            (a per-batch change of the surrogate's scale and baseline; the KL limit still sets the step).
        vf_lr_schedule: ``constant``, or ``linear``: ``vf_lr`` decays linearly to 0 over the run (see
            :meth:`anneal`).
        vf_minibatches: each of the ``train_v_iters`` passes over the batch is split into this many shuffled
            minibatches (sizes differing by at most one), one Adam step each; 1 (Spinning Up) is one full-batch
            step per pass.
        vf_target: the value function's regression target :math:`\\hat R_t`: ``rewards_to_go`` (discounted
            returns, bootstrapped where an episode is cut; Spinning Up) or ``lambda_returns``
            (:math:`\\hat A_t + V(s_t)`, the TD(:math:`\\lambda`) return: lower variance, biased by :math:`V`).
    """

    def __init__(
        self,
        policy: Policy,
        value_function: ValueFunction,
        gamma: float,
        lam: float,
        vf_lr: float,
        train_v_iters: int,
        normalize_advantages: bool = False,
        vf_lr_schedule: str = "constant",
        vf_minibatches: int = 1,
        vf_target: str = "rewards_to_go",
    ):
        self.policy = policy
        self.value_function = value_function
        self.gamma = gamma
        self.lam = lam
        self.train_v_iters = train_v_iters
        self.vf_lr = vf_lr
        self.normalize_advantages = normalize_advantages
        self.vf_lr_schedule = vf_lr_schedule
        self.vf_minibatches = vf_minibatches
        self.vf_target = vf_target
        self.vf_optimizer = torch.optim.Adam(value_function.parameters(), lr=vf_lr)

    def anneal(self, progress: float) -> None:
        """Set learning rates for a run that is ``progress`` (0 to 1) done. The Runner passes epoch / epochs, so
        a linear schedule's last epoch still has ``vf_lr / epochs``, not 0."""
        if self.vf_lr_schedule == "linear":
            for group in self.vf_optimizer.param_groups:
                group["lr"] = self.vf_lr * (1.0 - progress)

    def state_dict(self) -> dict:
        """The optimiser states, for checkpoints (the networks are saved by their owner)."""
        return {"vf_optimizer": self.vf_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.vf_optimizer.load_state_dict(state["vf_optimizer"])

    def improve_policy(self, batch: Batch) -> dict[str, float]:
        """The policy step, on the batch's advantages normalised first where ``normalize_advantages`` says so."""
        if self.normalize_advantages:
            advantages = batch.advantages
            scale = advantages.std() + 1e-8
            batch = dataclasses.replace(
                batch, advantages=(advantages - advantages.mean()) / scale, advantage_scale=scale.item()
            )
        return self.policy_step(batch)

    def policy_step(self, batch: Batch) -> dict[str, float]:
        raise NotImplementedError

    def value_fit_job(self, batch: Batch) -> ValueFitJob:
        """What one value fit needs besides the network and its optimiser; the minibatches are drawn here, from
        this process's RNG, so a fit gives the same numbers wherever it runs."""
        rows = len(batch.returns)
        # A full batch draws no permutation, so Spinning Up's setting leaves the RNG stream as it was.
        shuffled = self.vf_minibatches > 1
        passes = [
            list(torch.tensor_split(torch.randperm(rows), self.vf_minibatches)) if shuffled else [slice(None)]
            for _ in range(self.train_v_iters)
        ]
        return ValueFitJob(batch.obs, batch.returns, passes)

    def fit_value_function(self, batch: Batch) -> dict[str, float]:
        """Fit :math:`V_\\phi` on ``batch`` in this process (see :func:`fit_value_function`)."""
        return fit_value_function(self.value_function, self.vf_optimizer, self.value_fit_job(batch))


@dataclasses.dataclass
class ValueFitJob:
    """One epoch's regression data for the value function, and the rows of every Adam step."""

    obs: torch.Tensor
    returns: torch.Tensor
    passes: list[list[torch.Tensor | slice]]  # per pass over the batch, the rows of each minibatch


def fit_value_function(
    value_function: ValueFunction, optimizer: torch.optim.Optimizer, job: ValueFitJob
) -> dict[str, float]:
    """Adam steps on :math:`\\frac1{|B|}\\sum_{t \\in B} (V_\\phi(s_t) - \\hat R_t)^2`, one per minibatch :math:`B`
    of each pass; returns the full-batch loss before and its change."""

    def value_loss(rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        return ((value_function(job.obs[rows]) - job.returns[rows]) ** 2).mean()

    with torch.no_grad():
        loss_before = value_loss().item()
    for minibatches in job.passes:
        for rows in minibatches:
            optimizer.zero_grad()
            value_loss(rows).backward()
            optimizer.step()
    with torch.no_grad():
        loss_after = value_loss().item()
    return {"LossV": loss_before, "DeltaLossV": loss_after - loss_before}


class _KLLimitedRule(UpdateRule):
    r"""What TRPO and NPG share: a step of KL :math:`\delta` along the natural gradient, and its schedule.

    Args:
        delta: the KL limit :math:`\delta` per update; usually 0.01-0.05. Smaller is more conservative.
        damping_coeff: added to :math:`H`'s diagonal for numerical stability; usually 0.1, rarely changed.
        cg_iters: conjugate-gradient iterations; usually 10. More is a better solve, and slower.
        delta_schedule: ``constant``, or ``linear``: :math:`\delta` decays linearly to 0 over the run (see
            :meth:`anneal`), the trust-region analogue of a decaying learning rate: late updates move the policy
            less, so the run ends on a settled policy rather than mid-oscillation.
        natural_lr: ``None`` (TRPO's step, always to the KL limit of its quadratic model), or :math:`\eta`: the
            step is at most the natural-gradient step :math:`\eta H^{-1} g` on the advantages as estimated (with
            ``normalize_advantages``, centred: normalisation's division undone, its mean shift kept; see
            :func:`~trpo.trust_region.max_step`).
            During learning the KL limit is the tighter bound, so the step is TRPO's; once the advantages are near
            zero (a solved task) the step shrinks with them instead of moving the policy a full :math:`\delta` along
            noise. With rewards scaled, 10-50 (docs/trpo.md, 2.2: 10 slowed HalfCheetah, 50 let InvertedPendulum
            collapse; 20, the general preset's, did neither).
        **value_kwargs: the value fit's and advantages' arguments (see :class:`UpdateRule`).
    """

    def __init__(
        self,
        policy: Policy,
        value_function: ValueFunction,
        delta: float,
        damping_coeff: float,
        cg_iters: int,
        delta_schedule: str = "constant",
        natural_lr: float | None = None,
        **value_kwargs,
    ):
        super().__init__(policy, value_function, **value_kwargs)
        self.initial_delta = delta
        self.delta = delta
        self.damping_coeff = damping_coeff
        self.cg_iters = cg_iters
        self.delta_schedule = delta_schedule
        self.natural_lr = natural_lr

    def anneal(self, progress: float) -> None:
        super().anneal(progress)
        if self.delta_schedule == "linear":
            self.delta = self.initial_delta * (1.0 - progress)

    def natural_gradient_step(self, batch: Batch) -> _NaturalGradientStep:
        # x is H^-1 g of the advantages the step sees; normalised ones were divided by their std (advantage_scale,
        # else 1), so eta H^-1 g of the (centred) estimates is eta * advantage_scale * x.
        max_multiplier = math.inf if self.natural_lr is None else self.natural_lr * batch.advantage_scale
        return _NaturalGradientStep(self.policy, batch, self.damping_coeff, self.cg_iters, self.delta, max_multiplier)


class TRPO(_KLLimitedRule):
    r"""Trust Region Policy Optimization (Schulman et al., 2015), the update of Spinning Up's ``trpo``.

    One policy step, in the paper's symbols:

    1. :math:`g = \nabla_\theta L(\theta_k, \theta)` at :math:`\theta_k` (the policy gradient);
    2. :math:`x \approx (H + \text{damping}\,I)^{-1} g` by ``cg_iters`` steps of conjugate gradient, where
       :math:`Hv` is a Fisher-vector product of the mean KL;
    3. full step :math:`s = \sqrt{2\delta / x^\top (H + \text{damping}\,I) x}\, x` (with ``natural_lr``
       :math:`\eta`, at most :math:`\eta x` in the estimated advantages' units);
    4. backtracking: :math:`\theta_{k+1} = \theta_k + \alpha^j s` for the smallest :math:`j <` ``backtrack_iters``
       with :math:`\bar D_{KL} \le \delta` and an improved surrogate; if none, :math:`\theta_{k+1} = \theta_k`.

    Args:
        delta, damping_coeff, cg_iters, delta_schedule, natural_lr: see :class:`_KLLimitedRule`.
        backtrack_iters: the most line-search steps; usually 10 (rarely reached).
        backtrack_coeff: :math:`\alpha`, the step's shrink factor per backtrack, in (0, 1); usually 0.8.
        **value_kwargs: the value fit's and advantages' arguments (see :class:`UpdateRule`).
    """

    def __init__(self, policy: Policy, value_function: ValueFunction, backtrack_iters: int, backtrack_coeff: float,
                 **kwargs):
        super().__init__(policy, value_function, **kwargs)
        self.backtrack_iters = backtrack_iters
        self.backtrack_coeff = backtrack_coeff

    def policy_step(self, batch: Batch) -> dict[str, float]:
        step = self.natural_gradient_step(batch)
        if not step.full_step.any():  # g = 0: nothing to search along, and no failed search to report
            return step.stats(step.surrogate_old, 0.0, BacktrackIters=0)
        result = backtracking_line_search(
            step.evaluate,
            step.params_old,
            step.full_step,
            step.surrogate_old,
            self.delta,
            self.backtrack_coeff,
            self.backtrack_iters,
        )
        set_flat_params(step.params, result.params)
        return step.stats(result.surrogate, result.kl, BacktrackIters=result.backtracks)


class NPG(_KLLimitedRule):
    r"""Natural policy gradient (Kakade, 2002): TRPO's full step :math:`\sqrt{2\delta / x^\top H x}\,x`
    (shortened only by ``natural_lr``), always taken.

    Without TRPO's line search nothing checks the quadratic model: the step may end with a KL above
    :math:`\delta` or a lower surrogate. ``KLExceeded`` and ``SurrogateWorse`` count how often (0 or 1 per epoch),
    which is what the line search buys.

    Args: as :class:`_KLLimitedRule`.
    """

    def policy_step(self, batch: Batch) -> dict[str, float]:
        step = self.natural_gradient_step(batch)
        surrogate, kl = step.evaluate(step.params_old + step.full_step)
        return step.stats(surrogate, kl, BacktrackIters=0)


class VPG(UpdateRule):
    r"""Vanilla policy gradient: ``train_pi_iters`` Adam steps of size ``pi_lr`` up :math:`\nabla_\theta L`.

    The step is limited in parameter space only (Adam moves each weight by about ``pi_lr``); nothing limits
    how far the policy's behaviour moves, so a large ``pi_lr`` can collapse it. ``KL`` reports how far it moved.

    Args:
        pi_lr: Adam learning rate of the policy; Spinning Up's VPG uses 3e-4.
        train_pi_iters: policy gradient steps per epoch; usually 1.
        **value_kwargs: the value fit's and advantages' arguments (see :class:`UpdateRule`).
    """

    def __init__(
        self, policy: Policy, value_function: ValueFunction, pi_lr: float, train_pi_iters: int, **value_kwargs
    ):
        super().__init__(policy, value_function, **value_kwargs)
        self.train_pi_iters = train_pi_iters
        self.pi_optimizer = torch.optim.Adam(policy.parameters(), lr=pi_lr)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pi_optimizer": self.pi_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pi_optimizer.load_state_dict(state["pi_optimizer"])

    def policy_step(self, batch: Batch) -> dict[str, float]:
        with torch.no_grad():
            old_distribution = self.policy.distribution(batch.obs)
            surrogate_old = distribution_surrogate(old_distribution, batch).item()
        for _ in range(self.train_pi_iters):
            self.pi_optimizer.zero_grad()
            (-batch_surrogate(self.policy, batch)).backward()
            self.pi_optimizer.step()
        with torch.no_grad():
            new_distribution = self.policy.distribution(batch.obs)
            surrogate_new = distribution_surrogate(new_distribution, batch).item()
            kl = mean_kl(old_distribution, new_distribution).item()
        return {
            "LossPi": -surrogate_old,
            "DeltaLossPi": -(surrogate_new - surrogate_old),
            "KL": kl,
            "BacktrackIters": 0,
            "SurrogateWorse": float(surrogate_new < surrogate_old),
        }


class _NaturalGradientStep:
    """The pieces TRPO and NPG share: g, x = H^-1 g by conjugate gradient, and the full step s."""

    def __init__(
        self, policy: Policy, batch: Batch, damping_coeff: float, cg_iters: int, delta: float, max_multiplier: float
    ):
        self.policy = policy
        self.batch = batch
        self.delta = delta
        self.params = list(policy.parameters())
        # One forward pass serves the old distribution, the surrogate's gradient g and the Fisher products.
        outputs, jvp = policy.linearize(batch.obs)
        self.old_distribution = policy.distribution_of([y.detach() for y in outputs])
        surrogate = distribution_surrogate(policy.distribution_of(outputs), batch)
        self.surrogate_old = surrogate.item()
        g = flat_grad(surrogate, self.params, retain_graph=True)
        hessian_vector_product = fisher_vector_product(outputs, jvp, policy.fisher_metric, self.params, damping_coeff)
        x = conjugate_gradient(hessian_vector_product, g, cg_iters)
        hx = hessian_vector_product(x)
        self.full_step = max_step(x, hx, delta, max_multiplier)
        # The step's length against the boundary's (from its quadratic KL model 1/2 s^T H s, s a multiple of x):
        # 1 for TRPO's step, less where natural_lr caps it, 0 where g = 0 or delta = 0 (as anneal(1.0) sets it).
        quadratic = (x @ hx).item()
        model_kl = 0.5 * (self.full_step @ hx).item() ** 2 / quadratic if quadratic > 0 else 0.0
        self.step_scale = math.sqrt(model_kl / delta) if delta > 0 else 0.0
        self.params_old = flat_params(self.params)

    def evaluate(self, candidate: torch.Tensor) -> tuple[float, float]:
        """Set the policy's parameters to ``candidate``; return the surrogate and the mean KL there."""
        set_flat_params(self.params, candidate)
        with torch.no_grad():
            distribution = self.policy.distribution(self.batch.obs)
            surrogate = distribution_surrogate(distribution, self.batch)
            return surrogate.item(), mean_kl(self.old_distribution, distribution).item()

    def stats(self, surrogate: float, kl: float, **extra: float) -> dict[str, float]:
        return {
            "LossPi": -self.surrogate_old,
            "DeltaLossPi": -(surrogate - self.surrogate_old),
            "KL": kl,
            "KLExceeded": float(kl > self.delta),
            "SurrogateWorse": float(surrogate < self.surrogate_old),
            "StepScale": self.step_scale,
            **extra,
        }
