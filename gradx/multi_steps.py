"""Gradient accumulation: ``MultiSteps`` averages (or sums) k mini-step gradients and runs the
inner optimizer once on the result.

Memory and compute: the only full-size buffer is the accumulator ``acc_grads``. The inner
optimizer runs only on the emitting mini-step, under ``lax.cond``; on the other mini-steps it is
not evaluated at all (Optax evaluates it on every mini-step and throws the result away,
optax#472/#528).
"""

from typing import Any, Callable, NamedTuple, Optional, Protocol, Union

import jax
import jax.numpy as jnp

from gradx import checks, tree_utils
from gradx.base import (GradientTransformation, GradientTransformationExtraArgs, safe_increment,
                        with_extra_args_support)
from gradx.wrappers import cond_update


class ShouldSkipUpdateFunction(Protocol):
    """``fn(updates, gradient_step, params) -> (bool scalar, skip_state)``: True rejects the
    mini-step; ``skip_state`` (any tree) is stored in ``MultiStepsState.skip_state``."""

    def __call__(self, updates: Any, gradient_step: jax.typing.ArrayLike, params: Optional[Any]
                 ) -> tuple[jax.typing.ArrayLike, Any]: ...


def skip_not_finite(updates: Any, gradient_step: jax.typing.ArrayLike, params: Optional[Any]
                    ) -> tuple[jax.Array, Any]:
    """Skips a mini-step whose gradients contain a NaN or an Inf.

    Returns ``(should_skip, {'should_skip', 'num_not_finite'})`` as Optax's.
    """
    del gradient_step, params
    counts = [jnp.sum(~jnp.isfinite(x)).astype(jnp.int32) for x in jax.tree.leaves(updates)]
    num_not_finite = sum(counts, jnp.zeros([], jnp.int32))
    should_skip = num_not_finite > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num_not_finite}


def skip_large_updates(updates: Any, gradient_step: jax.typing.ArrayLike, params: Optional[Any],
                       max_squared_norm: jax.typing.ArrayLike) -> tuple[jax.Array, Any]:
    """Skips a mini-step unless ``‖updates‖² < max_squared_norm`` (so NaN norms skip too).

    Returns ``(should_skip, {'should_skip', 'norm_squared'})`` as Optax's; the squared norm uses
    ``|x|²`` (correct for complex leaves, where Optax sums ``x**2``).
    """
    del gradient_step, params
    norm_sq = tree_utils.squared_norm(updates)
    should_skip = jnp.logical_not(norm_sq < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


def _never_skip(updates, gradient_step, params):
    del updates, gradient_step, params
    return jnp.array(False, jnp.bool_), ()


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
    """

    def __init__(self, opt: GradientTransformation,
                 every_k_schedule: Union[int, Callable[[jax.Array], jax.typing.ArrayLike]],
                 use_grad_mean: bool = True,
                 should_skip_update_fn: Optional[ShouldSkipUpdateFunction] = None,
                 accumulator_dtype: Optional[jax.typing.DTypeLike] = None):
        if not callable(every_k_schedule):
            checks.positive("every_k_schedule", every_k_schedule)
        self._opt = with_extra_args_support(opt)
        self._every_k_schedule = (every_k_schedule if callable(every_k_schedule)
                                  else lambda step: every_k_schedule)
        self._use_grad_mean = use_grad_mean
        self._should_skip_update_fn = should_skip_update_fn or _never_skip
        self._accumulator_dtype = tree_utils.canonicalize_dtype(accumulator_dtype)

    @property
    def inner_opt(self) -> GradientTransformationExtraArgs:
        return self._opt

    def _acc_dtype(self, leaf):
        if self._accumulator_dtype is not None:
            return self._accumulator_dtype
        return jnp.promote_types(jnp.result_type(leaf), jnp.float32)

    def init(self, params: Any) -> MultiStepsState:
        gradient_step = jnp.zeros([], jnp.int32)
        _, skip_state = self._should_skip_update_fn(tree_utils.zeros_like(params), gradient_step,
                                                    params)
        return MultiStepsState(
            mini_step=jnp.zeros([], jnp.int32), gradient_step=gradient_step,
            inner_opt_state=self._opt.init(params),
            acc_grads=jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), self._acc_dtype(p)), params),
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
            if self._use_grad_mean:
                acc = jax.tree.map(lambda g, a: a + (g.astype(a.dtype) - a) / (n + 1),
                                   grads, state.acc_grads)
            else:
                acc = jax.tree.map(lambda g, a: a + g.astype(a.dtype), grads, state.acc_grads)
            acc = jax.tree.map(lambda new, old: new.astype(old.dtype), acc, state.acc_grads)
            emit = n == k - 1
            acc_as_grads = jax.tree.map(lambda a, g: a.astype(g.dtype), acc, grads)
            new_updates, inner_state = cond_update(emit, self._opt, acc_as_grads,
                                                   state.inner_opt_state, params, extra_args)
            return new_updates, MultiStepsState(
                mini_step=safe_increment(n) % k,
                gradient_step=jnp.where(emit, safe_increment(state.gradient_step),
                                        state.gradient_step),
                inner_opt_state=inner_state,
                acc_grads=jax.tree.map(lambda a: jnp.where(emit, jnp.zeros_like(a), a), acc),
                skip_state=skip_state)

        out_shape = jax.eval_shape(lambda ops: accumulate(ops)[0], (updates, state))

        def skip(operands):
            _, state = operands
            return (jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape),
                    state._replace(skip_state=skip_state))

        return jax.lax.cond(should_skip, skip, accumulate, (updates, state))

    def has_updated(self, state: Union[MultiStepsState, Any]) -> jax.Array:
        """True right after a mini-step that emitted an inner update."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformationExtraArgs:
        return GradientTransformationExtraArgs(init=self.init, update=self.update)


__all__ = ["ShouldSkipUpdateFunction", "skip_not_finite", "skip_large_updates", "MultiStepsState",
           "MultiSteps"]
