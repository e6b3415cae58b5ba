"""Sign-based rules: the update's direction comes from the gradient's sign, not its magnitude.

``scale_by_sign`` (signSGD), ``scale_by_lion`` (Lion and its smooth/refined variants) and
``scale_by_rprop`` (resilient backpropagation), each a per-leaf rule built with
``gradx.leafwise``.
"""

from typing import Any, NamedTuple, Optional

import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.base import EmptyState, GradientTransformation
from gradx.leafwise import Moment, leafwise

__all__ = ["ScaleByLionState", "ScaleByRpropState", "scale_by_sign", "scale_by_lion",
           "scale_by_rprop"]


def scale_by_sign() -> GradientTransformation:
    """Replaces each update by its sign: ``u = sign(g)`` (``g/|g|`` for complex ``g``).

    Reference: Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems", 2018.
    Stateless (``EmptyState``), as Optax.
    """
    return leafwise(jnp.sign, EmptyState)


class ScaleByLionState(NamedTuple):
    """State of Lion: the step count and the momentum ``mu``."""

    count: Any  # int32 scalar
    mu: Any


_LION_MODES = ("hard", "smooth", "refined")


def scale_by_lion(b1=0.9, b2=0.99, mu_dtype: Optional[Any] = None, *, mode: str = "hard",
                  smooth_beta: float = 1.0) -> GradientTransformation:
    """Rescales updates by Lion (evolved sign momentum).

    ``x = (1-b1)·g + b1·m``; the update is ``sign(x)`` (``mode='hard'``), ``tanh(smooth_beta·x)``
    (``'smooth'``) or ``x`` where ``|x| < 1`` else ``sign(x)`` (``'refined'``); then
    ``m ← (1-b2)·g + b2·m`` (the momentum is updated *after* it is used, with its own decay).

    Defaults ``b1=0.9, b2=0.99, mode='hard', smooth_beta=1.0``; ``mu_dtype`` stores ``m`` in that
    dtype. ``b1=1`` (the sign of the momentum alone) is allowed.

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.

    Differences from Optax: an unknown ``mode`` raises at construction (Optax raises on the
    first update). With ``mode='hard'`` the sign goes through a bfloat16 buffer that orders it
    before the momentum's in-place update (same values), so a donated step does not copy the
    momentum as Optax's does. State: ``ScaleByLionState(count, mu)``.
    """
    checks.in_range("b1", b1, 0.0, 1.0, high_open=False)
    checks.in_range("b2", b2, 0.0, 1.0)
    checks.one_of("mode", mode, _LION_MODES)
    checks.positive("smooth_beta", smooth_beta)
    mu_dtype = plumbing.canonicalize_dtype(mu_dtype)
    direction = {
        "hard": jnp.sign,
        "smooth": lambda x: jnp.tanh(smooth_beta * x),
        "refined": lambda x: jnp.where(jnp.abs(x) < 1.0, x, jnp.sign(x)),
    }[mode]

    def rule(g, mu):
        x = (1.0 - b1) * g + b1 * mu
        new_mu = (1 - b2) * g + b2 * mu
        if mode == "hard" and not jnp.iscomplexobj(x) and x.size >= _ORDERED_SIGN_MIN_SIZE:
            return _sign_before_momentum(x, new_mu)
        return direction(x), new_mu

    return leafwise(rule, ScaleByLionState, moments=(Moment("mu", dtype=mu_dtype),))


#: Leaves from this size on get the ordered sign below; on smaller ones XLA's copy of ``mu`` is
#: cheap, while the extra kernel costs compile time (+60% for Lion on 750 small leaves).
_ORDERED_SIGN_MIN_SIZE = 1 << 16


def _sign_before_momentum(x, new_mu):
    """``(sign(x), new_mu)``, arranged so that a step with donated buffers does not copy ``mu``.

    The caller's parameter update reads the old momentum (through ``sign(x)``) while the new
    one overwrites it in place. XLA cannot order those two kernels, the parameter update being
    in the caller's ``apply_updates``, so it copies every leaf's momentum on every donated step
    (a 418 MiB temporary on the 110M-parameter benchmark, in Optax as in a plain rule). Here the
    sign is written once to a bfloat16 buffer (exact: its values are -1, ±0, 1 and NaN) and the
    new momentum depends on it through a select that never fires, since a sign is never
    infinite: XLA computes the sign first, and the parameter update reads the sign instead of
    the momentum. Values are unchanged; the price is 2 bytes per parameter written and read
    twice (elementwise, so it also holds in ``gradx.fused``'s buckets), in place of a 4-byte copy.
    Without donation there is no copy to save, and the step moves about 20% more bytes than
    Optax's: donate the params and state (``jax.jit(step, donate_argnums=...)``), as a large
    model should anyway.
    """
    sign = jnp.sign(x).astype(jnp.bfloat16)
    new_mu = jnp.where(jnp.isinf(sign), jnp.nan, new_mu)
    return sign.astype(x.dtype), new_mu


class ScaleByRpropState(NamedTuple):
    """State of Rprop: per-element step sizes and the last emitted update."""

    step_sizes: Any
    prev_updates: Any


def scale_by_rprop(learning_rate, eta_minus=0.5, eta_plus=1.2, min_step_size=1e-6,
                   max_step_size=50.0) -> GradientTransformation:
    """Rescales updates by Rprop: per-element step sizes adapted to sign agreement.

    With ``s = g_t·u_{t-1}`` (``u_{t-1}`` the previous update, 0 at the start), each step size
    becomes ``clip(step·eta_plus, min, max)`` where ``s > 0``, ``clip(step·eta_minus, min, max)``
    where ``s < 0`` and stays unchanged where ``s = 0``; the update is ``step·sign(g)``, or 0
    where ``s < 0`` (so the next step does not shrink the step size again). The alias
    ``rprop`` negates it.

    ``learning_rate`` is the initial step size of every element: a number or an array (also a
    traced one). Defaults ``eta_minus=0.5, eta_plus=1.2, min_step_size=1e-6,
    max_step_size=50.0``.

    Reference: Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation
    Learning: The RPROP Algorithm", 1993 (the variant without weight backtracking, as PyTorch).

    Differences from Optax 0.2.8 (a defect fix): Optax emits the update computed on the
    *previous* call (its first update is exactly 0 and every later one lags a step, upstream
    PR#1725); gradx emits the current step's update, which matches ``torch.optim.Rprop``. The
    state holds the same values as Optax's. Like Optax, and unlike PyTorch, an unchanged step
    size (``s = 0``, e.g. the first step) is not clipped. A schedule for ``learning_rate``
    raises ``TypeError``: Rprop adapts its own step sizes, so a schedule could only set the
    first one. State: ``ScaleByRpropState(step_sizes, prev_updates)``.
    """
    if callable(learning_rate):
        raise TypeError(
            "scale_by_rprop: learning_rate is the initial step size and must be a number or an "
            "array, not a schedule: Rprop adapts each step size itself after the first step, so "
            "a schedule would only ever be read once. Pass learning_rate=schedule(0) to start "
            "from the schedule's first value.")
    checks.positive("learning_rate", learning_rate)
    checks.in_range("eta_minus", eta_minus, 0.0, 1.0, low_open=True, high_open=False)
    checks.in_range("eta_plus", eta_plus, 1.0, float("inf"))
    checks.non_negative("min_step_size", min_step_size)
    checks.positive("max_step_size", max_step_size)

    def rule(g, step_size, prev_update):
        agreement = g * prev_update
        factor = jnp.where(agreement > 0, eta_plus, eta_minus)
        step_size = jnp.where(agreement == 0, step_size,
                              jnp.clip(step_size * factor, min_step_size, max_step_size))
        update = jnp.where(agreement < 0, jnp.zeros_like(g), step_size * jnp.sign(g))
        return update, step_size, update

    return leafwise(rule, ScaleByRpropState,
                    moments=(Moment("step_sizes", learning_rate), Moment("prev_updates")))
