"""Policy and value networks.

A policy maps a batch of observations to a ``torch.distributions`` distribution over actions:
:class:`GaussianPolicy` (diagonal Gaussian, state-independent log-std) or :class:`BetaPolicy` (a Beta per
action dimension, stretched to the action box) for continuous actions, :class:`CategoricalPolicy` for discrete
ones. Log-probabilities and KL divergences come from the distribution objects, so the update rules never need to
know which one they hold.
"""

from __future__ import annotations

from typing import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Beta, Categorical, Distribution, Independent, Normal, TransformedDistribution
from torch.distributions.transforms import AffineTransform

from trpo.config import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}
# Each activation's derivative, written in terms of its output y (what a forward pass keeps).
_SLOPES: dict[type[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = {
    nn.Tanh: lambda y: 1 - y * y,
    nn.ReLU: lambda y: (y > 0).to(y.dtype),
    nn.ELU: lambda y: torch.where(y > 0, torch.ones_like(y), y + 1),  # alpha = 1
}

# The output of a network at a batch, and the map from a direction in its parameters (one tensor per parameter,
# in ``parameters()`` order) to the output's change along that direction.
Linearization = tuple[tuple[torch.Tensor, ...], Callable[[Sequence[torch.Tensor]], tuple[torch.Tensor, ...]]]


def mlp(sizes: Sequence[int], activation: str, ortho_init: bool = False, output_gain: float = 1.0) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (none after the last).

    ``ortho_init`` draws orthogonal weights with gain sqrt(2) in hidden layers and ``output_gain`` in the last,
    and zero biases (as OpenAI Baselines and SB3 do); otherwise PyTorch's default initialisation.
    """
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        if ortho_init:
            last = i == len(sizes) - 2
            nn.init.orthogonal_(linear.weight, gain=output_gain if last else np.sqrt(2))
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def linearize_mlp(net: nn.Sequential, obs: torch.Tensor) -> tuple[torch.Tensor, Callable]:
    r"""The output :math:`y = f_\theta(s)` of an :func:`mlp` at ``obs`` (with its autograd graph) and the map
    :math:`d\theta \mapsto J\,d\theta`, the output's change along a direction in the parameters.

    The map is forward-mode differentiation by hand, reusing this forward pass's layer inputs and activation
    slopes: through a linear layer :math:`dz = dW\,x + db + W\,dx`, through an activation
    :math:`dx' = \sigma'(z) \odot dz`. It costs a few matrix products and no second forward pass.
    """
    layer_inputs, slopes = [], []
    x = obs
    for layer in net:
        if isinstance(layer, nn.Linear):
            layer_inputs.append(x.detach())
        x = layer(x)
        if not isinstance(layer, nn.Linear):
            slopes.append(_SLOPES[type(layer)](x.detach()))

    def jvp(directions: Sequence[torch.Tensor]) -> torch.Tensor:
        pairs = iter(directions)  # (dW, db) of each linear layer, in order
        inputs, layer_slopes = iter(layer_inputs), iter(slopes)
        dx = None
        with torch.no_grad():
            for layer in net:
                if isinstance(layer, nn.Linear):
                    d_weight, d_bias = next(pairs), next(pairs)
                    dz = next(inputs) @ d_weight.T + d_bias
                    dx = dz if dx is None else dz + dx @ layer.weight.T
                else:
                    dx = next(layer_slopes) * dx
        return dx

    return x, jvp


def finite_box(action_bounds: tuple[np.ndarray, np.ndarray], refusal: Exception) -> tuple[torch.Tensor, torch.Tensor]:
    """The action box's ``(low, high)`` as float32 tensors; raises ``refusal`` if a bound is infinite."""
    low, high = (torch.as_tensor(np.asarray(bound, dtype=np.float32)) for bound in action_bounds)
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise refusal
    return low, high


class Policy(nn.Module):
    """A stochastic policy :math:`\\pi_\\theta(a|s)`."""

    def distribution(self, obs: torch.Tensor) -> Distribution:
        """The action distribution at each observation of the batch."""
        raise NotImplementedError

    def distribution_of(self, outputs: Sequence[torch.Tensor]) -> Distribution:
        """The action distribution whose parameters are ``outputs``, as :meth:`linearize` returns them: so the
        forward pass of a linearisation also serves the surrogate and its gradient."""
        raise NotImplementedError

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """Draw one action per observation (the sampler's per-step call, so kept lean)."""
        return self.distribution(obs).sample()

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The action used for evaluation: the mean, or the most likely class."""
        raise NotImplementedError

    def linearize(self, obs: torch.Tensor) -> Linearization:
        """The distribution's parameters at ``obs`` and their Jacobian-vector map (see :func:`linearize_mlp`)."""
        raise NotImplementedError

    def anneal(self, progress: float) -> None:
        """Set what follows a schedule for a run that is ``progress`` (0 to 1) done; nothing by default."""

    def fisher_metric(self, outputs: Sequence[torch.Tensor], tangents: Sequence[torch.Tensor]) -> tuple:
        r""":math:`M\,dy`: the Hessian of the batch's mean KL(old || new) with respect to the distribution's
        parameters ``outputs``, at new = old, applied to ``tangents``."""
        raise NotImplementedError


class GaussianPolicy(Policy):
    r""":math:`\pi_\theta(a|s) = \mathcal{N}(\mu_\theta(s), \operatorname{diag}(\sigma^2))` with
    :math:`\log\sigma` a vector that does not depend on the state: learned, or with ``final_log_std`` set by a
    schedule, from ``init_log_std`` at the start of the run linearly towards ``final_log_std`` (see
    :meth:`anneal`). A scheduled :math:`\log\sigma` is not a parameter, so the trust-region step moves only the mean
    and the whole KL budget goes to it."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int],
        activation: str,
        init_log_std: float,
        ortho_init: bool = False,
        action_bounds: tuple[np.ndarray, np.ndarray] | None = None,
        final_log_std: float | None = None,
    ):
        super().__init__()
        # A small output gain starts the policy near a zero mean, so early actions are set by the log-std.
        self.mean_net = mlp([obs_dim, *hidden_sizes, act_dim], activation, ortho_init, output_gain=0.01)
        self.bounded = action_bounds is not None
        if self.bounded:
            # mu = center + half_range * tanh(net): with clipped actions, a mean far outside the box gives every
            # sample the same action, so the advantages hold no signal that could bring the mean back.
            refusal = ConfigError("policy.bounded_mean=true is not allowed: the action space has infinite bounds")
            low, high = finite_box(action_bounds, refusal)
            self.mean_net.append(nn.Tanh())
            self.register_buffer("action_center", (high + low) / 2, persistent=False)
            self.register_buffer("action_half_range", (high - low) / 2, persistent=False)
        log_std = torch.full((act_dim,), float(init_log_std))
        self.log_std_schedule = None if final_log_std is None else (float(init_log_std), float(final_log_std))
        if self.log_std_schedule is None:
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std)

    def anneal(self, progress: float) -> None:
        r"""With a log-std schedule, set :math:`\log\sigma = \text{init} + (\text{final} - \text{init})\,p` for
        progress :math:`p`; the Runner calls it before each epoch's sampling, so a batch's old policy is the one
        that sampled it. The last epoch samples at :math:`p = (E-1)/E`, one epoch's step short of ``final``."""
        if self.log_std_schedule is not None:
            initial, final = self.log_std_schedule
            self.log_std.fill_(initial + (final - initial) * progress)

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        r""":math:`\mu_\theta(s)`, inside the action box when the policy is bounded."""
        return self._into_box(self.mean_net(obs))

    def _into_box(self, net_out: torch.Tensor) -> torch.Tensor:
        return self.action_center + self.action_half_range * net_out if self.bounded else net_out

    def distribution(self, obs: torch.Tensor) -> Distribution:
        # Independent sums log-probs and KLs over action dimensions, as the diagonal Gaussian requires.
        # Argument validation is off: it costs more than the network on the per-step sampling path.
        return self.distribution_of((self.mean(obs), self.log_std))

    def distribution_of(self, outputs: Sequence[torch.Tensor]) -> Distribution:
        mean, log_std = outputs
        return Independent(Normal(mean, log_std.exp(), validate_args=False), 1, validate_args=False)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        # The reparameterised draw mu + sigma * eps skips building a distribution object at every env step.
        mean = self.mean(obs)
        return mean + self.log_std.exp() * torch.randn_like(mean)

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mean(obs)

    def linearize(self, obs: torch.Tensor) -> Linearization:
        net_out, net_jvp = linearize_mlp(self.mean_net, obs)

        def jvp(directions: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            by_name = dict(zip((name for name, _ in self.named_parameters()), directions))
            mean_directions = [by_name[f"mean_net.{name}"] for name, _ in self.mean_net.named_parameters()]
            d_net_out = net_jvp(mean_directions)
            # A scheduled log-std is not a parameter: the step has no direction along it.
            d_log_std = by_name.get("log_std", torch.zeros_like(self.log_std))
            return (self.action_half_range * d_net_out if self.bounded else d_net_out), d_log_std

        return (self._into_box(net_out), self.log_std), jvp

    def fisher_metric(self, outputs, tangents):
        # Per state and action dimension, KL's curvature is 1/sigma^2 in the mean and 2 in log sigma, with no
        # cross term; log sigma is shared by all states, so its curvature is not divided by the batch size.
        (mean, log_std), (d_mean, d_log_std) = outputs, tangents
        return d_mean * torch.exp(-2 * log_std.detach()) / len(mean), 2 * d_log_std


class BetaPolicy(Policy):
    r"""Per action dimension, :math:`a = \text{low} + (\text{high} - \text{low})\,x` with
    :math:`x \sim \operatorname{Beta}(\alpha_\theta(s), \beta_\theta(s))` on [0, 1] (Chou et al., 2017).

    :math:`\alpha, \beta = 1 + \operatorname{softplus}(f_\theta(s))`, so each Beta is unimodal. Every action lies
    inside the box, where a Gaussian's clipped samples all act alike once its mean leaves the box, and the spread is
    state-dependent. The stretch to the box does not change KL divergences or probability ratios.
    """

    # Keeps a sample off 0 and 1, where float32 rounding of Beta's sampler would give log-probabilities of -inf.
    EDGE = 1e-6

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int],
        activation: str,
        action_bounds: tuple[np.ndarray, np.ndarray],
        ortho_init: bool = False,
    ):
        super().__init__()
        refusal = ConfigError("policy.distribution='beta' is not allowed: the action space has infinite bounds")
        low, high = finite_box(action_bounds, refusal)
        # With ortho_init, the small output gain starts every dimension near Beta(1.69, 1.69): centred, with a std
        # of 0.24 of the box.
        self.concentration_net = mlp([obs_dim, *hidden_sizes, 2 * act_dim], activation, ortho_init, output_gain=0.01)
        self.register_buffer("action_low", low, persistent=False)
        self.register_buffer("action_width", high - low, persistent=False)

    @staticmethod
    def _concentrations(net_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, beta = (1 + nn.functional.softplus(net_out)).chunk(2, dim=-1)
        return alpha, beta

    def distribution(self, obs: torch.Tensor) -> Distribution:
        return self.distribution_of(self._concentrations(self.concentration_net(obs)))

    def distribution_of(self, outputs: Sequence[torch.Tensor]) -> Distribution:
        alpha, beta = outputs
        unit = Beta(alpha, beta, validate_args=False)
        stretched = TransformedDistribution(
            unit, AffineTransform(self.action_low, self.action_width), validate_args=False
        )
        return Independent(stretched, 1, validate_args=False)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        alpha, beta = self._concentrations(self.concentration_net(obs))
        unit = Beta(alpha, beta, validate_args=False).sample().clamp(self.EDGE, 1 - self.EDGE)
        return self.action_low + self.action_width * unit

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        alpha, beta = self._concentrations(self.concentration_net(obs))
        return self.action_low + self.action_width * alpha / (alpha + beta)

    def linearize(self, obs: torch.Tensor) -> Linearization:
        net_out, net_jvp = linearize_mlp(self.concentration_net, obs)
        softplus_slope = torch.sigmoid(net_out.detach())

        def jvp(directions: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
            return tuple((softplus_slope * net_jvp(directions)).chunk(2, dim=-1))

        return self._concentrations(net_out), jvp

    def fisher_metric(self, outputs, tangents):
        # KL's curvature in (alpha, beta), per state and action dimension, is the Beta's Fisher information, with
        # psi1 the trigamma function: [[psi1(alpha) - psi1(alpha + beta), -psi1(alpha + beta)],
        #                              [-psi1(alpha + beta), psi1(beta) - psi1(alpha + beta)]].
        (alpha, beta), (d_alpha, d_beta) = tuple(y.detach() for y in outputs), tangents
        shared = torch.polygamma(1, alpha + beta)
        return (
            ((torch.polygamma(1, alpha) - shared) * d_alpha - shared * d_beta) / len(alpha),
            ((torch.polygamma(1, beta) - shared) * d_beta - shared * d_alpha) / len(alpha),
        )


class CategoricalPolicy(Policy):
    r""":math:`\pi_\theta(a|s) = \operatorname{softmax}(f_\theta(s))_a` over a discrete action set."""

    def __init__(
        self, obs_dim: int, num_actions: int, hidden_sizes: Sequence[int], activation: str, ortho_init: bool = False
    ):
        super().__init__()
        self.logits_net = mlp([obs_dim, *hidden_sizes, num_actions], activation, ortho_init, output_gain=0.01)

    def distribution(self, obs: torch.Tensor) -> Distribution:
        return self.distribution_of((self.logits_net(obs),))

    def distribution_of(self, outputs: Sequence[torch.Tensor]) -> Distribution:
        (logits,) = outputs
        return Categorical(logits=logits, validate_args=False)

    def linearize(self, obs: torch.Tensor) -> Linearization:
        logits, logits_jvp = linearize_mlp(self.logits_net, obs)
        return (logits,), lambda directions: (logits_jvp(directions),)

    def fisher_metric(self, outputs, tangents):
        # KL's curvature in the logits is diag(p) - p p^T per state (the softmax's Jacobian).
        (logits,), (d_logits,) = outputs, tangents
        p = torch.softmax(logits.detach(), dim=-1)
        return ((p * d_logits - p * (p * d_logits).sum(-1, keepdim=True)) / len(logits),)

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.logits_net(obs).argmax(dim=-1)


class ValueFunction(nn.Module):
    """:math:`V_\\phi(s)`, the critic that baselines the advantages."""

    def __init__(self, obs_dim: int, hidden_sizes: Sequence[int], activation: str, ortho_init: bool = False):
        super().__init__()
        self.net = mlp([obs_dim, *hidden_sizes, 1], activation, ortho_init, output_gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


def make_policy(
    observation_space: gym.Space,
    action_space: gym.Space,
    hidden_sizes: Sequence[int],
    activation: str,
    init_log_std: float,
    ortho_init: bool = False,
    bounded_mean: bool = False,
    distribution: str = "gaussian",
    final_log_std: float | None = None,
) -> Policy:
    """The policy that fits ``action_space``: for ``Box``, Gaussian (its mean kept inside the box if
    ``bounded_mean``, its log-std scheduled down to ``final_log_std`` if that is set) or, with
    ``distribution="beta"``, Beta; Categorical for ``Discrete``."""
    if final_log_std is not None and not (isinstance(action_space, gym.spaces.Box) and distribution == "gaussian"):
        raise ConfigError("policy.final_log_std needs a Gaussian policy (Box actions, policy.distribution='gaussian')")
    obs_dim = int(np.prod(observation_space.shape))
    if isinstance(action_space, gym.spaces.Box):
        act_dim = int(np.prod(action_space.shape))
        box = (action_space.low.ravel(), action_space.high.ravel())
        if distribution == "beta":
            if bounded_mean:
                raise ConfigError(
                    "policy.bounded_mean=True is not allowed with policy.distribution='beta': its actions are always "
                    "inside the box"
                )
            return BetaPolicy(obs_dim, act_dim, hidden_sizes, activation, box, ortho_init)
        bounds = box if bounded_mean else None
        return GaussianPolicy(
            obs_dim, act_dim, hidden_sizes, activation, init_log_std, ortho_init, bounds, final_log_std
        )
    if isinstance(action_space, gym.spaces.Discrete):
        if distribution == "beta":
            raise ConfigError("policy.distribution='beta' is not allowed: it needs Box actions, not Discrete")
        return CategoricalPolicy(obs_dim, int(action_space.n), hidden_sizes, activation, ortho_init)
    raise TypeError(f"unsupported action space {action_space}")
