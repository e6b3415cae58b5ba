"""Second-moment preconditioners: RMSProp (plain and centered), Adagrad and Adadelta.

Each divides the gradient elementwise by a root of a running average (or sum) of its squares,
written per element and built with ``gradx.leafwise``. Second moments use ``|g|²`` so
complex parameters work; every moment is kept in the params' dtype, as in Optax.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradx import checks
from gradx.base import GradientTransformation, Updates
from gradx.leafwise import Moment, debias_factor, leafwise
from gradx.plumbing import abs_sq


def _inverse_root(x, eps, eps_in_sqrt: bool):
    """``1/√(x + eps)`` (eps inside the root) or ``1/(√x + eps)``."""
    return jax.lax.rsqrt(x + eps) if eps_in_sqrt else 1 / (jnp.sqrt(x) + eps)


def _debiased(moment, correction):
    """``moment / correction`` in the moment's dtype (``None``: no bias correction)."""
    return moment if correction is None else moment / correction.astype(moment.dtype)


def _check_rms_args(decay, eps, initial_scale, bias_correction):
    # decay = 1 freezes the moment at initial_scale; with bias correction it divides by zero.
    checks.in_range("decay", decay, 0.0, 1.0, high_open=bias_correction)
    checks.non_negative("eps", eps)
    checks.non_negative("initial_scale", initial_scale)


def _with_optional_count(rule, plain_state, count_state, moments, decay, bias_correction):
    """Builds ``rule`` with the count-free state, or with the counted state and the per-step
    bias ``correction = 1 - decay^t`` when ``bias_correction``."""
    if bias_correction:
        return leafwise(rule, count_state, moments,
                        step_scalars=lambda count: {"correction": debias_factor(decay, count)})
    return leafwise(rule, plain_state, moments)


class ScaleByRmsState(NamedTuple):
    """State for exponential root mean-squared (RMS)-normalized updates."""

    nu: Updates


class ScaleByRmsWithCountState(NamedTuple):
    """State for exponential root mean-squared (RMS)-normalized updates."""

    count: jax.Array  # shape=(), dtype=jnp.int32.
    nu: Updates


def scale_by_rms(decay=0.9, eps=1e-8, initial_scale=0.0, eps_in_sqrt: bool = True,
                 bias_correction: bool = False) -> GradientTransformation:
    """RMSProp scaling: divide by the root of an EMA of the squared gradients.

    ``ν ← (1-decay)·|g|² + decay·ν`` (``ν₀ = initial_scale``), then ``u = g / √(ν̂ + eps)``
    (``eps_in_sqrt``, the default) or ``u = g / (√ν̂ + eps)``, with ``ν̂ = ν / (1 - decay^t)``
    when ``bias_correction`` else ``ν̂ = ν``. ``scale_by_rms(b2, eps_in_sqrt=False,
    bias_correction=True)`` equals ``scale_by_adam(b1=0, b2)`` without storing a first moment.

    Defaults: ``decay=0.9, eps=1e-8, initial_scale=0.0, eps_in_sqrt=True,
    bias_correction=False``. State ``ScaleByRmsState(nu)``, or ``ScaleByRmsWithCountState(count,
    nu)`` with ``bias_correction``.

    Reference: Tieleman & Hinton, "Lecture 6.5 - RMSProp", COURSERA, 2012.

    Differs from PyTorch: ``torch.optim.RMSprop`` puts eps outside the root (``eps_in_sqrt=False``)
    and starts from ``initial_scale=0``. Differs from Optax only in validation: ``decay`` outside
    [0, 1] (or 1 with ``bias_correction``), negative ``eps`` or ``initial_scale`` raise ValueError.
    """
    _check_rms_args(decay, eps, initial_scale, bias_correction)

    def rule(g, nu, *, correction=None):
        nu = (1 - decay) * abs_sq(g) + decay * nu
        return g * _inverse_root(_debiased(nu, correction), eps, eps_in_sqrt), nu

    return _with_optional_count(rule, ScaleByRmsState, ScaleByRmsWithCountState,
                                (Moment("nu", initial_scale),), decay, bias_correction)


class ScaleByRStdDevState(NamedTuple):
    """State for centered exponential moving average of squares of updates."""

    mu: Updates
    nu: Updates


class ScaleByRStdDevWithCountState(NamedTuple):
    """State for centered exponential moving average of squares of updates."""

    count: jax.Array  # shape=(), dtype=jnp.int32.
    mu: Updates
    nu: Updates


def scale_by_stddev(decay=0.9, eps=1e-8, initial_scale=0.0, eps_in_sqrt: bool = True,
                    bias_correction: bool = False) -> GradientTransformation:
    """Centered RMSProp scaling: divide by the root of the gradients' running variance.

    ``μ ← (1-decay)·g + decay·μ`` (``μ₀ = 0``), ``ν ← (1-decay)·|g|² + decay·ν``
    (``ν₀ = initial_scale``), then ``u = g / √(ν̂ - |μ̂|² + eps)`` (``eps_in_sqrt``) or
    ``u = g / (√(ν̂ - |μ̂|²) + eps)``; with ``bias_correction`` both moments are divided by
    ``1 - decay^t``, else used as they are.

    Defaults as ``scale_by_rms``. State ``ScaleByRStdDevState(mu, nu)``, or
    ``ScaleByRStdDevWithCountState(count, mu, nu)`` with ``bias_correction``.

    Reference: Graves, "Generating Sequences With Recurrent Neural Networks", 2013, eq. 38-45.

    Differs from Optax: the variance is clamped at 0. It is never negative in exact arithmetic,
    but it is a difference of nearly equal numbers wherever the gradient barely varies, and
    exactly 0 at the first step with ``bias_correction`` (``ν̂ = |g|²``, ``μ̂ = g``): there its
    computed value is round-off, which the compiled program of each library rounds its own way
    and ``1/√(… + eps)`` amplifies. Unclamped, round-off below 0 gives a NaN update (gradx's
    fused program did, with ``decay=0.5``, where Optax's rounds to exactly 0; found by ``make
    fuzz``); clamped, the update there is at most ``|g|/√eps``, as in exact arithmetic, and
    agrees with Optax's only to that round-off.
    Validation as ``scale_by_rms``.
    """
    _check_rms_args(decay, eps, initial_scale, bias_correction)

    def rule(g, mu, nu, *, correction=None):
        mu = (1 - decay) * g + decay * mu
        nu = (1 - decay) * abs_sq(g) + decay * nu
        variance = jnp.maximum(_debiased(nu, correction) - abs_sq(_debiased(mu, correction)), 0)
        return g * _inverse_root(variance, eps, eps_in_sqrt), mu, nu

    return _with_optional_count(rule, ScaleByRStdDevState, ScaleByRStdDevWithCountState,
                                (Moment("mu"), Moment("nu", initial_scale)), decay,
                                bias_correction)


class ScaleByRssState(NamedTuple):
    """State holding the sum of gradient squares to date."""

    sum_of_squares: Updates


def scale_by_rss(initial_accumulator_value=0.1, eps=1e-7) -> GradientTransformation:
    """Adagrad scaling: divide by the root of the sum of all squared gradients to date.

    ``s ← s + |g|²`` (``s₀ = initial_accumulator_value``), ``u = g / √(s + eps)`` where
    ``s > 0``, and ``u = 0`` where ``s = 0``.

    Defaults: ``initial_accumulator_value=0.1, eps=1e-7``. State ``ScaleByRssState(sum_of_squares)``.

    Reference: Duchi et al., "Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization", JMLR 2011.

    Differs from PyTorch: ``torch.optim.Adagrad`` starts from ``initial_accumulator_value=0`` and
    puts eps (1e-10) outside the root. Differs from Optax only in validation: a negative
    ``initial_accumulator_value`` or ``eps`` raises ValueError.
    """
    checks.non_negative("initial_accumulator_value", initial_accumulator_value)
    checks.non_negative("eps", eps)

    def rule(g, s):
        s = abs_sq(g) + s
        return jnp.where(s > 0, jax.lax.rsqrt(s + eps), 0.0) * g, s

    return leafwise(rule, ScaleByRssState, (Moment("sum_of_squares", initial_accumulator_value),))


class ScaleByAdaDeltaState(NamedTuple):
    """State for the rescaling by Adadelta algorithm."""

    e_g: Updates
    e_x: Updates


def scale_by_adadelta(rho=0.9, eps=1e-6) -> GradientTransformation:
    """Adadelta scaling: the ratio of the RMS of past updates to the RMS of the gradients.

    ``E[g²] ← rho·E[g²] + (1-rho)·|g|²``, ``u = √(E[Δx²] + eps) / √(E[g²] + eps) · g``,
    ``E[Δx²] ← rho·E[Δx²] + (1-rho)·|u|²`` (both start at 0). The sign is not flipped here:
    chain with a negative scale to descend.

    Defaults: ``rho=0.9, eps=1e-6``. State ``ScaleByAdaDeltaState(e_g, e_x)``.

    Reference: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012, Algorithm 1.

    Differs from Optax: ``rho`` outside [0, 1] and ``eps <= 0`` raise ValueError (with
    ``eps = 0`` the update is 0 forever, since ``E[Δx²]`` starts at 0); the squares use ``|g|²``,
    so complex gradients get a real second moment (Optax squares them, ``g²``; same numbers
    for real gradients).
    """
    checks.in_range("rho", rho, 0.0, 1.0, high_open=False)
    checks.positive("eps", eps)

    def rule(g, e_g, e_x):
        e_g = (1 - rho) * abs_sq(g) + rho * e_g
        u = jnp.sqrt(e_x + eps) / jnp.sqrt(e_g + eps) * g
        e_x = (1 - rho) * abs_sq(u) + rho * e_x
        return u, e_g, e_x

    return leafwise(rule, ScaleByAdaDeltaState, (Moment("e_g"), Moment("e_x")))


__all__ = ["ScaleByRmsState", "ScaleByRmsWithCountState", "scale_by_rms", "ScaleByRStdDevState",
           "ScaleByRStdDevWithCountState", "scale_by_stddev", "ScaleByRssState", "scale_by_rss",
           "ScaleByAdaDeltaState", "scale_by_adadelta"]
