"""MoMo: momentum methods with a Polyak-type step size from a model of the loss, for SGD with
momentum (``momo``) and Adam (``momo_adam``) (Schaipp et al., 2023)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradx import checks, plumbing
from gradx.base import GradientTransformationExtraArgs, ScalarOrSchedule
from gradx.leafwise import Moment, debias_factor, leafwise

_NO_VALUE = object()


class MomoState(NamedTuple):
    """The momentum ``exp_avg``, the averaged loss ``barf``, the averaged ``⟨g, θ⟩`` ``gamma``,
    the loss lower bound ``lb`` (scalars in the params' lowest dtype) and the count."""

    exp_avg: Any
    barf: Any
    gamma: Any
    lb: Any
    count: Any


class MomoAdamState(NamedTuple):
    """``MomoState`` with Adam's second moment ``exp_avg_sq``."""

    exp_avg: Any
    exp_avg_sq: Any
    barf: Any
    gamma: Any
    lb: Any
    count: Any


def _loss(value, name: str):
    """The loss passed as ``value=``, or an error that says how to pass it."""
    how = (f"{name} needs the current loss: call update(grads, state, params, value=loss), with "
           "loss, grads = jax.value_and_grad(loss_fn)(params).")
    if value is _NO_VALUE:
        raise TypeError(f"{name}.update() got no value=. {how}")
    if value is None:
        raise ValueError(f"{name}.update() got value=None. {how}")
    return value


def _check(learning_rate, weight_decay) -> None:
    checks.non_negative("learning_rate", learning_rate)
    checks.non_negative("weight_decay", weight_decay)


def _polyak_step(alpha, weight_decay, barf, gamma, iprod, norm_sq, lb, lower_bound,
                 adapt_lower_bound, bc1=1):
    """MoMo's step ``τ = min(α/c, max((1+αλ)·(f̄ - c·lb - γ) + ⟨m, θ⟩, 0) / ‖m‖²)`` (0 when
    ``‖m‖²`` is at most float64's machine epsilon) and the next lower bound; ``c`` is Adam's
    first-moment bias correction (1 for SGD), ``‖m‖²`` Adam's preconditioned norm."""
    scale = 1 + alpha * weight_decay
    if adapt_lower_bound:
        cap = scale * (barf - gamma) + iprod
        lb = jnp.where(cap < scale * bc1 * lb,
                       jnp.maximum(cap / (2 * bc1 * scale), lower_bound), lb)
    t1 = jnp.maximum(scale * (barf - bc1 * lb - gamma) + iprod, 0.0) / norm_sq
    t1 = jnp.where(norm_sq <= np.finfo(np.float64).eps, 0.0, t1)
    tau = jnp.minimum(alpha / bc1, t1)
    if adapt_lower_bound:
        lb = jnp.maximum(((barf + iprod - gamma) - (1 / 2) * tau * norm_sq) / bc1, lower_bound)
    return tau, lb


def momo(learning_rate: ScalarOrSchedule = 1.0, beta: jax.typing.ArrayLike = 0.9,
         lower_bound: jax.typing.ArrayLike = 0.0, weight_decay: jax.typing.ArrayLike = 0.0,
         adapt_lower_bound: bool = False) -> GradientTransformationExtraArgs:
    """SGD with momentum and MoMo's adaptive step: ``u = -αλ/(1+αλ)·θ - τ·m`` with
    ``τ = min(α, max((1+αλ)·(f̄ - lb - γ) + ⟨m, θ⟩, 0)/‖m‖²)``.

    ``m``, ``f̄`` and ``γ`` are EMAs (decay ``beta``, the first step copies) of the gradient,
    the loss and ``⟨g, θ⟩``; ``α`` the learning rate (a schedule of the count before the
    increment); ``lb`` a lower bound of the loss (``lower_bound``, or estimated on the fly with
    ``adapt_lower_bound=True``). The update needs the loss: ``update(grads, state, params,
    value=loss)``; without it ``TypeError`` (``value=None``: ``ValueError``), both saying what
    to pass. Defaults ``learning_rate=1.0, beta=0.9, lower_bound=0.0, weight_decay=0.0,
    adapt_lower_bound=False``. Needs params; state ``MomoState``. Reference: Schaipp, Ohana,
    Eickenberg, Defazio & Gower, "MoMo: Momentum Models for Adaptive Learning Rates" (ICML
    2024). Same numbers as ``optax.contrib.momo``.

    Examples:
      >>> tx = gradx.contrib.momo()
      >>> params = jnp.array([1.0, 2.0, 3.0])
      >>> state = tx.init(params)
      >>> value, grad = jax.value_and_grad(lambda x: jnp.sum(x ** 2))(params)
      >>> updates, state = jax.jit(tx.update)(grad, state, params, value=value)
      >>> print(jnp.sum(gradx.apply_updates(params, updates) ** 2))  # Optax's documented 3.5
      3.5
    """
    checks.in_range("beta", beta, 0.0, 1.0)
    _check(learning_rate, weight_decay)

    def next_exp_avg(m, g, bt):
        return bt * m + (1 - bt) * g

    def step_scalars(_, state, updates, params, barf, gamma, lb, value=_NO_VALUE, **extra_args):
        del extra_args
        value = _loss(value, "momo")
        bt = jnp.where(state.count == 0, 0.0, beta)
        barf = bt * barf + (1 - bt) * jnp.asarray(value, barf.dtype)
        exp_avg = jax.tree.map(lambda m, g: next_exp_avg(m, g, bt), state.exp_avg, updates)
        gamma = bt * gamma + (1 - bt) * plumbing.vdot(updates, params)
        iprod = plumbing.vdot(exp_avg, params)
        alpha = learning_rate(state.count) if callable(learning_rate) else learning_rate
        tau, lb = _polyak_step(alpha, weight_decay, barf, gamma, iprod,
                               plumbing.squared_norm(exp_avg), lb, lower_bound, adapt_lower_bound)
        decay = -(alpha * weight_decay) / (1 + alpha * weight_decay)
        return {"bt": bt, "tau": tau, "decay": decay}, {"barf": barf, "gamma": gamma, "lb": lb}

    def rule(g, p, m, *, bt, tau, decay):
        m = next_exp_avg(m, g, bt)
        return decay * p - tau * m, m

    return leafwise(rule, MomoState, (Moment("exp_avg"),), step_scalars, needs_params=True,
                    step_inputs=("state", "updates", "params", "extra_args"),
                    carry={"barf": plumbing.full_in_lowest_dtype(0.0),
                           "gamma": plumbing.full_in_lowest_dtype(0.0),
                           "lb": plumbing.full_in_lowest_dtype(lower_bound)})


def momo_adam(learning_rate: ScalarOrSchedule = 1e-2, b1: jax.typing.ArrayLike = 0.9,
              b2: jax.typing.ArrayLike = 0.999, eps: jax.typing.ArrayLike = 1e-8,
              lower_bound: jax.typing.ArrayLike = 0.0, weight_decay: jax.typing.ArrayLike = 0.0,
              adapt_lower_bound: bool = False) -> GradientTransformationExtraArgs:
    """Adam(W) with MoMo's adaptive step: ``u = -αλ/(1+αλ)·θ - τ·m/D`` with
    ``D = eps + √(v/(1-β2^t))`` and ``τ = min(α/c, max((1+αλ)·(f̄ - c·lb - γ) + ⟨m, θ⟩, 0) /
    ⟨m, m/D⟩)``, ``c = 1 - β1^t``.

    ``m``, ``v`` are Adam's moments and ``f̄``, ``γ`` EMAs (decay ``b1``) of the loss and
    ``⟨g, θ⟩``; otherwise as ``momo``, including ``value=``. Defaults ``learning_rate=1e-2,
    b1=0.9, b2=0.999, eps=1e-8, lower_bound=0.0, weight_decay=0.0, adapt_lower_bound=False``.
    Needs params; state ``MomoAdamState``. Reference: Schaipp et al. (ICML 2024). Same numbers
    as ``optax.contrib.momo_adam``.
    """
    checks.in_range("b1", b1, 0.0, 1.0)
    checks.in_range("b2", b2, 0.0, 1.0)
    checks.non_negative("eps", eps)
    _check(learning_rate, weight_decay)

    def next_m(g, m):
        return b1 * m + (1 - b1) * g

    def preconditioner(g, v, bc2):
        """The next ``v`` and ``D = eps + √(v/bc2)``."""
        v = b2 * v + (1 - b2) * g * g
        return v, eps + jnp.sqrt(v / bc2)

    def step_scalars(count, state, updates, params, barf, gamma, lb, value=_NO_VALUE,
                     **extra_args):
        del extra_args
        value = _loss(value, "momo_adam")
        barf = b1 * barf + (1 - b1) * jnp.asarray(value, barf.dtype)
        bc1, bc2 = (jnp.asarray(debias_factor(b, count), barf.dtype) for b in (b1, b2))
        exp_avg = jax.tree.map(next_m, updates, state.exp_avg)
        weighted = jax.tree.map(lambda m, g, v: m / preconditioner(g, v, bc2)[1],
                                exp_avg, updates, state.exp_avg_sq)
        gamma = b1 * gamma + (1 - b1) * plumbing.vdot(updates, params)
        iprod = plumbing.vdot(exp_avg, params)
        alpha = learning_rate(state.count) if callable(learning_rate) else learning_rate
        tau, lb = _polyak_step(alpha, weight_decay, barf, gamma, iprod,
                               plumbing.vdot(exp_avg, weighted), lb, lower_bound,
                               adapt_lower_bound, bc1)
        decay = -(alpha * weight_decay) / (1 + alpha * weight_decay)
        return {"bc2": bc2, "tau": tau, "decay": decay}, {"barf": barf, "gamma": gamma, "lb": lb}

    def rule(g, p, m, v, *, bc2, tau, decay):
        m = next_m(g, m)
        v, precond = preconditioner(g, v, bc2)
        return decay * p - tau * m / precond, m, v

    return leafwise(rule, MomoAdamState, (Moment("exp_avg"), Moment("exp_avg_sq")),
                    step_scalars, needs_params=True,
                    step_inputs=("state", "updates", "params", "extra_args"),
                    carry={"barf": plumbing.full_in_lowest_dtype(0.0),
                           "gamma": plumbing.full_in_lowest_dtype(0.0),
                           "lb": plumbing.full_in_lowest_dtype(lower_bound)})


__all__ = ["MomoState", "MomoAdamState", "momo", "momo_adam"]
