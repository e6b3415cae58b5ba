"""Gradient accumulation: average (or sum) the gradients of k micro-batches and run the inner
optimizer once on the result.

Two faces over one micro-step rule (``_micro_step``):

* ``MultiSteps``: Optax's class, same state and numbers;
* ``accumulate_gradients``: the lean form for training loops: micro-batches weighted by their
  token count (``update(..., weight=n_tokens)``), non-finite micro-batches dropped and counted,
  the inner optimizer fed the float32 accumulator.

Memory and compute: the only full-size buffer either adds is the accumulator ``acc_grads``. The
inner optimizer runs only on the emitting micro-step, under ``lax.cond``; on the other
micro-steps it is not evaluated at all (Optax evaluates it on every mini-step and throws the
result away by multiplying it by 0, optax#472/#528, so an inner update that overflows to NaN
makes Optax's mini-step update NaN where gradx's is 0), so its step count, and any schedule
driven by it, advances once per optimizer step.
"""

from typing import Any, Callable, NamedTuple, Optional, Protocol, Union

import jax
import jax.numpy as jnp

from gradx import checks, plumbing, tree_use
from gradx.base import (GradientTransformation, GradientTransformationExtraArgs, safe_increment,
                        with_extra_args_support)
from gradx.hyperparams import register_readable_state
from gradx.wrappers import cond_update


class ShouldSkipUpdateFunction(Protocol):
    """``fn(updates, gradient_step, params) -> (bool scalar, skip_state)``: True rejects the
    mini-step; ``skip_state`` (any tree) is stored in ``MultiStepsState.skip_state``."""

    def __call__(self, updates: Any, gradient_step: jax.typing.ArrayLike, params: Optional[Any]
                 ) -> tuple[jax.typing.ArrayLike, Any]: ...


def skip_not_finite(updates: Any, gradient_step: jax.typing.ArrayLike, params: Optional[Any]
                    ) -> tuple[jax.Array, Any]:
    """Skips a mini-step whose gradients contain a NaN or an Inf.

    Returns ``(should_skip, {'should_skip', 'num_not_finite'})`` as Optax's; the count has the
    default integer dtype (int64 under x64), as Optax's.
    """
    del gradient_step, params
    counts = [jnp.sum(~jnp.isfinite(x)) for x in jax.tree.leaves(updates)]
    num_not_finite = sum(counts, jnp.zeros([], jnp.result_type(int)))
    should_skip = num_not_finite > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num_not_finite}


def skip_large_updates(updates: Any, gradient_step: jax.typing.ArrayLike, params: Optional[Any],
                       max_squared_norm: jax.typing.ArrayLike) -> tuple[jax.Array, Any]:
    """Skips a mini-step unless ``‖updates‖² < max_squared_norm`` (so NaN norms skip too).

    Returns ``(should_skip, {'should_skip', 'norm_squared'})`` as Optax's; the squared norm uses
    ``|x|²`` (correct for complex leaves, where Optax sums ``x**2``).
    """
    del gradient_step, params
    norm_sq = plumbing.squared_norm(updates)
    should_skip = jnp.logical_not(norm_sq < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


def _never_skip(updates, gradient_step, params):
    del updates, gradient_step, params
    return jnp.array(False, jnp.bool_), ()


def _every_k(every_k_schedule):
    """``every_k_schedule`` as a function of the optimizer step; an integer below 1 raises."""
    if callable(every_k_schedule):
        return every_k_schedule
    checks.positive("every_k_schedule", every_k_schedule)
    return lambda step: every_k_schedule


def _zero_accumulator(params, accumulator_dtype):
    """Zeros shaped like ``params``, in ``accumulator_dtype`` or, for ``None``, in float32 or the
    leaf's own dtype when wider (float64 under x64, complex kept complex)."""
    dtype = plumbing.canonicalize_dtype(accumulator_dtype)
    return jax.tree.map(lambda p: plumbing.filled_like(p, 0, dtype or jnp.promote_types(
        jnp.result_type(p), jnp.float32)), params)


def _micro_step(opt, grads, acc, weight, window_weight, window_end, inner_state, params,
                extra_args, use_mean, inner_sees_grads_dtype):
    """Adds one micro-batch to the accumulator and, at the end of a window that holds some
    weight, runs ``opt`` once on the accumulated gradient.

    ``W`` is the weight accumulated so far in the window and ``w`` this micro-batch's weight:
    the accumulator becomes the running weighted mean ``a + (g - a)·w / (W + w)`` (``MultiSteps``
    passes ``w = 1`` and ``W = n`` mini-steps: Optax's ``a + (g - a)/(n + 1)``, bit for bit), or the
    weighted sum ``a + w·g`` without ``use_mean``; each leaf keeps the accumulator's dtype.
    ``opt`` sees the accumulator cast to the gradients' dtypes (Optax's choice) or, without
    ``inner_sees_grads_dtype``, in its own dtype. At the window's end the accumulator and
    ``W`` are reset.

    Returns ``(updates in the gradients' dtypes, acc, W, emitted, inner_state)``.
    """
    new_weight = window_weight + weight
    if use_mean:
        divisor = jnp.where(new_weight > 0, new_weight, 1)
        acc = jax.tree.map(lambda g, a: (a + (g.astype(a.dtype) - a) * weight / divisor
                                         ).astype(a.dtype), grads, acc)
    else:
        acc = jax.tree.map(lambda g, a: (a + g.astype(a.dtype) * weight).astype(a.dtype),
                           grads, acc)
    emit = jnp.logical_and(window_end, new_weight > 0)
    inner_grads = (jax.tree.map(lambda a, g: a.astype(g.dtype), acc, grads)
                   if inner_sees_grads_dtype else acc)
    updates, inner_state = cond_update(emit, opt, inner_grads, inner_state, params, extra_args)
    updates = jax.tree.map(lambda u, g: u.astype(g.dtype), updates, grads)
    acc = jax.tree.map(lambda a: jnp.where(window_end, jnp.zeros_like(a), a), acc)
    new_weight = jnp.where(window_end, jnp.zeros_like(new_weight), new_weight)
    return updates, acc, new_weight, emit, inner_state


class MultiStepsState(NamedTuple):
    """``mini_step``: mini-steps accumulated since the last emit; ``gradient_step``: inner
    optimizer steps taken; ``inner_opt_state``; ``acc_grads``: the running mean (or sum);
    ``skip_state``: what ``should_skip_update_fn`` returned last."""

    mini_step: jax.typing.ArrayLike
    gradient_step: jax.typing.ArrayLike
    inner_opt_state: Any
    acc_grads: Any
    skip_state: Any = ()


class MultiSteps:
    """Accumulates gradients over ``k = every_k_schedule(gradient_step)`` mini-steps, then runs
    ``opt`` once on their mean (``use_grad_mean=True``) or sum.

    Mini-steps return zero updates; the k-th returns ``opt``'s update and resets the
    accumulator. The mean is kept as a running mean ``acc + (g - acc) / (n + 1)``. A mini-step
    that ``should_skip_update_fn`` rejects returns zeros and changes nothing but ``skip_state``.

    Same constructor, methods (``init``, ``update``, ``has_updated``,
    ``gradient_transformation``, ``inner_opt``), state and numbers as ``optax.MultiSteps``.
    Differs from Optax:

    - ``opt`` runs only on the emitting mini-step (``lax.cond``), not on every mini-step; its
      new state is cast to the old state's dtypes, so bf16/f32 states cannot break the cond.
    - an integer ``every_k_schedule`` below 1 raises ``ValueError`` (Optax divides by zero).
    - ``accumulator_dtype=None`` (the default) accumulates each leaf in ``float32`` or its own
      dtype when wider (float64 under x64, complex kept complex); Optax's ``float32`` default
      loses precision under x64 and drops imaginary parts.
    - a NaN or Inf gradient (without ``should_skip_update_fn=skip_not_finite``) reaches the
      inner optimizer at the window's emitting step, as in Optax, but stays in that window: the
      other mini-steps return zeros and the accumulator is reset to zeros after the emit. Optax
      multiplies by 0 instead (``emit·u``, ``(1 - emit)·acc``), so its mini-steps return NaN
      and its accumulator stays NaN for every later window.

    Examples:
      >>> opt = gradx.MultiSteps(gradx.sgd(learning_rate=1.0), every_k_schedule=2)
      >>> params = jnp.zeros(2)
      >>> state = opt.init(params)
      >>> for grads in [jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0])]:
      ...     updates, state = opt.update(grads, state, params)
      ...     print(updates, bool(opt.has_updated(state)))
      [0. 0.] False
      [-2. -3.] True
    """

    def __init__(self, opt: GradientTransformation,
                 every_k_schedule: Union[int, Callable[[jax.Array], jax.typing.ArrayLike]],
                 use_grad_mean: bool = True,
                 should_skip_update_fn: Optional[ShouldSkipUpdateFunction] = None,
                 accumulator_dtype: Optional[jax.typing.DTypeLike] = None):
        self._every_k_schedule = _every_k(every_k_schedule)
        self._opt = with_extra_args_support(opt)
        self._use_grad_mean = use_grad_mean
        self._should_skip_update_fn = should_skip_update_fn or _never_skip
        self._accumulator_dtype = accumulator_dtype
        # should_skip_update_fn is taken to reduce over the whole tree, as Optax's two do.
        self.tree_use = tree_use.TreeUse(
            tree_use.GLOBAL, "MultiSteps", inner=(opt,),
            rebuild=lambda convert, _: MultiSteps(convert(0, opt), every_k_schedule,
                                                  use_grad_mean, should_skip_update_fn,
                                                  accumulator_dtype).gradient_transformation())

    @property
    def inner_opt(self) -> GradientTransformationExtraArgs:
        return self._opt

    def init(self, params: Any) -> MultiStepsState:
        gradient_step = jnp.zeros([], jnp.int32)
        _, skip_state = self._should_skip_update_fn(plumbing.zeros_like(params), gradient_step,
                                                    params)
        return MultiStepsState(
            mini_step=jnp.zeros([], jnp.int32), gradient_step=gradient_step,
            inner_opt_state=self._opt.init(params),
            acc_grads=_zero_accumulator(params, self._accumulator_dtype),
            skip_state=skip_state)

    def update(self, updates: Any, state: MultiStepsState, params: Optional[Any] = None,
               **extra_args: Any) -> tuple[Any, MultiStepsState]:
        """Accumulates ``updates``; returns the inner update every k-th mini-step, else zeros."""
        k = self._every_k_schedule(state.gradient_step)
        should_skip, skip_state = self._should_skip_update_fn(updates, state.gradient_step, params)
        should_skip = jnp.asarray(should_skip)
        if (should_skip.dtype, should_skip.shape) != (jnp.bool_, ()):
            raise ValueError(
                "should_skip_update_fn must return a boolean scalar, got dtype "
                f"{should_skip.dtype} and shape {should_skip.shape}.")

        def accumulate(operands):
            grads, state = operands
            n = state.mini_step
            new_updates, acc, _, emit, inner_state = _micro_step(
                self._opt, grads, state.acc_grads, 1, n, n == k - 1, state.inner_opt_state,
                params, extra_args, self._use_grad_mean, inner_sees_grads_dtype=True)
            return new_updates, MultiStepsState(
                mini_step=safe_increment(n) % k,
                gradient_step=jnp.where(emit, safe_increment(state.gradient_step),
                                        state.gradient_step),
                inner_opt_state=inner_state, acc_grads=acc, skip_state=skip_state)

        out_shape = jax.eval_shape(lambda ops: accumulate(ops)[0], (updates, state))

        def skip(operands):
            _, state = operands
            return plumbing.zeros_shaped(out_shape), state._replace(skip_state=skip_state)

        return jax.lax.cond(should_skip, skip, accumulate, (updates, state))

    def has_updated(self, state: Union[MultiStepsState, Any]) -> jax.Array:
        """True right after a mini-step that emitted an inner update."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformationExtraArgs:
        return GradientTransformationExtraArgs(init=self.init, update=self.update)


class AccumulateGradientsState(NamedTuple):
    """``micro_step``: micro-batches seen in the current window (``0 ≤ micro_step < k``);
    ``optimizer_step``: accumulated gradients handed to ``inner`` (optimizer steps; an inner
    ``skip_bad_steps`` may still refuse one); ``skipped_micro_batches``:
    non-finite micro-batches dropped so far; ``window_weight``: the weight accumulated in the
    current window; ``acc_grads``: the running weighted mean (or sum); ``inner_state``."""

    micro_step: jax.Array
    optimizer_step: jax.Array
    skipped_micro_batches: jax.Array
    window_weight: jax.Array
    acc_grads: Any
    inner_state: Any


register_readable_state(AccumulateGradientsState,
                        ("micro_step", "optimizer_step", "skipped_micro_batches", "window_weight"))


def accumulate_gradients(inner: GradientTransformation,
                         every_k_schedule: Union[int, Callable[[jax.Array], jax.typing.ArrayLike]],
                         use_grad_mean: bool = True, skip_nonfinite: bool = False,
                         accumulator_dtype: Optional[jax.typing.DTypeLike] = None
                         ) -> GradientTransformationExtraArgs:
    """Gradient accumulation for training loops: every ``k = every_k_schedule(optimizer_step)``
    calls (one per micro-batch), runs ``inner`` once on the micro-batches' weighted mean.

    ``update(grads, state, params, weight=w)``: ``w`` is the micro-batch's weight (its token
    count, say; 1 when omitted, non-negative). The window of ``k`` micro-batches emits
    ``inner`` applied to ``Σ wᵢ gᵢ / Σ wᵢ`` (``Σ wᵢ gᵢ`` without ``use_grad_mean``), kept as a
    running weighted mean ``a ← a + (g - a)·w / (W + w)``; every other call returns zero
    updates. For a loss averaged over each micro-batch's tokens, token weights make the result
    the gradient of the loss averaged over every token of the window.

    - Memory: one full-size buffer, ``acc_grads``, in ``accumulator_dtype`` (``None``: float32,
      or the leaf's dtype when wider). ``inner`` receives it in that dtype, so bf16 gradients
      are averaged and handed on in float32; the updates leave in the gradients' dtype.
    - Counting: ``micro_step`` (position in the window) and ``optimizer_step`` (inner steps)
      are separate; ``inner`` runs only on emitting calls (``lax.cond``), so its own step count
      and every schedule inside it advance once per optimizer step.
    - ``skip_nonfinite``: a micro-batch with a NaN or an Inf is dropped (weight 0, the
      accumulator bit-identical) and counted in ``skipped_micro_batches``; it still takes its
      place in the window, so an optimizer step still comes every ``k`` calls, on the finite
      micro-batches. A window where every micro-batch was dropped (or all weights are 0) takes
      no step: ``inner``'s state and ``optimizer_step`` stay as they were.

    The counters are readable with ``gradx.read_state``. Not in Optax; ``MultiSteps`` is Optax's
    form (unit weights, the inner optimizer fed the gradients' dtype).
    """
    every_k = _every_k(every_k_schedule)
    declared, inner = inner, with_extra_args_support(inner)
    weight_dtype = jnp.result_type(float)

    def init(params):
        zero = jnp.zeros([], jnp.int32)
        return AccumulateGradientsState(
            micro_step=zero, optimizer_step=zero, skipped_micro_batches=zero,
            window_weight=jnp.zeros([], weight_dtype),
            acc_grads=_zero_accumulator(params, accumulator_dtype), inner_state=inner.init(params))

    def update(updates, state, params=None, weight=None, **extra_args):
        k = every_k(state.optimizer_step)
        weight = jnp.asarray(1 if weight is None else weight).astype(weight_dtype)
        skipped = state.skipped_micro_batches
        if skip_nonfinite:
            finite = plumbing.all_finite(updates)
            weight = jnp.where(finite, weight, 0)
            updates = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), updates)
            skipped = jnp.where(finite, skipped, safe_increment(skipped))
        new_updates, acc, window_weight, emit, inner_state = _micro_step(
            inner, updates, state.acc_grads, weight, state.window_weight,
            state.micro_step == k - 1, state.inner_state, params, extra_args, use_grad_mean,
            inner_sees_grads_dtype=False)
        return new_updates, AccumulateGradientsState(
            micro_step=safe_increment(state.micro_step) % k,
            optimizer_step=jnp.where(emit, safe_increment(state.optimizer_step),
                                     state.optimizer_step),
            skipped_micro_batches=skipped, window_weight=window_weight, acc_grads=acc,
            inner_state=inner_state)

    return tree_use.declare(
        GradientTransformationExtraArgs(init, update), tree_use.GLOBAL, "accumulate_gradients",
        inner=(declared,), rebuild=lambda convert, _: accumulate_gradients(
            convert(0, declared), every_k_schedule, use_grad_mean, skip_nonfinite,
            accumulator_dtype))


__all__ = ["ShouldSkipUpdateFunction", "skip_not_finite", "skip_large_updates", "MultiStepsState",
           "MultiSteps", "AccumulateGradientsState", "accumulate_gradients"]
