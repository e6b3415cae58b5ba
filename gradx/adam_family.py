"""The Adam family: moment estimates rescaled by a second-moment (or infinity-norm) estimate.

Every rule here is written per leaf, close to its paper's formula, and built with
``gradx.leafwise``. The per-step scalars (bias corrections ``1 - b^t``, RAdam's rectifier)
are computed once per step in ``step_scalars`` from the step number ``t`` (1 on the first update)
in float32, and cast to each moment's dtype before dividing, as Optax does, so that bfloat16
moments stay bfloat16 while ``b^t`` is never rounded to 1 in low precision.

Moments keep their own dtype (``mu_dtype`` where Optax offers it); updates keep the gradients'
dtype. Second moments use ``|g|²``, so complex parameters work wherever Optax supports them.

The tree-level moment helpers Optax exports (``update_moment``, ``update_moment_per_elem_norm``,
``update_infinity_moment``, ``bias_correction``) are defined here on top of the same per-leaf
formulas the rules use.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.base import GradientTransformation, safe_increment
from gradx.leafwise import Moment, debias_factor, leafwise

__all__ = [
    "update_moment", "update_moment_per_elem_norm", "update_infinity_moment", "bias_correction",
    "ScaleByAdamState", "ScaleByAmsgradState", "ScaleByAdanState", "ScaleByBeliefState",
    "ScaleByNovogradState",
    "scale_by_adam", "scale_by_amsgrad", "scale_by_adamax", "scale_by_adan", "scale_by_belief",
    "scale_by_radam", "scale_by_yogi", "scale_by_novograd",
]


# --------------------------------------------------------------------------------------------
# Per-leaf moment formulas (shared by the rules and the exported tree helpers)
# --------------------------------------------------------------------------------------------

def _ema(g, m, decay, order=1):
    """``(1 - d)·g^order + d·m``."""
    return (1 - decay) * (g ** order) + decay * m


def _elem_norm(g, order):
    """``g^order`` for real ``g``; ``|g|^order`` for complex ``g``."""
    if jnp.isrealobj(g):
        return g ** order
    half = order / 2
    return plumbing.abs_sq(g) ** (int(half) if float(half).is_integer() else half)


def _ema_norm(g, m, decay, order=2):
    """``(1 - d)·|g|^order + d·m``."""
    return (1 - decay) * _elem_norm(g, order) + decay * m


def _ema_inf(g, m, decay, eps):
    """``max(|g| + eps, d·m)``: the exponentially weighted infinity norm."""
    return jnp.maximum(jnp.abs(g) + eps, decay * m)


def _debias(x, correction):
    """``x / (1 - d^t)`` with the correction cast to ``x``'s dtype."""
    return x / jnp.asarray(correction).astype(jnp.result_type(x))


def _tree_map_skip_none(f, updates, *rest):
    return jax.tree.map(lambda g, *r: None if g is None else f(g, *r), updates, *rest,
                        is_leaf=lambda x: x is None)


def update_moment(updates, moments, decay, order):
    """Exponential moving average of the ``order``-th power of the updates, leaf by leaf:
    ``m ← (1 - decay)·g^order + decay·m``. ``None`` leaves stay ``None`` (as Optax)."""
    return _tree_map_skip_none(lambda g, m: _ema(g, m, decay, order), updates, moments)


def update_moment_per_elem_norm(updates, moments, decay, order):
    """Exponential moving average of ``|g|^order`` (the modulus for complex ``g``):
    ``m ← (1 - decay)·|g|^order + decay·m``."""
    return _tree_map_skip_none(lambda g, m: _ema_norm(g, m, decay, order), updates, moments)


def update_infinity_moment(updates, moments, decay, eps):
    """Exponentially weighted infinity norm: ``m ← max(|g| + eps, decay·m)`` (Adamax)."""
    return _tree_map_skip_none(lambda g, m: _ema_inf(g, m, decay, eps), updates, moments)


def bias_correction(moment, decay, count):
    """Debiases an EMA started at zero: ``m / (1 - decay^count)``.

    ``1 - decay^count`` is computed in float32 (for a Python ``decay``) and then cast to each
    moment's dtype, as Optax does, so bfloat16 moments stay bfloat16.
    """
    correction = debias_factor(decay, jnp.asarray(count))
    return jax.tree.map(lambda m: _debias(m, correction), moment)


# --------------------------------------------------------------------------------------------
# Shared pieces of the Adam-style rules
# --------------------------------------------------------------------------------------------

def _check_betas(**betas):
    for name, value in betas.items():
        checks.in_range(name, value, 0.0, 1.0)


def _check_non_negative(**values):
    for name, value in values.items():
        checks.non_negative(name, value)


def _corrections(nesterov=False, **decays):
    """``step_scalars`` giving ``bc<k> = 1 - b<k>^t`` for each named decay (float32), plus
    ``bc1_next = 1 - b1^(t+1)`` for the Nesterov form."""

    def step_scalars(count):
        scalars = {f"bc{name[1:]}": debias_factor(decay, count) for name, decay in decays.items()}
        if nesterov:
            scalars["bc1_next"] = debias_factor(decays["b1"], safe_increment(count))
        return scalars

    return step_scalars


def _mu_hat(g, mu, b1, bc1, bc1_next, nesterov):
    """The debiased first moment; with ``nesterov`` Dozat's (2016) look-ahead
    ``b1·m_t/(1 - b1^(t+1)) + (1 - b1)·g_t/(1 - b1^t)``."""
    if nesterov:
        return b1 * _debias(mu, bc1_next) + (1 - b1) * _debias(g, bc1)
    return _debias(mu, bc1)


class ScaleByAdamState(NamedTuple):
    """State of Adam, Adamax, RAdam and Yogi."""

    count: Any  # int32 scalar
    mu: Any
    nu: Any


class ScaleByAmsgradState(NamedTuple):
    """State of AMSGrad."""

    count: Any  # int32 scalar
    mu: Any
    nu: Any
    nu_max: Any


class ScaleByAdanState(NamedTuple):
    """State of Adan; ``g`` is the previous gradient and ``t`` the step count."""

    m: Any
    v: Any
    n: Any
    g: Any
    t: Any  # int32 scalar


class ScaleByBeliefState(NamedTuple):
    """State of AdaBelief; ``nu`` is the EMA of the squared prediction error."""

    count: Any  # int32 scalar
    mu: Any
    nu: Any


class ScaleByNovogradState(NamedTuple):
    """State of NovoGrad; ``nu`` holds one scalar per leaf."""

    count: Any  # int32 scalar
    mu: Any
    nu: Any


# --------------------------------------------------------------------------------------------
# Transformations
# --------------------------------------------------------------------------------------------

def scale_by_adam(b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0,
                  mu_dtype: Optional[Any] = None, *, nesterov: bool = False
                  ) -> GradientTransformation:
    """Rescales updates by Adam's bias-corrected moment estimates.

    ``m ← b1·m + (1-b1)·g``, ``v ← b2·v + (1-b2)·|g|²``,
    ``u = m̂ / (√(v̂ + eps_root) + eps)`` with ``m̂ = m/(1-b1^t)``, ``v̂ = v/(1-b2^t)``.
    With ``nesterov=True`` (NAdam, Dozat 2016) ``m̂ = b1·m/(1-b1^(t+1)) + (1-b1)·g/(1-b1^t)``.

    Defaults ``b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0`` (as Optax; PyTorch has no eps_root).
    ``mu_dtype`` stores the first moment in that dtype; ``nu`` keeps the params' dtype.
    Complex parameters are supported (``|g|²`` in the second moment).

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015;
    Dozat, "Incorporating Nesterov Momentum into Adam", 2016.

    Differences from Optax: none in the numbers; updates keep the gradients' dtype.
    State: ``ScaleByAdamState(count, mu, nu)``.
    """
    _check_betas(b1=b1, b2=b2)
    _check_non_negative(eps=eps, eps_root=eps_root)
    mu_dtype = plumbing.canonicalize_dtype(mu_dtype)

    def rule(g, mu, nu, *, bc1, bc2, bc1_next=None):
        mu = _ema(g, mu, b1)
        nu = _ema_norm(g, nu, b2)
        m_hat = _mu_hat(g, mu, b1, bc1, bc1_next, nesterov)
        return m_hat / (jnp.sqrt(_debias(nu, bc2) + eps_root) + eps), mu, nu

    return leafwise(rule, ScaleByAdamState,
                    moments=(Moment("mu", dtype=mu_dtype), Moment("nu")),
                    step_scalars=_corrections(nesterov, b1=b1, b2=b2))


def scale_by_amsgrad(b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0,
                     mu_dtype: Optional[Any] = None, bias_correction_mu: bool = True,
                     bias_correction_nu: bool = True) -> GradientTransformation:
    """Rescales updates by AMSGrad: Adam with the running maximum of the second moment.

    ``m ← b1·m + (1-b1)·g``, ``v ← b2·v + (1-b2)·|g|²``, ``v_max ← max(v_max, v̂)``,
    ``u = m̂ / (√(v_max + eps_root) + eps)``. ``bias_correction_mu`` / ``bias_correction_nu``
    choose whether ``m̂ = m/(1-b1^t)`` and ``v̂ = v/(1-b2^t)`` (True, Optax's default) or the
    raw moments (False, the paper's Algorithm 2).

    Defaults ``b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0``.

    Reference: Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", 2018.

    Differences: PyTorch's ``Adam(amsgrad=True)`` takes the maximum of the *raw* ``v`` and then
    divides by ``√(1-b2^t)``; Optax (and gradx) take the maximum of ``v̂``. Unlike Optax, ``nu``
    keeps its dtype when the gradients' dtype differs from the params'.
    State: ``ScaleByAmsgradState(count, mu, nu, nu_max)``.
    """
    _check_betas(b1=b1, b2=b2)
    _check_non_negative(eps=eps, eps_root=eps_root)
    mu_dtype = plumbing.canonicalize_dtype(mu_dtype)

    def step_scalars(count):
        one = jnp.ones([], jnp.float32)  # x / 1 is exact: no correction
        return {"bc1": debias_factor(b1, count) if bias_correction_mu else one,
                "bc2": debias_factor(b2, count) if bias_correction_nu else one}

    def rule(g, mu, nu, nu_max, *, bc1, bc2):
        mu = _ema(g, mu, b1)
        nu = _ema_norm(g, nu, b2)
        nu_max = jnp.maximum(nu_max, _debias(nu, bc2))
        return _debias(mu, bc1) / (jnp.sqrt(nu_max + eps_root) + eps), mu, nu, nu_max

    return leafwise(rule, ScaleByAmsgradState,
                    moments=(Moment("mu", dtype=mu_dtype), Moment("nu"), Moment("nu_max")),
                    step_scalars=step_scalars)


def scale_by_adamax(b1=0.9, b2=0.999, eps=1e-8) -> GradientTransformation:
    """Rescales updates by Adamax: Adam with an exponentially weighted infinity norm.

    ``m ← b1·m + (1-b1)·g``, ``v ← max(|g| + eps, b2·v)``, ``u = (m/(1-b1^t)) / v``
    (``v`` needs no bias correction; eps sits inside the max).

    Defaults ``b1=0.9, b2=0.999, eps=1e-8``. ``b2=1`` (a plain running maximum) is allowed.

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015, Section 7.

    Differences: none from Optax or PyTorch ``Adamax`` (same algebra).
    State: ``ScaleByAdamState(count, mu, nu)``.
    """
    _check_betas(b1=b1)
    checks.in_range("b2", b2, 0.0, 1.0, high_open=False)
    _check_non_negative(eps=eps)

    def rule(g, mu, nu, *, bc1):
        mu = _ema(g, mu, b1)
        nu = _ema_inf(g, nu, b2, eps)
        return _debias(mu, bc1) / nu, mu, nu

    return leafwise(rule, ScaleByAdamState, moments=(Moment("mu"), Moment("nu")),
                    step_scalars=_corrections(b1=b1))


def scale_by_adan(b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=0.0) -> GradientTransformation:
    """Rescales updates by Adan (adaptive Nesterov momentum).

    With ``Δ = g_t - g_{t-1}`` (0 on the first step):
    ``m ← b1·m + (1-b1)·g``, ``v ← b2·v + (1-b2)·Δ``, ``n ← b3·n + (1-b3)·|g + (1-b2)·Δ|²``,
    all three bias-corrected, ``u = (m̂ + (1-b2)·v̂) / (√(n̂ + eps_root) + eps)``.

    Defaults ``b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=0.0`` (the ``adan`` alias uses
    ``eps_root=1e-8``). Here the b's weigh the *old* value, as in Optax (the paper's β's are
    ``1 - b``).

    Reference: Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing
    Deep Models", 2022, Algorithm 1.

    Differences from Optax: none in the numbers. State: ``ScaleByAdanState(m, v, n, g, t)``.
    """
    _check_betas(b1=b1, b2=b2, b3=b3)
    _check_non_negative(eps=eps, eps_root=eps_root)
    corrections = _corrections(b1=b1, b2=b2, b3=b3)

    def step_scalars(count):
        return {**corrections(count), "first": count == 1}

    def rule(g, m, v, n, g_prev, *, bc1, bc2, bc3, first):
        diff = jnp.where(first, jnp.zeros_like(g), g - g_prev)
        m = _ema(g, m, b1)
        v = _ema(diff, v, b2)
        n = _ema_norm(g + (1 - b2) * diff, n, b3)
        direction = _debias(m, bc1) + (1 - b2) * _debias(v, bc2)
        return direction / (jnp.sqrt(_debias(n, bc3) + eps_root) + eps), m, v, n, g

    return leafwise(rule, ScaleByAdanState,
                    moments=(Moment("m"), Moment("v"), Moment("n"), Moment("g")),
                    step_scalars=step_scalars, count_field="t")


def scale_by_belief(b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, *, nesterov: bool = False
                    ) -> GradientTransformation:
    """Rescales updates by AdaBelief: Adam with the variance of the prediction error.

    ``m ← b1·m + (1-b1)·g``, ``s ← b2·s + (1-b2)·|g - m|² + eps_root`` (eps_root is stored in s
    every step), ``u = m̂ / (√ŝ + eps)`` with both moments bias-corrected; ``nesterov`` uses
    Dozat's look-ahead ``m̂`` as in ``scale_by_adam``.

    Defaults ``b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16``.

    Reference: Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
    Gradients", 2020.

    Differences from Optax: none in the numbers. State: ``ScaleByBeliefState(count, mu, nu)``.
    """
    _check_betas(b1=b1, b2=b2)
    _check_non_negative(eps=eps, eps_root=eps_root)

    def rule(g, mu, nu, *, bc1, bc2, bc1_next=None):
        mu = _ema(g, mu, b1)
        nu = _ema_norm(g - mu, nu, b2) + eps_root
        m_hat = _mu_hat(g, mu, b1, bc1, bc1_next, nesterov)
        return m_hat / (jnp.sqrt(_debias(nu, bc2)) + eps), mu, nu

    return leafwise(rule, ScaleByBeliefState, moments=(Moment("mu"), Moment("nu")),
                    step_scalars=_corrections(nesterov, b1=b1, b2=b2))


def scale_by_radam(b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, threshold=5.0, *,
                   nesterov: bool = False) -> GradientTransformation:
    """Rescales updates by Rectified Adam.

    ``ρ∞ = 2/(1-b2) - 1``, ``ρ_t = ρ∞ - 2t·b2^t/(1-b2^t)``. While ``ρ_t < threshold`` the update
    is the debiased momentum ``m̂``; afterwards ``r_t·m̂/(√(v̂ + eps_root) + eps)`` with
    ``r_t = √((ρ_t-4)(ρ_t-2)ρ∞ / ((ρ∞-4)(ρ∞-2)ρ_t))``. ``nesterov`` uses Dozat's ``m̂``.

    Defaults ``b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, threshold=5.0``.

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", 2020.

    Differences: PyTorch ``RAdam`` switches at ``ρ_t > 5`` (strict); Optax and gradx at
    ``ρ_t >= threshold``. State: ``ScaleByAdamState(count, mu, nu)``.
    """
    _check_betas(b1=b1, b2=b2)
    _check_non_negative(eps=eps, eps_root=eps_root)
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    corrections = _corrections(nesterov, b1=b1, b2=b2)

    def step_scalars(count):
        scalars = corrections(count)
        b2t = b2 ** count
        rho = rho_inf - 2 * count * b2t / (1 - b2t)
        rect = jnp.sqrt((rho - 4.0) * (rho - 2.0) * rho_inf
                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho))
        return {**scalars, "rect": rect, "rectify": rho >= threshold}

    def rule(g, mu, nu, *, bc1, bc2, rect, rectify, bc1_next=None):
        mu = _ema(g, mu, b1)
        nu = _ema_norm(g, nu, b2)
        m_hat = _mu_hat(g, mu, b1, bc1, bc1_next, nesterov)
        adaptive = rect.astype(m_hat.dtype) * m_hat / (jnp.sqrt(_debias(nu, bc2) + eps_root) + eps)
        return jnp.where(rectify, adaptive, m_hat), mu, nu

    return leafwise(rule, ScaleByAdamState, moments=(Moment("mu"), Moment("nu")),
                    step_scalars=step_scalars)


def scale_by_yogi(b1=0.9, b2=0.999, eps=1e-3, eps_root=0.0, initial_accumulator_value=1e-6
                  ) -> GradientTransformation:
    """Rescales updates by Yogi: an additive, sign-controlled second-moment update.

    ``m ← b1·m + (1-b1)·g``, ``v ← v - (1-b2)·sign(v - |g|²)·|g|²``,
    ``u = m̂ / (√(v̂ + eps_root) + eps)`` with both moments bias-corrected; ``m`` and ``v`` start
    at ``initial_accumulator_value``.

    Defaults ``b1=0.9, b2=0.999, eps=1e-3, eps_root=0.0, initial_accumulator_value=1e-6``.

    Reference: Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018.

    Differences from Optax: none in the numbers. State: ``ScaleByAdamState(count, mu, nu)``.
    """
    _check_betas(b1=b1, b2=b2)
    _check_non_negative(eps=eps, eps_root=eps_root,
                        initial_accumulator_value=initial_accumulator_value)

    def rule(g, mu, nu, *, bc1, bc2):
        mu = _ema(g, mu, b1)
        g2 = plumbing.abs_sq(g)
        nu = nu - (1 - b2) * jnp.sign(nu - g2) * g2
        return _debias(mu, bc1) / (jnp.sqrt(_debias(nu, bc2) + eps_root) + eps), mu, nu

    return leafwise(rule, ScaleByAdamState,
                    moments=(Moment("mu", initial_accumulator_value),
                             Moment("nu", initial_accumulator_value)),
                    step_scalars=_corrections(b1=b1, b2=b2))


def scale_by_novograd(b1=0.9, b2=0.25, eps=1e-8, eps_root=0.0, weight_decay=0.0,
                      mu_dtype: Optional[Any] = None) -> GradientTransformation:
    """Rescales updates by NovoGrad: a per-layer (per-leaf) second moment.

    ``ν ← ‖g‖²`` on the first step, then ``ν ← b2·ν + (1-b2)·‖g‖²`` (one scalar per leaf);
    ``m ← b1·m + g/(√(ν + eps_root) + eps) + weight_decay·p`` (the first step sets ``m`` to that
    term); the update is ``m``. No bias correction. Needs ``params``.

    Defaults ``b1=0.9, b2=0.25, eps=1e-8, eps_root=0.0, weight_decay=0.0`` (the ``novograd``
    alias uses ``eps=1e-6``).

    Reference: Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments
    for Training of Deep Networks", 2019.

    Differences from Optax: none in the numbers; the update keeps the gradients' dtype (Optax
    returns ``m`` in ``mu_dtype``). State: ``ScaleByNovogradState(count, mu, nu)``.
    """
    checks.in_range("b1", b1, 0.0, 1.0)
    checks.in_range("b2", b2, 0.0, 1.0, high_open=False)
    _check_non_negative(eps=eps, eps_root=eps_root)
    mu_dtype = plumbing.canonicalize_dtype(mu_dtype)

    def rule(g, p, mu, nu, *, first):
        sq_norm = jnp.linalg.norm(g) ** 2  # ‖g‖², rounded as Optax rounds it
        nu = jnp.where(first, sq_norm, _ema(sq_norm, nu, b2))
        step = g / (jnp.sqrt(nu + eps_root) + eps) + weight_decay * p
        mu = jnp.where(first, step, b1 * mu + step).astype(mu.dtype)
        return mu, mu, nu

    moments = (Moment("mu", dtype=mu_dtype),
               Moment("nu", lambda p: jnp.zeros([], jnp.result_type(p))))  # one scalar per leaf
    return leafwise(rule, ScaleByNovogradState, moments, needs_params=True, elementwise=False,
                    step_scalars=lambda count: {"first": count == 1})
