r"""The mathematics of one TRPO policy step, as small pure functions.

TRPO (Schulman et al., 2015) picks the new policy parameters by solving

.. math::

    \theta_{k+1} = \arg\max_\theta \; L(\theta_k, \theta)
    \quad \text{s.t.} \quad \bar{D}_{KL}(\theta_k \,\|\, \theta) \le \delta

with the surrogate advantage :math:`L` and the mean KL divergence :math:`\bar D_{KL}` below. Expanding
:math:`L` to first order and :math:`\bar D_{KL}` to second order around :math:`\theta_k` gives

.. math::

    \theta_{k+1} = \theta_k + \sqrt{\frac{2\delta}{x^\top H x}} \, x, \qquad x = H^{-1} g,

where :math:`g = \nabla_\theta L` and :math:`H = \nabla^2_\theta \bar D_{KL}` (the Fisher information).
:math:`x` comes from conjugate gradient, which needs only products :math:`Hv`; a backtracking line search
then shrinks the step until the exact KL and surrogate (not their approximations) are acceptable.

Each function here is one of those pieces; :class:`trpo.updates.TRPO` strings them together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.distributions import Distribution, kl_divergence


def surrogate_advantage(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    r""":math:`L(\theta_k, \theta) = \mathbb{E}_{s,a \sim \pi_{\theta_k}}
    \left[\frac{\pi_\theta(a|s)}{\pi_{\theta_k}(a|s)} A^{\pi_{\theta_k}}(s,a)\right]`.

    The ratio is an importance weight: it lets data sampled from the old policy estimate how much better
    the new policy would do. At :math:`\theta = \theta_k` it is 1, so :math:`L` there is the mean advantage.
    """
    return (torch.exp(logp - logp_old) * advantages).mean()


def mean_kl(old: Distribution, new: Distribution) -> torch.Tensor:
    r""":math:`\bar D_{KL}(\theta_k \| \theta) = \mathbb{E}_{s \sim \pi_{\theta_k}}
    \left[D_{KL}\big(\pi_{\theta_k}(\cdot|s) \,\|\, \pi_\theta(\cdot|s)\big)\right]` over the batch's states: the old
    policy first, as in the TRPO paper. Spinning Up constrains the reverse divergence; the two agree to second order
    at :math:`\theta_k` (the same step), and differ only in the line search's exact check."""
    return kl_divergence(old, new).mean()


def flat_grad(
    output: torch.Tensor, params: Sequence[torch.Tensor], create_graph: bool = False, retain_graph: bool = False
) -> torch.Tensor:
    """The gradient of a scalar with respect to ``params``, concatenated into one vector."""
    grads = torch.autograd.grad(output, params, create_graph=create_graph, retain_graph=retain_graph or create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def flat_params(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """A copy of ``params`` as one vector."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def set_flat_params(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Write the vector ``flat`` back into ``params`` (the inverse of :func:`flat_params`)."""
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n


def fisher_vector_product(
    outputs: Sequence[torch.Tensor],
    jvp: Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]],
    metric: Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], Sequence[torch.Tensor]],
    params: Sequence[torch.Tensor],
    damping_coeff: float,
) -> Callable[[torch.Tensor], torch.Tensor]:
    r"""Return :math:`v \mapsto (H + \lambda I)\,v` with :math:`H = \nabla^2_\theta \bar D_{KL}` at
    :math:`\theta_k` and :math:`\lambda` = ``damping_coeff``, never forming :math:`H`.

    The KL depends on :math:`\theta` only through the distribution's parameters :math:`y` (Gaussian means and
    log-stds, or logits), and its gradient in :math:`y` is zero at :math:`\theta_k`, so its Hessian is the
    Gauss-Newton form -- the Fisher information:

    .. math::

        H = J^\top M J, \qquad J = \partial y / \partial \theta, \qquad M = \nabla^2_y \bar D_{KL}.

    One product is a Jacobian-vector product ``jvp(v)`` (:math:`J v`), the metric ``metric(outputs, Jv)``
    (:math:`M` is known in closed form for each distribution), and one backward pass through the graph of
    ``outputs`` (:math:`J^\top u`), built once and reused for every product. ``outputs`` and ``jvp`` come from
    :meth:`trpo.networks.Policy.linearize`, ``metric`` is :meth:`trpo.networks.Policy.fisher_metric`. The damping
    keeps the system well conditioned where the sampled :math:`H` is near singular.
    """
    detached = [y.detach() for y in outputs]
    # An output no parameter moves (a scheduled log-std) has no graph to pull back through.
    moved = [y.requires_grad for y in outputs]
    moved_outputs = [y for y, keep in zip(outputs, moved) if keep]

    def product(v: torch.Tensor) -> torch.Tensor:
        directions = [piece.view_as(p) for piece, p in zip(torch.split(v, [p.numel() for p in params]), params)]
        weighted = [w for w, keep in zip(metric(detached, jvp(directions)), moved) if keep]
        grads = torch.autograd.grad(moved_outputs, params, grad_outputs=weighted, retain_graph=True)
        return torch.cat([g.reshape(-1) for g in grads]) + damping_coeff * v

    return product


def conjugate_gradient(
    matrix_vector_product: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iters: int,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    r"""Approximately solve :math:`Ax = b` for a symmetric positive-definite :math:`A` given only :math:`v \mapsto Av`.

    Each iteration adds one :math:`A`-conjugate search direction; in exact arithmetic ``iters`` = dim(b) solves the
    system exactly, and a handful already captures the directions of largest curvature. Starts from
    :math:`x_0 = 0` and stops early once :math:`r^\top r` < ``residual_tol``.
    """
    x = torch.zeros_like(b)
    r = b.clone()  # residual b - Ax
    p = b.clone()  # search direction
    r_dot_r = r @ r
    for _ in range(iters):
        if r_dot_r < residual_tol:
            break
        ap = matrix_vector_product(p)
        alpha = r_dot_r / (p @ ap)
        x += alpha * p
        r -= alpha * ap
        new_r_dot_r = r @ r
        p = r + (new_r_dot_r / r_dot_r) * p
        r_dot_r = new_r_dot_r
    return x


def max_step(x: torch.Tensor, hx: torch.Tensor, delta: float, max_multiplier: float = math.inf) -> torch.Tensor:
    r"""The full step :math:`s = \min\big(\sqrt{2\delta / x^\top H x},\ \eta\big)\; x`.

    :math:`\sqrt{2\delta / x^\top H x}\,x` is the largest multiple of the direction :math:`x` whose quadratic KL
    model :math:`\tfrac12 s^\top H s` equals :math:`\delta`: TRPO's step, always on the model's boundary, however
    small the gradient. :math:`H` here carries the damping, so the step's true KL lands below :math:`\delta` by
    the damping's share. ``max_multiplier`` :math:`\eta` (default :math:`\infty`: TRPO) caps it at the
    natural-gradient step :math:`\eta x`, the classical trust-region rule: take the model's own step when it
    lies inside the region, and the boundary only when it does not. Then a gradient that is small (advantages
    near zero once a task is solved) moves the policy a little, not a full :math:`\delta`. A direction without
    positive curvature, :math:`x = 0` (every advantage 0, so :math:`g = 0`), gives the zero step, not
    :math:`\infty \cdot 0`."""
    quadratic = x @ hx
    if quadratic <= 0:
        return torch.zeros_like(x)
    return torch.minimum(torch.sqrt(2 * delta / quadratic), torch.tensor(max_multiplier, dtype=x.dtype)) * x


@dataclass
class LineSearchResult:
    """Where the line search ended: the parameters to keep (``params_old`` when no candidate passed), how many
    times it shrank the step, whether a candidate passed, and the surrogate and KL at the kept parameters."""

    params: torch.Tensor
    backtracks: int
    accepted: bool
    surrogate: float
    kl: float


def backtracking_line_search(
    evaluate: Callable[[torch.Tensor], tuple[float, float]],
    params_old: torch.Tensor,
    full_step: torch.Tensor,
    surrogate_old: float,
    delta: float,
    backtrack_coeff: float,
    backtrack_iters: int,
) -> LineSearchResult:
    r"""Try :math:`\theta_k + \alpha^j s` for :math:`j = 0, 1, \dots` ``backtrack_iters`` - 1 (:math:`\alpha` =
    ``backtrack_coeff``) and accept the first whose exact mean KL is at most :math:`\delta` and whose surrogate
    advantage improves on ``surrogate_old``.

    The surrogate must rise strictly, as in the TRPO paper; Spinning Up also accepts an equal one.
    ``evaluate(params)`` returns (surrogate, KL) at ``params``. The quadratic model behind :math:`s` can be wrong
    far from :math:`\theta_k`; this check is what keeps each update inside the trust region. When no candidate
    passes, the result holds ``params_old`` itself, so the caller restores the policy bit for bit.
    """
    for j in range(backtrack_iters):
        candidate = params_old + backtrack_coeff**j * full_step
        surrogate, kl = evaluate(candidate)
        if kl <= delta and surrogate > surrogate_old:
            return LineSearchResult(candidate, j, True, surrogate, kl)
    surrogate, kl = evaluate(params_old)
    return LineSearchResult(params_old, backtrack_iters, False, surrogate, kl)
