"""Wrappers that change when or on what an inner transformation runs: only on finite updates
(``apply_if_finite``), only at some steps (``conditionally_transform``, ``conditionally_mask``),
on one flat vector (``flatten``), or with slow and fast weights (``lookahead``).

Every conditional wrapper goes through ``cond_update``: the inner update runs under
``lax.cond`` only when its predicate holds, so a skipped step costs nothing and leaves the
inner state bit-identical.
"""

import logging
from typing import Any, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gradx import plumbing, tree_use
from gradx.base import (NO_PARAMS_MSG, GradientTransformation, GradientTransformationExtraArgs,
                        safe_increment, with_extra_args_support)

_LOG = logging.getLogger(__name__)  # "gradx.wrappers", not the root logger


def cond_update(predicate: jax.typing.ArrayLike, inner: GradientTransformationExtraArgs,
                updates: Any, inner_state: Any, params: Any = None, extra_args: Optional[dict] = None,
                otherwise: str = "zeros") -> tuple[Any, Any]:
    """``inner.update(...)`` when ``predicate`` holds; otherwise zero updates (``otherwise=
    'zeros'``) or the incoming updates (``'pass'``) and the inner state unchanged.

    Only one branch runs (``lax.cond``). The new inner state is cast to the old state's dtypes
    and the fallback updates take the inner updates' dtypes, so both branches agree whatever
    dtypes the inner transformation produces (Optax's ``where``/``cond`` variants can fail or
    promote there, optax#1038).
    """
    extra_args = extra_args or {}

    def run(operands):
        upd, state, prm = operands
        new_updates, new_state = inner.update(upd, state, prm, **extra_args)
        return new_updates, jax.tree.map(plumbing.cast_like, new_state, state)

    out_shape = jax.eval_shape(lambda ops: run(ops)[0], (updates, inner_state, params))

    def skip(operands):
        upd, state, _ = operands
        if otherwise == "zeros":
            fallback = plumbing.zeros_shaped(out_shape)
        else:
            fallback = jax.tree.map(lambda u, s: jnp.asarray(u).astype(s.dtype), upd, out_shape)
        return fallback, state

    return jax.lax.cond(predicate, run, skip, (updates, inner_state, params))


class ApplyIfFiniteState(NamedTuple):
    """``notfinite_count``: consecutive non-finite updates (reset by a finite one, and by giving
    up); ``last_finite``: whether the last update was finite; ``total_notfinite``: all non-finite
    updates seen; ``inner_state``."""

    notfinite_count: Any
    last_finite: Any
    total_notfinite: Any
    inner_state: Any


def apply_if_finite(inner: GradientTransformation,
                    max_consecutive_errors: int) -> GradientTransformationExtraArgs:
    """Skips updates containing a NaN or an Inf: zero updates, inner state untouched.

    After more than ``max_consecutive_errors`` non-finite updates in a row it gives up and
    applies the next one anyway, as ``optax.apply_if_finite`` (same state and numbers).

    Differs from Optax (PR#1746): on the step where it gives up, ``notfinite_count`` is reset to
    0, so it counts the current streak, and the next non-finite update is skipped again (Optax
    keeps counting and applies every further non-finite update until a finite one arrives).
    """
    declared, inner = inner, with_extra_args_support(inner)

    def init(params):
        return ApplyIfFiniteState(notfinite_count=jnp.zeros([], jnp.int32),
                                  last_finite=jnp.array(True, jnp.bool_),
                                  total_notfinite=jnp.zeros([], jnp.int32),
                                  inner_state=inner.init(params))

    def update(updates, state, params=None, **extra_args):
        finite = plumbing.all_finite(updates)
        streak = jnp.where(finite, 0, safe_increment(state.notfinite_count))
        give_up = streak > max_consecutive_errors
        new_updates, inner_state = cond_update(jnp.logical_or(finite, give_up), inner, updates,
                                               state.inner_state, params, extra_args)
        return new_updates, ApplyIfFiniteState(
            notfinite_count=jnp.where(give_up, 0, streak).astype(jnp.int32),
            last_finite=finite,
            total_notfinite=jnp.where(finite, state.total_notfinite,
                                      safe_increment(state.total_notfinite)),
            inner_state=inner_state)

    return tree_use.declare(
        GradientTransformationExtraArgs(init, update), tree_use.GLOBAL, "apply_if_finite",
        inner=(declared,),
        rebuild=lambda convert, _: apply_if_finite(convert(0, declared), max_consecutive_errors))


class ConditionFn(Protocol):
    """``fn(step, **extra_args) -> bool scalar``: whether the inner transformation runs."""

    def __call__(self, step: jax.typing.ArrayLike, **extra_args: Any) -> jax.typing.ArrayLike: ...


class ConditionallyTransformState(NamedTuple):
    inner_state: Any
    step: jax.typing.ArrayLike


class ConditionallyMaskState(NamedTuple):
    step: jax.typing.ArrayLike
    inner_state: Any


def _conditionally(inner, should_transform_fn, forward_extra_args, otherwise, state_cls):
    declared, inner = inner, with_extra_args_support(inner)

    def init(params):
        return state_cls(inner_state=inner.init(params), step=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra_args):
        condition = should_transform_fn(state.step, **(extra_args if forward_extra_args else {}))
        new_updates, inner_state = cond_update(condition, inner, updates, state.inner_state,
                                               params, extra_args, otherwise)
        return new_updates, state_cls(inner_state=inner_state, step=safe_increment(state.step))

    def rebuild(convert, _):
        return _conditionally(convert(0, declared), should_transform_fn, forward_extra_args,
                              otherwise, state_cls)

    return tree_use.declare(GradientTransformationExtraArgs(init, update), tree_use.ELEMENTWISE,
                            f"conditionally ({state_cls.__name__})", inner=(declared,),
                            rebuild=rebuild)


def conditionally_transform(inner: GradientTransformation, should_transform_fn: ConditionFn,
                            forward_extra_args: bool = False) -> GradientTransformationExtraArgs:
    """Runs ``inner`` at the steps where ``should_transform_fn(step)`` is True; at the others the
    updates pass through unchanged and the inner state is kept.

    ``step`` counts the calls to ``update`` before this one (0 first). Same state
    (``ConditionallyTransformState(inner_state, step)``) and numbers as Optax's.
    """
    return _conditionally(inner, should_transform_fn, forward_extra_args, "pass",
                          ConditionallyTransformState)


def conditionally_mask(inner: GradientTransformation, should_transform_fn: ConditionFn,
                       forward_extra_args: bool = False) -> GradientTransformationExtraArgs:
    """Like ``conditionally_transform``, but the updates are zeroed at rejected steps.

    State ``ConditionallyMaskState(step, inner_state)`` (field order as Optax's).
    """
    return _conditionally(inner, should_transform_fn, forward_extra_args, "zeros",
                          ConditionallyMaskState)


def flatten(inner: GradientTransformation) -> GradientTransformationExtraArgs:
    """Runs ``inner`` on one vector holding every leaf raveled and concatenated (fewer, larger
    kernels), then splits its output back into the updates' structure.

    As ``optax.flatten``. Differs from Optax: each output leaf is cast back to its gradient's
    dtype (Optax returns the promoted dtype of the concatenation for mixed-dtype trees).
    """
    inner = with_extra_args_support(inner)

    def ravel(tree):
        leaves = jax.tree.leaves(tree)
        if not leaves:
            return jnp.zeros([0], jnp.float32)
        return jnp.concatenate([jnp.reshape(x, [-1]) for x in leaves])

    def unravel(like, flat):
        leaves, treedef = jax.tree.flatten(like)
        offsets = np.cumsum([np.size(x) for x in leaves])[:-1]
        pieces = jnp.split(flat, offsets) if leaves else []
        return treedef.unflatten([jnp.reshape(piece, jnp.shape(x)).astype(jnp.result_type(x))
                                  for piece, x in zip(pieces, leaves)])

    def init(params):
        return inner.init(ravel(params))

    def update(updates, state, params=None, **extra_args):
        flat, state = inner.update(ravel(updates), state,
                                   None if params is None else ravel(params), **extra_args)
        return unravel(updates, flat), state

    return GradientTransformationExtraArgs(init, update)


class LookaheadState(NamedTuple):
    """``fast_state``: the fast optimizer's state; ``steps_since_sync``: fast steps since the
    last synchronisation."""

    fast_state: Any
    steps_since_sync: jax.Array


class LookaheadParams(NamedTuple):
    """Fast weights (compute gradients with these) and slow weights (evaluate with these)."""

    fast: Any
    slow: Any

    @classmethod
    def init_synced(cls, params: Any) -> "LookaheadParams":
        """Fast and slow weights both equal to ``params``."""
        return cls(fast=params, slow=params)


def lookahead(fast_optimizer: GradientTransformation, sync_period: int, slow_step_size: float,
              reset_state: bool = False) -> GradientTransformationExtraArgs:
    """Lookahead: k steps forward with a fast optimizer, one step back (Zhang et al., 2019).

    Params and updates are ``LookaheadParams(fast, slow)``. Each step applies the fast
    optimizer to the fast weights; every ``sync_period`` steps ``slow ← slow + α (fast - slow)``
    with the fresh fast weights and ``fast ← slow`` (α = ``slow_step_size``); with
    ``reset_state`` the fast optimizer's state is re-initialised at each sync.

    Same state (``LookaheadState(fast_state, steps_since_sync)``) and numbers as
    ``optax.lookahead``. Differs: extra arguments reach the fast optimizer, and the reset keeps
    each state leaf's dtype and replaces the fast state by a fresh one, NaN included (Optax
    blends ``(1 - sync)·old + sync·fresh``, which keeps a NaN state NaN after the reset, turns
    an Inf one NaN, makes a boolean field int32 (int64 under x64; ``optimistic_adam_v2``'s
    ``is_initial_step``) and raises ``TypeError`` on a typed PRNG key, e.g. ``noisy_sgd``'s).
    ``sync_period < 1`` raises ``ValueError``.
    """
    if sync_period < 1:
        raise ValueError(f"sync_period must be >= 1, got sync_period={sync_period!r}.")
    fast_optimizer = with_extra_args_support(fast_optimizer)

    def init(params):
        fast = getattr(params, "fast", None)
        if fast is None:
            _LOG.warning("lookahead: `params` has no `fast` attribute; using them as the fast "
                            "parameters (pass LookaheadParams.init_synced(params)).")
            fast = params
        return LookaheadState(fast_state=fast_optimizer.init(fast),
                              steps_since_sync=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        fast_updates, fast_state = fast_optimizer.update(updates, state.fast_state, params.fast,
                                                         **extra_args)
        sync = state.steps_since_sync == sync_period - 1
        # d = fast_new - slow; slow moves by α·d, fast lands on the new slow: u - (1-α)·d.
        diff = jax.tree.map(lambda f, u, s: f + u - s, params.fast, fast_updates, params.slow)
        new_updates = LookaheadParams(
            fast=jax.tree.map(lambda u, d: u - sync * (1 - slow_step_size) * d, fast_updates, diff),
            slow=jax.tree.map(lambda d: slow_step_size * sync * d, diff))
        if reset_state:
            fast_state = jax.tree.map(
                lambda fresh, old: jnp.where(sync, plumbing.cast_like(fresh, old), old),
                fast_optimizer.init(params.fast), fast_state)
        return new_updates, LookaheadState(fast_state, (state.steps_since_sync + 1) % sync_period)

    return GradientTransformationExtraArgs(init, update)


__all__ = ["ApplyIfFiniteState", "apply_if_finite", "ConditionFn", "ConditionallyTransformState",
           "ConditionallyMaskState", "conditionally_transform", "conditionally_mask", "flatten",
           "LookaheadState", "LookaheadParams", "lookahead"]
