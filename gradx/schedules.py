"""Schedules: pure functions from the step count to a hyperparameter value.

A schedule is called with ``count``, the number of updates already made (0 on the first update),
and returns the value to use for this update. Every schedule here is a composition of ``jnp``
operations, so it runs under ``jit``, ``vmap`` and ``grad`` and on arrays of counts.

The fourteen Optax 0.2.8 schedules keep Optax's names, arguments and values. Where they differ:

* **float64 under x64.** An integer count (the optimizer's int32 ``count``, or a Python int of
  any size) is turned into the default float dtype *before* any arithmetic, so with
  ``jax_enable_x64`` every schedule computes and returns float64. Optax divides the int32 count
  and returns float32 from ``polynomial_schedule``, ``linear_schedule``, ``exponential_decay``,
  ``warmup_*`` and ``sgdr_schedule`` (errors about 1e-8), and computes the interpolation
  fraction of ``piecewise_interpolate_schedule`` and the one-cycle schedules in float32
  (0.69999999 for 0.7). A float count keeps its dtype; other inputs promote as usual.
* **No cancellation near the end of a decay.** The fractions of a segment covered and still to
  cover are each formed with one rounding (``(T - k)/T`` rather than ``1 - k/T``), the cosine
  factor ``(1 + cos(pi x))/2`` is evaluated as ``sin(pi (1 - x)/2)**2`` and a linear piece as
  ``start * left + end * done``. The values are the same functions; in float32 they agree with
  Optax to Optax's rounding error, and are accurate to a few ulps where Optax's lose digits
  (the last steps of a cosine decay to zero).
* ``join_schedules`` checks ``len(boundaries) == len(schedules) - 1`` (Optax silently drops the
  extra ones) and ``sgdr_schedule`` rejects an empty list at construction (Optax raises
  ``IndexError`` on the first call).
* The piecewise-interpolated schedules give ``init_value`` for a negative count (Optax gives 0).

As Optax's ``optax.schedules``, this module also exports ``inject_hyperparams`` and its state
classes and ``StatefulSchedule`` (defined in ``gradx.hyperparams`` and ``gradx.base``).

Added schedules that Optax lacks: ``warmup`` (a linear warmup in front of any schedule),
``warmup_stable_decay_schedule`` (alias ``wsd_schedule``), ``warmup_linear_decay_schedule``
(linear warmup then linear decay, the BERT fine-tuning schedule) and ``inverse_sqrt_schedule``.
"""

from typing import Callable, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp

from gradx import checks
from gradx.base import Schedule, StatefulSchedule
# Optax's optax.schedules also holds inject_hyperparams; gradx.hyperparams needs only layer 1.
from gradx.hyperparams import (InjectHyperparamsState, InjectStatefulHyperparamsState,
                               WrappedSchedule, inject_hyperparams, inject_stateful_hyperparams)

__all__ = [
    "StatefulSchedule", "WrappedSchedule", "InjectHyperparamsState", "InjectStatefulHyperparamsState",
    "inject_hyperparams", "inject_stateful_hyperparams",
    "constant_schedule", "polynomial_schedule", "linear_schedule", "piecewise_constant_schedule",
    "exponential_decay", "cosine_decay_schedule", "piecewise_interpolate_schedule",
    "linear_onecycle_schedule", "cosine_onecycle_schedule", "warmup_constant_schedule",
    "warmup_cosine_decay_schedule", "warmup_exponential_decay_schedule", "sgdr_schedule",
    "join_schedules", "warmup", "warmup_stable_decay_schedule", "wsd_schedule",
    "warmup_linear_decay_schedule", "inverse_sqrt_schedule",
]


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------

def _float_count(count) -> jax.Array:
    """``count`` as a float array: an integer count becomes the default float dtype (float32, or
    float64 under x64), weakly typed as Optax's schedules are (so a value of the schedule takes
    the dtype of what it multiplies: bfloat16 params stay bfloat16); a Python int of any size is
    converted without going through int32."""
    if isinstance(count, int):
        return jnp.asarray(float(count))
    count = jnp.asarray(count)
    if jnp.issubdtype(count.dtype, jnp.floating):
        return count
    return count + 0.0  # int -> weakly typed default float, exactly for counts below 2**24


def _steps(steps):
    """A Python-int number of steps as a float, so that sizes beyond int32 never overflow."""
    return float(steps) if isinstance(steps, int) else steps


def _constant(value) -> Schedule:
    """``value`` itself at every count, as Optax's constant schedules."""
    return lambda count: value


def _linear(start, end, done, left):
    """Linear interpolation ``start + (end - start)·done``, written as ``start·left + end·done``
    (``left = 1 - done``) so that neither end loses digits."""
    return start * left + end * done


def _cosine(start, end, done, left):
    """Cosine interpolation ``end + (start - end)·(1 + cos(π·done))/2``; the factor is evaluated
    as ``sin(π·left/2)²``, exact near ``done = 1`` where ``1 + cos`` cancels."""
    del done
    return end + (start - end) * jnp.sin(0.5 * jnp.pi * left) ** 2


def _sqrt(start, end, done, left):
    """Square-root decay ``end + (start - end)·(1 - √done)``; ``1 - √done`` is evaluated as
    ``left / (1 + √done)``."""
    return end + (start - end) * left / (1.0 + jnp.sqrt(done))


_SHAPES = {"linear": _linear, "cosine": _cosine, "sqrt": _sqrt}


def _interpolate(count, knots: Sequence, values: Sequence, shapes: Sequence[Callable]):
    """Piecewise interpolation through the points ``(knots[i], values[i])``.

    ``knots`` ascend from 0; segment ``i`` (``knots[i] <= count < knots[i+1]``) goes from
    ``values[i]`` to ``values[i+1]`` with ``shapes[i]``; the value is ``values[-1]`` from the last
    knot on and ``values[0]`` before the first. A segment of length 0 is never active.
    """
    c = _float_count(count)
    value = values[-1] + jnp.zeros_like(c)
    for i in reversed(range(len(knots) - 1)):
        begin, end = _steps(knots[i]), _steps(knots[i + 1])
        size = max(end - begin, 1)
        done = jnp.clip((c - begin) / size, 0.0, 1.0)
        left = jnp.clip((end - c) / size, 0.0, 1.0)
        value = jnp.where(c < end, shapes[i](values[i], values[i + 1], done, left), value)
    return value


def _sorted_scales(name: str, boundaries_and_scales: Optional[dict]):
    """``(boundaries, scales)`` sorted by boundary; a negative scale raises ``ValueError``."""
    if not boundaries_and_scales:
        return (), ()
    if not all(scale >= 0.0 for scale in boundaries_and_scales.values()):
        raise ValueError(f"{name} must have non-negative scales, got "
                         f"{name}={boundaries_and_scales!r}.")
    boundaries, scales = zip(*sorted(boundaries_and_scales.items()))
    return boundaries, scales


def _check_decay_after_warmup(warmup_steps, decay_steps) -> None:
    if not decay_steps > warmup_steps:
        raise ValueError(
            "decay_steps must be > warmup_steps (decay_steps is the whole length, warmup "
            f"included), got decay_steps={decay_steps!r}, warmup_steps={warmup_steps!r}.")


# ----------------------------------------------------------------------------------------------
# Optax's schedules
# ----------------------------------------------------------------------------------------------

def constant_schedule(value) -> Schedule:
    """A constant schedule: ``value`` itself at every step (as Optax)."""
    return _constant(value)


def polynomial_schedule(init_value, end_value, power, transition_steps: int,
                        transition_begin: int = 0) -> Schedule:
    """Polynomial transition from ``init_value`` to ``end_value``.

    ``k = clip(count - transition_begin, 0, T)``; value ``(init - end)·((T - k)/T)^power + end``
    (for ``power=1``: ``init·(T - k)/T + end·k/T``) with ``T = transition_steps``: ``init`` before ``transition_begin``, ``end`` from
    ``transition_begin + T`` on. ``T <= 0`` gives the constant ``init_value``; a negative
    ``transition_begin`` counts as 0 (both as in Optax, which logs them).
    """
    if transition_steps <= 0:
        return _constant(init_value)
    begin = _steps(max(transition_begin, 0))
    total = _steps(transition_steps)

    def schedule(count):
        elapsed = jnp.clip(_float_count(count) - begin, 0.0, total)
        left = (total - elapsed) / total
        if isinstance(power, int) and power == 1:  # exact at both ends, warmups included
            return _linear(init_value, end_value, elapsed / total, left)
        return (init_value - end_value) * left ** power + end_value

    return schedule


def linear_schedule(init_value, end_value, transition_steps: int,
                    transition_begin: int = 0) -> Schedule:
    """Linear transition from ``init_value`` to ``end_value``: ``polynomial_schedule`` with
    ``power=1``, evaluated as ``init·(T - k)/T + end·k/T``.

    Differs from Optax, deliberately: Optax evaluates ``(init - end)·(1 - k/T) + end``, whose
    ``1 - k/T`` cancels near the end of the transition: in float32 its values are off by up to
    7e-5 relative (``linear_schedule(1e-3, 0, 1000)``, the last steps), where gradx's are within
    2e-7 of the exact value. So the two differ by Optax's error, ~1e-6 on a typical step; the
    same holds for every schedule built on it (warmups, ``join_schedules`` of linear pieces).
    """
    return polynomial_schedule(init_value, end_value, 1, transition_steps, transition_begin)


def piecewise_constant_schedule(init_value, boundaries_and_scales: Optional[dict] = None
                                ) -> Schedule:
    """``init_value`` times the product of the scales of every boundary ``b <= count``.

    ``boundaries_and_scales`` is ``{step: scale}``; scales must be non-negative (``ValueError``,
    as in Optax).
    """
    boundaries, scales = _sorted_scales("boundaries_and_scales", boundaries_and_scales)

    def schedule(count):
        c = _float_count(count)
        value = init_value + jnp.zeros_like(c)
        for boundary, scale in zip(boundaries, scales):
            value = jnp.where(c >= _steps(boundary), value * scale, value)
        return value

    return schedule


def exponential_decay(init_value, transition_steps: int, decay_rate: float,
                      transition_begin: int = 0, staircase: bool = False,
                      end_value=None) -> Schedule:
    """Exponential decay ``init·rate^((count - begin)/T)`` after ``transition_begin``.

    ``init_value`` until ``count > transition_begin``; with ``staircase`` the exponent is
    floored. ``end_value`` bounds the value from below when ``decay_rate < 1`` and from above
    otherwise. ``T = transition_steps <= 0`` or ``decay_rate == 0`` give the constant
    ``init_value``; a negative ``transition_begin`` counts as 0 (as in Optax).
    """
    if transition_steps <= 0 or decay_rate == 0:
        return _constant(init_value)
    begin = _steps(max(transition_begin, 0))
    total = _steps(transition_steps)
    bound = None if end_value is None else jnp.maximum if decay_rate < 1.0 else jnp.minimum

    def schedule(count):
        elapsed = _float_count(count) - begin
        exponent = elapsed / total
        if staircase:
            exponent = jnp.floor(exponent)
        value = jnp.where(elapsed <= 0, init_value, init_value * jnp.power(decay_rate, exponent))
        return value if bound is None else bound(value, end_value)

    return schedule


def cosine_decay_schedule(init_value, decay_steps: int, alpha=0.0, exponent=1.0) -> Schedule:
    """Cosine decay ``init·((1 - α)·((1 + cos(π·k/T))/2)^exponent + α)``, ``k = min(count, T)``.

    ``T = decay_steps`` must be positive (``ValueError``, as in Optax); the value stays at
    ``init·α`` after ``T`` steps. Defaults ``alpha=0``, ``exponent=1``.
    Reference: Loshchilov & Hutter, SGDR: Stochastic Gradient Descent with Warm Restarts, 2017.
    """
    checks.positive("decay_steps", decay_steps)
    total = _steps(decay_steps)

    def schedule(count):
        left = (total - jnp.minimum(_float_count(count), total)) / total
        cosine = jnp.sin(0.5 * jnp.pi * left) ** 2
        return init_value * ((1 - alpha) * cosine ** exponent + alpha)

    return schedule


def piecewise_interpolate_schedule(interpolate_type: str, init_value,
                                   boundaries_and_scales: Optional[dict] = None) -> Schedule:
    """Interpolates between knots at 0 and at each boundary, valued by cumulative products.

    Knot values: ``init_value``, then ``init_value`` times the scales of every boundary up to
    that one. Between knots ``'linear'`` or ``'cosine'`` interpolation; the last knot's value
    after it. Unknown ``interpolate_type`` or a negative scale: ``ValueError`` (as in Optax).
    """
    checks.one_of("interpolate_type", interpolate_type, ("linear", "cosine"))
    boundaries, scales = _sorted_scales("boundaries_and_scales", boundaries_and_scales)
    values = [init_value]
    for scale in scales:
        values.append(values[-1] * scale)
    knots = (0,) + tuple(boundaries)
    shapes = (_SHAPES[interpolate_type],) * len(boundaries)
    return lambda count: _interpolate(count, knots, values, shapes)


def linear_onecycle_schedule(transition_steps: int, peak_value, pct_start: float = 0.3,
                             pct_final: float = 0.85, div_factor: float = 25.0,
                             final_div_factor: float = 1e4) -> Schedule:
    """One-cycle schedule with three linear phases.

    Knots (``T = transition_steps``): ``0 → peak/div``, ``⌊pct_start·T⌋ → peak``,
    ``⌊pct_final·T⌋ → peak/div``, ``T → peak/(div·final_div)``. ``T <= 0``: ``ValueError``.
    Reference: Smith & Topin, Super-Convergence, 2017.
    """
    checks.positive("transition_steps", transition_steps)
    return piecewise_interpolate_schedule("linear", peak_value / div_factor, {
        int(pct_start * transition_steps): div_factor,
        int(pct_final * transition_steps): 1.0 / div_factor,
        transition_steps: 1.0 / final_div_factor,
    })


def cosine_onecycle_schedule(transition_steps: int, peak_value, pct_start: float = 0.3,
                             div_factor: float = 25.0, final_div_factor: float = 1e4) -> Schedule:
    """One-cycle schedule with cosine phases.

    Knots (``T = transition_steps``): ``0 → peak/div``, ``⌊pct_start·T⌋ → peak``,
    ``T → peak/(div·final_div)``. ``T <= 0``: ``ValueError``. PyTorch's ``OneCycleLR(total_steps=N)``
    is ``cosine_onecycle_schedule(N - 1, ...)``.
    Reference: Smith & Topin, Super-Convergence, 2017.
    """
    checks.positive("transition_steps", transition_steps)
    return piecewise_interpolate_schedule("cosine", peak_value / div_factor, {
        int(pct_start * transition_steps): div_factor,
        int(transition_steps): 1.0 / (div_factor * final_div_factor),
    })


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Runs ``schedules[0]`` until ``boundaries[0]``, then ``schedules[1]`` and so on; each
    later schedule sees the count relative to its boundary (``count - boundaries[i]``). The
    values are those of the pieces (gradx's linear pieces differ from Optax's by Optax's
    rounding error, see ``linear_schedule``).

    Differs from Optax: ``len(boundaries)`` must be ``len(schedules) - 1`` (``ValueError``).
    """
    schedules, boundaries = list(schedules), list(boundaries)
    if not schedules or len(boundaries) != len(schedules) - 1:
        raise ValueError(
            "join_schedules needs one boundary fewer than schedules, got "
            f"{len(schedules)} schedules and boundaries={boundaries!r}.")

    def schedule(count):
        value = schedules[0](count)
        for boundary, piece in zip(boundaries, schedules[1:]):
            value = jnp.where(count < boundary, value, piece(count - boundary))
        return value

    return schedule


def warmup_constant_schedule(init_value, peak_value, warmup_steps: int) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then
    ``peak_value``."""
    return linear_schedule(init_value, peak_value, warmup_steps)


def warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps: int, decay_steps: int,
                                 end_value=0.0, exponent=1.0) -> Schedule:
    """Linear warmup to ``peak_value``, then cosine decay to ``end_value``.

    **``decay_steps`` is the whole length, warmup included** (as in Optax): the cosine runs for
    ``decay_steps - warmup_steps`` steps on the count relative to the warmup's end, as
    ``cosine_decay_schedule(peak, decay_steps - warmup_steps, alpha=end/peak, exponent)``
    (``alpha = 0`` when ``peak == 0``). ``decay_steps <= warmup_steps`` or a negative
    ``warmup_steps``: ``ValueError`` (Optax returns a schedule that starts mid-cosine).
    """
    checks.non_negative("warmup_steps", warmup_steps)
    _check_decay_after_warmup(warmup_steps, decay_steps)
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    return join_schedules([
        linear_schedule(init_value, peak_value, warmup_steps),
        cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha, exponent),
    ], [warmup_steps])


def warmup_exponential_decay_schedule(init_value, peak_value, warmup_steps: int,
                                      transition_steps: int, decay_rate, transition_begin: int = 0,
                                      staircase: bool = False, end_value=None) -> Schedule:
    """Linear warmup to ``peak_value``, then ``exponential_decay(peak_value, ...)`` on the count
    relative to the warmup's end. A negative ``warmup_steps`` raises ``ValueError``."""
    checks.non_negative("warmup_steps", warmup_steps)
    return join_schedules([
        linear_schedule(init_value, peak_value, warmup_steps),
        exponential_decay(peak_value, transition_steps, decay_rate, transition_begin, staircase,
                          end_value),
    ], [warmup_steps])


def sgdr_schedule(cosine_kwargs: Iterable[dict]) -> Schedule:
    """SGD with warm restarts: one ``warmup_cosine_decay_schedule(**kwargs)`` cycle per dict,
    each lasting its ``decay_steps``.

    Differs from Optax: an empty list raises ``ValueError`` here (Optax: ``IndexError`` when
    called).
    Reference: Loshchilov & Hutter, SGDR: Stochastic Gradient Descent with Warm Restarts, 2017.
    """
    cycles = list(cosine_kwargs)
    if not cycles:
        raise ValueError(f"sgdr_schedule needs at least one cycle, got cosine_kwargs={cycles!r}.")
    boundaries, step = [], 0
    for kwargs in cycles:
        step += kwargs["decay_steps"]
        boundaries.append(step)
    return join_schedules([warmup_cosine_decay_schedule(**kwargs) for kwargs in cycles],
                          boundaries[:-1])


# ----------------------------------------------------------------------------------------------
# Schedules Optax lacks
# ----------------------------------------------------------------------------------------------

def warmup(schedule: Schedule, steps: int, init_value=0.0) -> Schedule:
    """Puts a linear warmup from ``init_value`` to ``schedule(0)`` in front of ``schedule``.

    ``count < steps``: ``init + (schedule(0) - init)·count/steps``; afterwards
    ``schedule(count - steps)``: the wrapped schedule starts when the warmup ends, as the later
    pieces of ``join_schedules`` do. So ``warmup(cosine_decay_schedule(peak, D - W, a), W, init)``
    is ``warmup_cosine_decay_schedule(init, peak, W, D, a·peak)``. Default ``init_value=0``.
    A negative ``steps`` raises ``ValueError``.
    """
    if not callable(schedule):
        raise TypeError(f"schedule must be a callable of the step count, got {schedule!r}.")
    checks.non_negative("steps", steps)

    def warmed(count):
        ramp = _interpolate(count, (0, steps), (init_value, schedule(jnp.zeros_like(count))),
                            (_linear,))
        return jnp.where(_float_count(count) < steps, ramp, schedule(count - steps))

    return warmed


def warmup_stable_decay_schedule(peak_value, warmup_steps: int, stable_steps: int,
                                 decay_steps: int, init_value=0.0, end_value=0.0,
                                 decay_shape: str = "linear") -> Schedule:
    """Warmup-stable-decay (WSD, "trapezoidal"): linear warmup, a long plateau, a short decay.

    Three phases of the given lengths (``W``, ``S``, ``D``; here ``decay_steps`` is the length of
    the decay phase alone, unlike in ``warmup_cosine_decay_schedule``):
    ``count < W``: ``init + (peak - init)·count/W``; ``W <= count < W + S``: ``peak``;
    ``W + S <= count < W + S + D``, with ``x = (count - W - S)/D``: ``end + (peak - end)·f(x)``,
    ``f`` = ``1 - x`` (``'linear'``), ``(1 + cos(π·x))/2`` (``'cosine'``) or ``1 - √x``
    (``'sqrt'``, the "1-sqrt" cooldown); ``end_value`` afterwards.
    Defaults ``init_value=0``, ``end_value=0``, ``decay_shape='linear'``. Negative steps, a
    negative ``peak_value`` or an unknown shape raise ``ValueError``.
    References: Hu et al., MiniCPM, 2024; Hägele et al., Scaling Laws and Compute-Optimal
    Training Beyond Fixed Training Durations, 2024.
    """
    for name, value in (("peak_value", peak_value), ("warmup_steps", warmup_steps),
                        ("stable_steps", stable_steps), ("decay_steps", decay_steps)):
        checks.non_negative(name, value)
    checks.one_of("decay_shape", decay_shape, tuple(_SHAPES))
    knots = (0, warmup_steps, warmup_steps + stable_steps,
             warmup_steps + stable_steps + decay_steps)
    values = (init_value, peak_value, peak_value, end_value)
    shapes = (_linear, _linear, _SHAPES[decay_shape])
    return lambda count: _interpolate(count, knots, values, shapes)


wsd_schedule = warmup_stable_decay_schedule


def warmup_linear_decay_schedule(init_value, peak_value, warmup_steps: int, decay_steps: int,
                                 end_value=0.0) -> Schedule:
    """Linear warmup to ``peak_value``, then linear decay to ``end_value`` (the BERT fine-tuning
    schedule, Hugging Face's ``get_linear_schedule_with_warmup``).

    Same arguments as ``warmup_cosine_decay_schedule``: **``decay_steps`` is the whole length,
    warmup included** (Hugging Face's ``num_training_steps``). ``count < W``:
    ``init + (peak - init)·count/W``; then ``peak + (end - peak)·(count - W)/(D - W)``;
    ``end_value`` from ``D`` on. Default ``end_value=0``. ``decay_steps <= warmup_steps``,
    negative ``warmup_steps`` or negative ``peak_value`` raise ``ValueError``.
    Reference: Devlin et al., BERT, 2019.
    """
    checks.non_negative("warmup_steps", warmup_steps)
    _check_decay_after_warmup(warmup_steps, decay_steps)
    return warmup_stable_decay_schedule(peak_value, warmup_steps, 0, decay_steps - warmup_steps,
                                        init_value, end_value, "linear")


def inverse_sqrt_schedule(peak_value, warmup_steps: int, init_value=0.0,
                          timescale: Optional[float] = None) -> Schedule:
    """Linear warmup to ``peak_value``, then inverse-square-root decay.

    ``count < W``: ``init + (peak - init)·count/W``; afterwards
    ``peak·sqrt(τ/(count - W + τ))`` with ``τ = timescale``, by default ``W``, which gives the
    Transformer / fairseq ``inverse_sqrt`` rule ``peak·sqrt(W/count)``. Default
    ``init_value=0``. Negative ``warmup_steps`` or ``peak_value``, or ``τ <= 0`` (``timescale``
    not given and ``warmup_steps=0``) raise ``ValueError``.
    Reference: Vaswani et al., Attention Is All You Need, 2017.
    """
    checks.non_negative("peak_value", peak_value)
    checks.non_negative("warmup_steps", warmup_steps)
    tau = warmup_steps if timescale is None else timescale
    if not tau > 0:
        raise ValueError(f"timescale must be > 0 (it defaults to warmup_steps), got "
                         f"timescale={timescale!r}, warmup_steps={warmup_steps!r}.")
    tau = _steps(tau)

    def decay(count):
        return peak_value * jnp.sqrt(tau / (_float_count(count) + tau))

    return warmup(decay, warmup_steps, init_value)
