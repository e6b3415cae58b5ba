"""Line searches: pick the step size along an update direction by evaluating the objective.

Both searches are ``GradientTransformationExtraArgs`` placed after the transformation that
produces a descent direction ``u`` (``chain(scale_by_lbfgs(), scale(-1.), <line search>)``).
Their ``update`` needs the keyword arguments ``value=`` (the objective at ``params``), ``grad=``
(its gradient there) and ``value_fn=`` (the objective); every other keyword argument must be
an argument of ``value_fn`` and is passed on to it (input data, for instance). The output is
``η·u`` for the step size ``η`` found, and the state keeps the value (and gradient) at the new
point, which ``value_and_grad_from_state`` reuses on the next iteration.

Numbers, state classes and field names are those of Optax 0.2.8.
"""

import functools
import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks
from gradx.base import (NO_PARAMS_MSG, GradientTransformationExtraArgs, Params, Updates,
                        safe_increment)
from gradx.plumbing import where, zeros_like
from gradx.tree_math import tree_vdot


# ------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------

def real_vdot(x: Any, y: Any) -> jax.Array:
    """``Re Σ conj(x)·y`` over all the leaves of two trees of the same structure, summed leaf by
    leaf in flattening order with the highest matmul precision (as ``optax.tree.vdot``)."""
    return jnp.real(tree_vdot(x, y))


def add_scaled(x: Any, scalar: jax.typing.ArrayLike, y: Any) -> Any:
    """``x + scalar·y`` leaf by leaf, keeping the dtype of ``x``'s leaves."""
    return jax.tree.map(lambda a, b: (a + scalar * b).astype(jnp.result_type(a)), x, y)


def value_dtype(params: Params):
    """The real dtype of the objective's value: the real part of the first params leaf's dtype."""
    return jnp.real(jnp.empty((), jax.tree.leaves(params)[0].dtype)).dtype


def _scalar_dtype(params: Params):
    """The dtype the searches compute step sizes and values in: the params' real dtype, at least
    float32 (a bfloat16 step size would lose the search's precision)."""
    return jnp.promote_types(value_dtype(params), jnp.float32)


def _cast_like(tree: Any, reference: Any) -> Any:
    return jax.tree.map(lambda t, r: jnp.asarray(t).astype(jnp.result_type(r)), tree, reference)


def _value_fn_kwargs(name: str, value_fn: Callable, extra_args: dict) -> dict:
    """The extra arguments meant for ``value_fn``: those named by its signature (all of them if
    it takes ``**kwargs``). Anything left over raises ``TypeError``, as in Optax."""
    parameters = inspect.signature(value_fn).parameters.values()
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(extra_args)
    names = {p.name for p in parameters}
    unused = sorted(k for k in extra_args if k not in names)
    if unused:
        raise TypeError(
            f"Unexpected keyword arguments passed to `{name}.update`. These arguments were not "
            f"consumed by `value_fn`: {unused}. Ensure that all extra keyword arguments are "
            "accepted by `value_fn`.")
    return dict(extra_args)


def _violation(error: jax.Array) -> jax.Array:
    """How much a criterion ``error <= 0`` is violated: ``max(error, 0)``, and ``inf`` for NaN."""
    error = jnp.maximum(error, 0.0)
    return jnp.where(jnp.isnan(error), jnp.inf, error)


# Optax's flags, printed verbatim by the zoom search with ``verbose=True`` (tests look for them).
FLAG_INTERVAL_NOT_FOUND = ("No interval satisfying curvature condition. Consider increasing "
                           "maximal possible stepsize of the linesearch.")
FLAG_INTERVAL_TOO_SMALL = "Length of searched interval has been reduced below threshold."
FLAG_CURVATURE_COND_NOT_SATISFIED = ("Returning stepsize with sufficient decrease but curvature "
                                     "condition not satisfied.")
FLAG_NO_STEPSIZE_FOUND = "Linesearch failed, no stepsize satisfying sufficient decrease found."
FLAG_NOT_A_DESCENT_DIRECTION = ("The linesearch failed because the provided direction is not a "
                                "descent direction. ")
_ZOOM_INFO = ("INFO: gradx.scale_by_zoom_linesearch:\nValue at current params: {value_init}\n"
              "Slope along update direction: {slope_init}\nStepsize reached: {stepsize}\n"
              "Decrease Error: {decrease_error}\nCurvature Error: {curvature_error}")


def _print_if(condition, message: str, **values) -> None:
    jax.lax.cond(condition, lambda: jax.debug.print(message, **values, ordered=True), lambda: None)


# ------------------------------------------------------------------------------------------------
# Backtracking (Armijo) line search
# ------------------------------------------------------------------------------------------------

class BacktrackingLinesearchInfo(NamedTuple):
    """Diagnostics of the last backtracking search."""
    num_linesearch_steps: jax.typing.ArrayLike
    decrease_error: jax.typing.ArrayLike


class ScaleByBacktrackingLinesearchState(NamedTuple):
    """State of ``scale_by_backtracking_linesearch``; ``grad`` is ``None`` unless
    ``store_grad=True``."""
    learning_rate: jax.typing.ArrayLike
    value: jax.typing.ArrayLike
    grad: Optional[Updates]
    info: BacktrackingLinesearchInfo


class BacktrackingLineSearchState(NamedTuple):
    """The carry of the backtracking loop."""
    learning_rate: jax.typing.ArrayLike
    new_value: jax.typing.ArrayLike
    new_grad: Updates
    decrease_error: jax.typing.ArrayLike
    iter_num: jax.typing.ArrayLike


def scale_by_backtracking_linesearch(
    max_backtracking_steps: int,
    slope_rtol: float = 1e-4,
    decrease_factor: float = 0.8,
    increase_factor: float = 1.5,
    max_learning_rate: float = 1.0,
    atol: float = 0.0,
    rtol: float = 0.0,
    store_grad: bool = False,
    verbose: bool = False,
) -> GradientTransformationExtraArgs:
    """Backtracking line search for sufficient decrease (Armijo criterion).

    Finds ``η`` with ``f(w + η·u) <= (1 + rtol)·f(w) + η·slope_rtol·<u, ∇f(w)> + atol``.
    The first guess is ``min(increase_factor·η_prev, max_learning_rate)`` (``η_prev`` starts at
    1); it is multiplied by ``decrease_factor`` until the criterion holds or
    ``max_backtracking_steps`` reductions were tried. A step whose value is NaN or infinite is
    never taken (``η = 0``). The output is ``η·u``.

    Defaults as Optax: ``slope_rtol=1e-4, decrease_factor=0.8, increase_factor=1.5,
    max_learning_rate=1.0, atol=rtol=0``. With ``store_grad=True`` the gradient at the accepted
    point is kept in the state for ``value_and_grad_from_state``.
    ``update(updates, state, params, *, value, grad, value_fn, **value_fn_kwargs)``.

    Reference: Nocedal & Wright, Numerical Optimization (1999), Algorithm 3.1; Vaswani et al.,
    Painless Stochastic Gradient (2019).

    Differs from Optax: hyperparameters are validated at construction; ``value_fn`` taking
    ``**kwargs`` receives every extra argument (Optax raises ``TypeError``); the gradient kept
    with ``store_grad`` is computed once after the search instead of linearizing at every trial;
    the step size and values are computed in at least float32, and the updates keep their dtype.
    """
    checks.non_negative("max_backtracking_steps", max_backtracking_steps)
    checks.in_range("slope_rtol", slope_rtol, 0.0, 1.0)
    checks.in_range("decrease_factor", decrease_factor, 0.0, 1.0, low_open=True)
    checks.positive("increase_factor", increase_factor)
    checks.positive("max_learning_rate", max_learning_rate)
    checks.non_negative("atol", atol)
    checks.non_negative("rtol", rtol)

    def init(params):
        dtype = value_dtype(params)
        return ScaleByBacktrackingLinesearchState(
            learning_rate=jnp.array(1.0, dtype),
            value=jnp.array(jnp.inf, dtype),
            grad=zeros_like(params) if store_grad else None,
            info=BacktrackingLinesearchInfo(num_linesearch_steps=jnp.asarray(0),
                                            decrease_error=jnp.array(jnp.inf, dtype)))

    def update(updates, state, params=None, *, value, grad, value_fn, **extra_args):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        objective = functools.partial(
            value_fn, **_value_fn_kwargs("scale_by_backtracking_linesearch", value_fn, extra_args))
        dtype = _scalar_dtype(params)
        value = jnp.asarray(value).astype(dtype)
        # Derivative of η -> f(w + η·u) at η = 0 (negative for a descent direction).
        slope = real_vdot(updates, jax.tree.map(jnp.conj, grad)).astype(dtype)

        def decrease_error(learning_rate, new_value):
            return _violation(new_value - (1.0 + rtol) * value - learning_rate * slope_rtol * slope)

        def keep_going(search):
            return ~(search.decrease_error <= atol) & (search.iter_num <= max_backtracking_steps)

        def try_step(search):
            # The first trial uses the guess itself, later ones shrink it.
            learning_rate = jnp.where(search.iter_num > 0,
                                      decrease_factor * search.learning_rate, search.learning_rate)
            new_value = jnp.asarray(objective(add_scaled(params, learning_rate, updates)))
            new_value = new_value.astype(dtype)
            # Hyperparameters given as arrays of another dtype (float64 under x64) must not
            # change the carry's dtypes: cast back, as Optax does.
            return _cast_like(search._replace(
                learning_rate=learning_rate, new_value=new_value,
                decrease_error=decrease_error(learning_rate, new_value),
                iter_num=search.iter_num + 1), search)

        guess = jnp.minimum(increase_factor * state.learning_rate, max_learning_rate).astype(dtype)
        search = BacktrackingLineSearchState(
            learning_rate=guess, new_value=value, new_grad=None,
            decrease_error=jnp.array(jnp.inf, dtype), iter_num=jnp.asarray(0))
        search = jax.lax.while_loop(keep_going, try_step, search)

        tried = search.learning_rate
        new_grad = None
        if store_grad:
            # Gradient at the last point tried: the accepted one, or the last trial on failure.
            new_grad = _cast_like(jax.grad(objective)(add_scaled(params, tried, updates)), grad)
        learning_rate = jnp.where(jnp.isinf(search.decrease_error), 0.0, tried)
        if verbose:
            _print_if(search.decrease_error > atol,
                      "INFO: gradx.scale_by_backtracking_linesearch:\nBacktracking linesearch "
                      "failed to find a stepsize ensuring sufficient decrease.\nValue at current "
                      "params: {value},\nSlope along update direction: {slope}\nStepsize: "
                      "{stepsize}\nDecrease Error: {decrease_error}",
                      value=value, slope=slope, stepsize=tried,
                      decrease_error=search.decrease_error)
            _print_if(jnp.isinf(search.decrease_error),
                      "Using a stepsize of 0 to avoid infinite or nan values.")
        new_updates = jax.tree.map(lambda u: (learning_rate * u).astype(u.dtype), updates)
        new_state = ScaleByBacktrackingLinesearchState(
            learning_rate=learning_rate, value=search.new_value, grad=new_grad,
            info=BacktrackingLinesearchInfo(num_linesearch_steps=search.iter_num,
                                            decrease_error=search.decrease_error))
        return new_updates, _cast_like(new_state, state)

    return GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------------------------------------------
# Zoom line search (strong Wolfe conditions)
# ------------------------------------------------------------------------------------------------

class ZoomLinesearchInfo(NamedTuple):
    """Diagnostics of the last zoom search: a positive error means that criterion was not met
    (a positive curvature error is benign, a positive decrease error is not)."""
    num_linesearch_steps: jax.typing.ArrayLike
    decrease_error: jax.typing.ArrayLike
    curvature_error: jax.typing.ArrayLike


class ScaleByZoomLinesearchState(NamedTuple):
    """State of ``scale_by_zoom_linesearch``: the step size, value and gradient found."""
    learning_rate: jax.typing.ArrayLike
    value: jax.typing.ArrayLike
    grad: Updates
    info: ZoomLinesearchInfo


class ZoomLinesearchState(NamedTuple):
    """The carry of the zoom search loop.

    ``low``/``high`` bound an interval holding an acceptable step; ``low`` is the end with the
    smaller value, not the smaller step. ``cubic_ref`` is the third point of the cubic
    interpolation. ``safe_*`` is the best point met with sufficient decrease, used if the
    curvature condition cannot be met.
    """
    count: jax.typing.ArrayLike
    stepsize: jax.typing.ArrayLike
    value: jax.typing.ArrayLike
    grad: Updates
    slope: jax.typing.ArrayLike
    decrease_error: jax.typing.ArrayLike
    curvature_error: jax.typing.ArrayLike
    interval_found: jax.typing.ArrayLike
    done: jax.typing.ArrayLike
    failed: jax.typing.ArrayLike
    low: jax.typing.ArrayLike
    value_low: jax.typing.ArrayLike
    slope_low: jax.typing.ArrayLike
    high: jax.typing.ArrayLike
    value_high: jax.typing.ArrayLike
    slope_high: jax.typing.ArrayLike
    cubic_ref: jax.typing.ArrayLike
    value_cubic_ref: jax.typing.ArrayLike
    safe_stepsize: jax.typing.ArrayLike
    safe_value: jax.typing.ArrayLike
    safe_grad: Updates


class _ZoomConfig(NamedTuple):
    max_steps: Any
    max_stepsize: Any
    tol: Any
    increase_factor: Any
    slope_rtol: Any
    curv_rtol: Any
    approx_dec_rtol: Any
    interval_threshold: Any
    verbose: bool


def _cubic_minimizer(a, fa, fpa, b, fb, c, fc):
    """The critical point of the cubic through ``(a, fa)``, ``(b, fb)``, ``(c, fc)`` with slope
    ``fpa`` at ``a`` (NaN when it has none, which the caller rejects)."""
    db, dc = b - a, c - a
    rb, rc = fb - fa - fpa * db, fc - fa - fpa * dc
    denom = (db * dc) ** 2 * (db - dc)
    cubic = (dc ** 2 * rb - db ** 2 * rc) / denom
    quadratic = (-(dc ** 3) * rb + db ** 3 * rc) / denom
    radical = quadratic * quadratic - 3.0 * cubic * fpa
    return a + (-quadratic + jnp.sqrt(radical)) / (3.0 * cubic)


def _quadratic_minimizer(a, fa, fpa, b, fb):
    """The critical point of the quadratic through ``(a, fa)``, ``(b, fb)`` with slope ``fpa``
    at ``a``."""
    db = b - a
    curvature = (fb - fa - fpa * db) / (db ** 2)
    return a - fpa / (2.0 * curvature)


class _ZoomSearch:
    """One zoom line search along ``params + η·updates``: Nocedal & Wright's Algorithm 3.5
    (find an interval holding an acceptable step, ``_bracket_step``) then 3.6 (shrink it by
    interpolation, ``_zoom_step``), one objective evaluation per loop step."""

    def __init__(self, config: _ZoomConfig, params, updates, value, grad, value_and_grad_fn,
                 stepsize_guess):
        self.config = config
        self.params, self.updates = params, updates
        self.dtype = _scalar_dtype(params)
        self.value_and_grad_fn = value_and_grad_fn
        self.guess = jnp.asarray(stepsize_guess).astype(self.dtype)
        self.value_init = jnp.asarray(value).astype(self.dtype)
        self.grad_init = grad
        self.slope_init = real_vdot(updates, grad).astype(self.dtype)

    # -- the objective along the line and the two criteria --------------------------------------

    def _evaluate(self, stepsize):
        """Value, gradient and slope ``d/dη f(w + η·u)`` at ``stepsize``."""
        value, grad = self.value_and_grad_fn(add_scaled(self.params, stepsize, self.updates))
        grad = _cast_like(grad, self.grad_init)
        slope = real_vdot(jax.tree.map(jnp.conj, grad), self.updates)
        return jnp.asarray(value).astype(self.dtype), grad, slope.astype(self.dtype)

    def _decrease_error(self, stepsize, value, slope):
        """Armijo: ``f(η) <= f(0) + c1·η·f'(0)`` (N&W 3.7a); or, once the value is within
        ``approx_dec_rtol·|f(0)|`` of ``f(0)``, Hager & Zhang's approximate Wolfe condition
        ``f'(η) <= (2·c1 - 1)·f'(0)`` (their eq. 23), whichever is less violated."""
        c = self.config
        error = value - self.value_init - c.slope_rtol * stepsize * self.slope_init
        if c.approx_dec_rtol is not None:
            approx_error = slope - (2 * c.slope_rtol - 1.0) * self.slope_init
            not_near = value - self.value_init - c.approx_dec_rtol * jnp.abs(self.value_init)
            error = jnp.minimum(jnp.maximum(approx_error, not_near), error)
        return _violation(error)

    def _curvature_error(self, slope):
        """Strong Wolfe curvature: ``|f'(η)| <= c2·|f'(0)|`` (N&W 3.7b)."""
        return _violation(jnp.abs(slope) - self.config.curv_rtol * jnp.abs(self.slope_init))

    # -- the loop ---------------------------------------------------------------------------------

    def initial_state(self) -> ZoomLinesearchState:
        zero, inf = jnp.zeros([], self.dtype), jnp.array(jnp.inf, self.dtype)
        false = jnp.asarray(False)
        v, s = self.value_init, self.slope_init
        return ZoomLinesearchState(
            count=jnp.asarray(0), stepsize=zero, value=v, grad=self.grad_init, slope=s,
            decrease_error=inf, curvature_error=inf,
            interval_found=false, done=false, failed=false,
            low=zero, value_low=v, slope_low=s, high=zero, value_high=v, slope_high=s,
            cubic_ref=zero, value_cubic_ref=v,
            safe_stepsize=zero, safe_value=v, safe_grad=self.grad_init)

    def keep_going(self, state: ZoomLinesearchState):
        return ~(state.done | state.failed)

    def step(self, state: ZoomLinesearchState) -> ZoomLinesearchState:
        # Both branches, and the loop's carry, keep the carry's dtypes whatever dtype the
        # hyperparameters have (float64 arrays under x64, as in Optax's own tests).
        new = jax.lax.cond(state.interval_found, lambda s: _cast_like(self._zoom_step(s), s),
                           lambda s: _cast_like(self._bracket_step(s), s), state)
        return jax.lax.cond(new.failed, self._fall_back_to_safe_step, lambda s: s, new)

    def run(self) -> ZoomLinesearchState:
        return jax.lax.while_loop(self.keep_going, self.step, self.initial_state())

    # -- phase 1: find an interval ----------------------------------------------------------------

    def _bracket_step(self, state: ZoomLinesearchState) -> ZoomLinesearchState:
        """Tries the guess, then steps growing by ``increase_factor`` (capped by the maximum),
        until a step is acceptable or an interval holding one is found."""
        c = self.config
        first = state.count == 0
        stepsize = jnp.where(first, self.guess, c.increase_factor * state.stepsize)
        at_max = jnp.asarray(False)
        if c.max_stepsize is not None:
            at_max = stepsize >= c.max_stepsize
            stepsize = jnp.minimum(stepsize, c.max_stepsize).astype(self.dtype)
        value, grad, slope = self._evaluate(stepsize)
        decrease_error = self._decrease_error(stepsize, value, slope)
        curvature_error = self._curvature_error(slope)
        acceptable = jnp.maximum(decrease_error, curvature_error) <= c.tol

        safe = where(decrease_error <= c.tol, (stepsize, value, grad),
                     (state.safe_stepsize, state.safe_value, state.safe_grad))
        # The new point ends the interval if it does not decrease enough (or no more than the
        # previous one); it starts it if the function is already rising there.
        high_is_new = (decrease_error > 0.0) | ((value >= state.value) & ~first)
        low_is_new = (slope >= 0.0) & ~high_is_new
        previous = (state.stepsize, state.value, state.slope)
        new = (stepsize, value, slope)
        low = where(low_is_new, new, previous)
        high = where(low_is_new, previous, new)
        interval_found = high_is_new | low_is_new | acceptable
        # At the maximal step with no interval, a larger step would be needed for curvature:
        # stop there (a step with sufficient decrease).
        stuck_at_max = at_max & ~interval_found
        done = acceptable | stuck_at_max
        if c.verbose:
            _print_if(stuck_at_max, _ZOOM_INFO + "\n" + FLAG_INTERVAL_NOT_FOUND + "\n"
                      + FLAG_CURVATURE_COND_NOT_SATISFIED, value_init=self.value_init,
                      slope_init=self.slope_init, stepsize=stepsize,
                      decrease_error=decrease_error, curvature_error=curvature_error)
        return state._replace(
            count=safe_increment(state.count), stepsize=stepsize, value=value, grad=grad,
            slope=slope, decrease_error=decrease_error, curvature_error=curvature_error,
            interval_found=interval_found, done=done,
            failed=(state.count + 1 >= c.max_steps) & ~done,
            low=low[0], value_low=low[1], slope_low=low[2],
            high=high[0], value_high=high[1], slope_high=high[2],
            cubic_ref=low[0], value_cubic_ref=low[1],
            safe_stepsize=safe[0], safe_value=safe[1], safe_grad=safe[2])

    # -- phase 2: zoom into the interval ----------------------------------------------------------

    def _interpolate(self, state: ZoomLinesearchState):
        """The next trial point: the cubic interpolant's minimizer if it lies well inside the
        interval (20% margins), else the quadratic's (10% margins), else the midpoint."""
        low, high = state.low, state.high
        width = jnp.abs(high - low)
        left, right = jnp.minimum(low, high), jnp.maximum(low, high)
        cubic = _cubic_minimizer(low, state.value_low, state.slope_low, high, state.value_high,
                                 state.cubic_ref, state.value_cubic_ref)
        quadratic = _quadratic_minimizer(low, state.value_low, state.slope_low, high,
                                         state.value_high)
        cubic_ok = (cubic > left + 0.2 * width) & (cubic < right - 0.2 * width)
        quadratic_ok = (quadratic > left + 0.1 * width) & (quadratic < right - 0.1 * width)
        return jnp.where(cubic_ok, cubic, jnp.where(quadratic_ok, quadratic, (low + high) / 2.0))

    def _zoom_step(self, state: ZoomLinesearchState) -> ZoomLinesearchState:
        """Evaluates an interpolated point and keeps the half of the interval that still holds an
        acceptable step."""
        c = self.config
        too_small = jnp.abs(state.high - state.low) <= c.interval_threshold
        middle = self._interpolate(state).astype(self.dtype)
        value, grad, slope = self._evaluate(middle)
        decrease_error = self._decrease_error(middle, value, slope)
        curvature_error = self._curvature_error(slope)
        done = jnp.maximum(decrease_error, curvature_error) <= c.tol

        # Keep the sufficient-decrease point with the smallest value as a fallback.
        better_safe = (decrease_error <= c.tol) & (value < state.safe_value)
        safe = where(better_safe, (middle, value, grad),
                     (state.safe_stepsize, state.safe_value, state.safe_grad))

        low = (state.low, state.value_low, state.slope_low)
        high = (state.high, state.value_high, state.slope_high)
        mid = (middle, value, slope)
        high_to_middle = (decrease_error > 0.0) | (value >= state.value_low)
        high_to_low = (slope * (state.high - state.low) >= 0.0) & ~high_to_middle
        new_high = where(high_to_middle, mid, where(high_to_low, low, high))
        new_low = where(high_to_middle, low, mid)
        # The end point that was dropped becomes the cubic's third point.
        cubic_ref = where(high_to_middle | high_to_low, high[:2], low[:2])

        # Give up at the step limit, or when the interval is tiny and a sufficient-decrease
        # step is already known (without one, keep shrinking: very steep functions need it).
        give_up = (state.count + 1 >= c.max_steps) | (too_small & (safe[0] > 0.0))
        return state._replace(
            count=safe_increment(state.count), stepsize=middle, value=value, grad=grad,
            slope=slope, decrease_error=decrease_error, curvature_error=curvature_error,
            done=done, failed=give_up & ~done,
            low=new_low[0], value_low=new_low[1], slope_low=new_low[2],
            high=new_high[0], value_high=new_high[1], slope_high=new_high[2],
            cubic_ref=cubic_ref[0], value_cubic_ref=cubic_ref[1],
            safe_stepsize=safe[0], safe_value=safe[1], safe_grad=safe[2])

    # -- on failure -------------------------------------------------------------------------------

    def _fall_back_to_safe_step(self, state: ZoomLinesearchState) -> ZoomLinesearchState:
        """Returns the best sufficient-decrease step met, if any; and the step 0 if the last
        point was outside the domain (NaN or infinite value). Otherwise the last point tried."""
        outside_domain = jnp.isinf(state.decrease_error)
        use_safe = (state.safe_stepsize > 0.0) | outside_domain
        stepsize, value, grad = where(use_safe,
                                      (state.safe_stepsize, state.safe_value, state.safe_grad),
                                      (state.stepsize, state.value, state.grad))
        if self.config.verbose:
            self._print_failure(state)
        return state._replace(stepsize=stepsize, value=value, grad=grad)

    def _print_failure(self, state: ZoomLinesearchState) -> None:
        """Optax's diagnostics of a failed search, with its flags."""
        jax.debug.print(_ZOOM_INFO, value_init=self.value_init, slope_init=self.slope_init,
                        stepsize=state.stepsize, decrease_error=state.decrease_error,
                        curvature_error=state.curvature_error, ordered=True)
        interval_length = jnp.abs(state.low - state.high)
        _print_if(interval_length <= self.config.interval_threshold,
                  FLAG_INTERVAL_TOO_SMALL + " Interval length: {interval_length}.",
                  interval_length=interval_length)
        _print_if(state.safe_stepsize > 0.0, FLAG_CURVATURE_COND_NOT_SATISFIED
                  + " Stepsize ensuring sufficient decrease: {safe_stepsize}.",
                  safe_stepsize=state.safe_stepsize)
        failed = state.safe_stepsize <= 0.0
        descent = self.slope_init < 0.0
        eps = jnp.finfo(jnp.float32).eps
        outside_domain = jnp.isinf(state.decrease_error)
        _print_if(failed, FLAG_NO_STEPSIZE_FOUND)
        _print_if(failed & ~descent, FLAG_NOT_A_DESCENT_DIRECTION + "The slope (={slope_init}) "
                  "at stepsize=0 should be negative", slope_init=self.slope_init)
        _print_if(failed & descent, "Consider augmenting the maximal number of linesearch "
                  "iterations.")
        _print_if(failed & descent & (state.stepsize < eps), "Computed stepsize (={stepsize}) "
                  "is below machine precision (={eps}), consider passing to higher precision "
                  "like x64, using jax.config.update('jax_enable_x64', True).",
                  stepsize=state.stepsize, eps=eps)
        _print_if(failed & descent & (jnp.abs(self.slope_init) > 1e16), "Very large absolute "
                  "slope at stepsize=0. (|slope|={abs_slope_init}). The objective is badly "
                  "conditioned. Consider reparameterizing objective (e.g., normalizing "
                  "parameters) or finding a better guess for the initial parameters for the "
                  "solver.", abs_slope_init=jnp.abs(self.slope_init))
        _print_if(failed & outside_domain, "Cannot even make a step without getting Inf or Nan. "
                  "The linesearch won't make a step and the optimizer is stuck.")
        _print_if(failed & ~outside_domain, "Making an unsafe step, not decreasing enough the "
                  "objective. Convergence of the solver is compromised as it does not reduce "
                  "values.")


def scale_by_zoom_linesearch(
    max_linesearch_steps: int,
    max_learning_rate: Optional[float] = None,
    tol: float = 0.0,
    increase_factor: float = 2.0,
    slope_rtol: float = 1e-4,
    curv_rtol: float = 0.9,
    approx_dec_rtol: Optional[float] = 1e-6,
    stepsize_precision: float = 1e-5,
    initial_guess_strategy: str = "keep",
    verbose: bool = False,
) -> GradientTransformationExtraArgs:
    """Zoom line search for the strong Wolfe conditions (sufficient decrease and small curvature).

    Finds ``η`` with ``f(w + η·u) <= f(w) + slope_rtol·η·<u, ∇f(w)> + tol`` (Armijo) and
    ``|<∇f(w + η·u), u>| <= curv_rtol·|<∇f(w), u>| + tol`` (curvature). Near a minimum, where
    ``f(w + η·u) <= f(w) + approx_dec_rtol·|f(w)|``, the Armijo test may be replaced by Hager and
    Zhang's approximate one ``<∇f(w + η·u), u> <= (2·slope_rtol - 1)·<∇f(w), u>``
    (``approx_dec_rtol=None`` turns that off). Phase 1 tries the initial guess (1 with
    ``initial_guess_strategy='one'``, the previous step size with ``'keep'``) and grows it by
    ``increase_factor`` (capped at ``max_learning_rate``) until an interval holding an acceptable
    step is found; phase 2 shrinks it by cubic/quadratic interpolation or bisection. After
    ``max_linesearch_steps`` evaluations, or once the interval is below ``stepsize_precision``,
    it returns the best step with sufficient decrease met (if any). The output is ``η·u``; the
    value and gradient at the new point are kept in the state for ``value_and_grad_from_state``.
    ``update(updates, state, params, *, value, grad, value_fn, **value_fn_kwargs)``.

    Defaults as Optax: ``max_learning_rate=None, tol=0, increase_factor=2, slope_rtol=1e-4,
    curv_rtol=0.9, approx_dec_rtol=1e-6, stepsize_precision=1e-5,
    initial_guess_strategy='keep'``. ``curv_rtol=jnp.inf`` drops the curvature condition.

    References: Nocedal & Wright, Numerical Optimization (1999), Algorithms 3.5 and 3.6;
    Hager & Zhang, Algorithm 851: CG_DESCENT (2006).

    ``verbose=True`` prints Optax's diagnostics and its flags (``gradx.linesearch.FLAG_*``, the
    same texts) when the search fails, naming gradx's function.

    Differs from Optax: hyperparameters (including ``initial_guess_strategy``) are validated at
    construction instead of at the first update; ``value_fn`` taking ``**kwargs`` receives every
    extra argument; step sizes and values are computed in at least float32 whatever dtype
    ``value`` is passed in; the updates keep their dtype.
    """
    checks.positive("max_linesearch_steps", max_linesearch_steps)
    checks.positive("max_learning_rate", max_learning_rate)
    checks.non_negative("tol", tol)
    checks.positive("increase_factor", increase_factor)
    checks.in_range("slope_rtol", slope_rtol, 0.0, 1.0)
    checks.positive("curv_rtol", curv_rtol)
    checks.non_negative("approx_dec_rtol", approx_dec_rtol)
    checks.non_negative("stepsize_precision", stepsize_precision)
    checks.one_of("initial_guess_strategy", initial_guess_strategy, ("one", "keep"))
    config = _ZoomConfig(max_steps=max_linesearch_steps, max_stepsize=max_learning_rate, tol=tol,
                         increase_factor=increase_factor, slope_rtol=slope_rtol,
                         curv_rtol=curv_rtol, approx_dec_rtol=approx_dec_rtol,
                         interval_threshold=stepsize_precision, verbose=verbose)

    def init(params):
        dtype = value_dtype(params)
        return ScaleByZoomLinesearchState(
            learning_rate=jnp.asarray(1.0, dtype),
            value=jnp.asarray(jnp.inf, dtype),
            grad=zeros_like(params),
            info=ZoomLinesearchInfo(num_linesearch_steps=jnp.asarray(0),
                                    decrease_error=jnp.asarray(jnp.inf),
                                    curvature_error=jnp.asarray(jnp.inf)))

    def update(updates, state, params=None, *, value, grad, value_fn, **extra_args):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        fn_kwargs = _value_fn_kwargs("scale_by_zoom_linesearch", value_fn, extra_args)
        value_and_grad_fn = jax.value_and_grad(functools.partial(value_fn, **fn_kwargs))
        guess = 1.0 if initial_guess_strategy == "one" else state.learning_rate
        search = _ZoomSearch(config, params, updates, value, grad, value_and_grad_fn, guess)
        final = search.run()
        new_updates = jax.tree.map(lambda u: (final.stepsize * u).astype(u.dtype), updates)
        new_state = ScaleByZoomLinesearchState(
            learning_rate=final.stepsize, value=final.value, grad=final.grad,
            info=ZoomLinesearchInfo(num_linesearch_steps=final.count,
                                    decrease_error=final.decrease_error,
                                    curvature_error=final.curvature_error))
        return new_updates, _cast_like(new_state, state)

    return GradientTransformationExtraArgs(init, update)


__all__ = [
    "scale_by_backtracking_linesearch", "ScaleByBacktrackingLinesearchState",
    "BacktrackingLinesearchInfo", "scale_by_zoom_linesearch", "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
]
