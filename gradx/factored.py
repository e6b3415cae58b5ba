"""Memory-saving second moments: Adafactor's factored RMS and SM3's per-axis accumulators.

Both keep, for each leaf, buffers that are *not* shaped like the leaf (row and column
statistics; one accumulator per axis): per-leaf rules built with ``gradx.leafwise``, whose
``Moment`` initialisers are functions of the parameter leaf.
"""

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gradx import checks
from gradx.base import GradientTransformation, Updates
from gradx.leafwise import Moment, leafwise
from gradx.clipping import rms_clipped
from gradx.plumbing import abs_sq, filled_like, separate


# --------------------------------------------------------------------------------------------
# Adafactor's factored second moment.


def _decay_rate_pow(i, exponent=0.8) -> jax.Array:
    """Adafactor's second-moment decay ``β_t = 1 - (i + 1)^(-exponent)`` at step ``i`` (from 0).

    Computed in the default float dtype (float64 under x64): Optax computes it in float32,
    which loses ~1e-9 relative precision on float64 parameters.
    """
    t = jnp.asarray(i + 1, jax.dtypes.canonicalize_dtype(jnp.float64))
    return 1.0 - t ** (-exponent)


def _factored_dims(shape, factored: bool, min_dim_size_to_factor: int) -> Optional[tuple[int, int]]:
    """The (second largest, largest) axes to factor over, or ``None`` to keep a full moment.

    A leaf is factored when it has at least 2 axes and its second largest axis has at least
    ``min_dim_size_to_factor`` elements; ties keep the earlier axis first.
    """
    if not factored or len(shape) < 2:
        return None
    order = np.argsort(shape, kind="stable")
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def _by_full_moment(g, v, power):
    """The update of a leaf that is not factored: ``g · V^power`` (``power = -0.5``, an input so
    that a recomputation from ``separate`` inputs has its own: XLA writes a broadcast constant
    that two reductions share to memory)."""
    return g * v ** power


def _by_factors(g, row_factor, col_factor):
    """The update of a factored leaf: ``g`` times the broadcast factors of ``1 / √V̂``."""
    return g * row_factor * col_factor


class FactoredState(NamedTuple):
    """Overall state of the gradient transformation."""

    count: jax.Array  # number of update steps.
    v_row: Updates  # factored leaves: statistics with the largest axis reduced; else shape (1,).
    v_col: Updates  # factored leaves: statistics with the second largest axis reduced.
    v: Updates  # leaves that are not factored: full second moment; else shape (1,).


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate=0.8,
    step_offset=0,
    min_dim_size_to_factor: int = 128,
    epsilon=1e-30,
    decay_rate_fn: Callable = _decay_rate_pow,
    clipping_threshold: Optional[float] = None,
) -> GradientTransformation:
    """Adafactor scaling: divide by the root of a factored estimate of the squared gradients.

    ``β = decay_rate_fn(c - step_offset, decay_rate)`` with ``c`` the step from 0 (by default
    ``β = 1 - (c - step_offset + 1)^-decay_rate``, so ``β = 0`` on the first step). With
    ``G = |g|² + epsilon``:

    * a factored leaf (>= 2 axes, second largest axis ``k`` >= ``min_dim_size_to_factor``; ``l``
      the largest): ``R ← β·R + (1-β)·mean_l(G)``, ``C ← β·C + (1-β)·mean_k(G)``,
      ``V̂ = R ⊗ C / mean_k(R)`` and ``u = g / √V̂``;
    * any other leaf: ``V ← β·V + (1-β)·G`` and ``u = g / √V``.

    With ``clipping_threshold`` set, ``u`` is then clipped to RMS ``clipping_threshold`` per leaf,
    exactly as a following ``clip_by_block_rms(clipping_threshold)`` would, but in the same
    pass: a separate clip makes XLA write every leaf's ``u`` to memory for its reduction.

    Defaults: ``factored=True, decay_rate=0.8, step_offset=0, min_dim_size_to_factor=128,
    epsilon=1e-30, clipping_threshold=None``. State ``FactoredState(count, v_row, v_col, v)``;
    unused slots hold zeros of shape (1,). Params are required (as in Optax), though only their
    structure is used.

    Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
    Cost", ICML 2018, Algorithm 4; Zhai et al., "Scaling Vision Transformers", 2021 (capped
    ``decay_rate_fn``).

    Differs from Optax: the default ``β`` is computed in the default float dtype, not float32,
    so it is exact under x64 (float64 params get float64-accurate updates); ``decay_rate < 0``,
    ``epsilon < 0``, ``min_dim_size_to_factor < 0`` and ``clipping_threshold < 0`` raise
    ValueError; ``clipping_threshold`` is gradx's (Optax chains ``clip_by_block_rms``).
    """
    checks.non_negative("decay_rate", decay_rate)
    checks.non_negative("epsilon", epsilon)
    checks.non_negative("min_dim_size_to_factor", min_dim_size_to_factor)
    if clipping_threshold is not None:
        checks.non_negative("clipping_threshold", clipping_threshold)

    def init_stat(axis):
        """Zeros for the statistics of a factored leaf with axis ``dims[axis]`` reduced
        (``axis=None``: the full moment of a leaf that is not factored); shape (1,) if unused."""

        def init(p):
            dims = _factored_dims(p.shape, factored, min_dim_size_to_factor)
            if (dims is None) != (axis is None):
                return jnp.zeros((1,), p.dtype)
            return filled_like(p, 0, drop_axes=() if axis is None else (dims[axis],))

        return init

    moments = (Moment("v_row", init_stat(1)), Moment("v_col", init_stat(0)),
               Moment("v", init_stat(None)))

    def rule(g, _, v_row, v_col, v, *, beta):
        dims = _factored_dims(g.shape, factored, min_dim_size_to_factor)
        if dims is None:
            v = (beta * v + (1 - beta) * (abs_sq(g) + epsilon)).astype(v.dtype)
            direction, stats = _by_full_moment, (v, jnp.asarray(-0.5))
        else:
            small, large = dims
            # The column reduction reads separate nodes, so XLA squares g inside each reduction
            # rather than writing g² + ε to memory for the two.
            g_again, epsilon_again = separate(g, jnp.asarray(epsilon))
            row_mean = jnp.mean(abs_sq(g) + epsilon, axis=large)
            col_mean = jnp.mean(abs_sq(g_again) + epsilon_again, axis=small)
            v_row = (beta * v_row + (1 - beta) * row_mean).astype(v_row.dtype)
            v_col = (beta * v_col + (1 - beta) * col_mean).astype(v_col.dtype)
            # V̂ = R ⊗ C / mean(R): R lacks the largest axis, so `small` shifts if it came after it.
            r_mean = jnp.mean(v_row, axis=small - (small > large), keepdims=True)
            direction = _by_factors
            stats = (jnp.expand_dims((v_row / r_mean) ** -0.5, large),
                     jnp.expand_dims(v_col ** -0.5, small))
        u = direction(g, *stats)
        if clipping_threshold is not None:
            # The RMS is taken of the same values recomputed from separate nodes (the gradient
            # and the moment or its small factors): u is then never written to memory.
            u = rms_clipped(u, clipping_threshold, rms_of=direction(*separate(g, *stats)))
        return u, v_row, v_col, v

    def step_scalars(count):
        return {"beta": decay_rate_fn(count - 1 - step_offset, decay_rate)}

    # Params are required, as in Optax, though the rule does not read them.
    return leafwise(rule, FactoredState, moments, step_scalars, needs_params=True,
                    elementwise=False)


# --------------------------------------------------------------------------------------------
# SM3.


class ScaleBySM3State(NamedTuple):
    """State for the SM3 algorithm."""

    mu: Updates  # per leaf: a list of per-axis accumulators (one accumulator if ndim < 2)
    nu: Updates


def scale_by_sm3(b1=0.9, b2=1.0, eps=1e-8) -> GradientTransformation:
    """SM3 scaling: Adagrad with one max-accumulator per axis instead of one per element.

    For a leaf with ``k >= 2`` axes and per-axis accumulators ``μ_1..μ_k``::

        A = c·g² + b2·min_i μ_i (broadcast)      c = 1 if b2 == 1 (a plain sum) else 1 - b2
        μ_i ← max of A over every axis but i
        û = g / √(A + eps) where A > 0, else 0
        ν ← (1 - b1)·û + b1·ν                    (the output)

    Leaves with fewer than 2 axes keep a single accumulator shaped like the leaf
    (``A = c·g² + b2·A``, ``μ = [A]``).

    Defaults: ``b1=0.9, b2=1.0, eps=1e-8``. State ``ScaleBySM3State(mu, nu)``.

    Reference: Anil et al., "Memory-Efficient Adaptive Optimization", NeurIPS 2019 (SM3-II).

    Differs from Optax: 0-d (scalar) leaves are accepted and treated like 1-d ones (one
    accumulator, here 0-d); Optax has no accumulator for them and raises IndexError.
    ``b1`` outside [0, 1), ``b2`` outside [0, 1] and ``eps < 0`` raise ValueError. Complex
    params are rejected, as in Optax.
    """
    checks.in_range("b1", b1, 0.0, 1.0)
    checks.in_range("b2", b2, 0.0, 1.0, high_open=False)
    checks.non_negative("eps", eps)

    def init_accumulators(p):
        if jnp.issubdtype(p.dtype, jnp.complexfloating):
            raise ValueError("scale_by_sm3 does not support complex parameters.")
        if p.ndim < 2:
            return [filled_like(p, 0)]
        return [filled_like(p, 0, drop_axes=[j for j in range(p.ndim) if j != i])
                for i in range(p.ndim)]

    def rule(g, mu, nu):
        gain = jnp.where(jnp.asarray(b2) == 1, 1.0, 1 - b2)
        if g.ndim < 2:
            acc = gain * abs_sq(g) + b2 * mu[0]
            mu = [acc]
        else:
            axes = range(g.ndim)
            along = [jnp.reshape(m, [-1 if j == i else 1 for j in axes]) for i, m in zip(axes, mu)]
            acc = gain * abs_sq(g) + b2 * functools.reduce(jnp.minimum, along)
            mu = [jnp.max(acc, axis=tuple(j for j in axes if j != i)) for i in axes]
        u = jnp.where(acc > 0, jax.lax.rsqrt(acc + eps), 0.0) * g
        nu = (1 - b1) * u + b1 * nu
        return nu, mu, nu

    return leafwise(rule, ScaleBySM3State, (Moment("mu", init_accumulators), Moment("nu")),
                    elementwise=False)


__all__ = ["FactoredState", "scale_by_factored_rms", "ScaleBySM3State", "scale_by_sm3"]
