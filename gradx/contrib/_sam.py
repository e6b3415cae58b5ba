"""SAM, Sharpness-Aware Minimization: adversarial steps with an inner optimizer, then an outer
step from the point they started (Foret et al., 2021)."""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx.base import (EmptyState, GradientTransformation, GradientTransformationExtraArgs,
                        with_extra_args_support)
from gradx.scaling import normalize_by_update_norm
from gradx.updates import apply_updates

NormalizeState = EmptyState


def normalize() -> GradientTransformation:
    """Divides the updates by their global norm: ``u = g / ‖g‖`` (no epsilon, as Optax: an
    all-zero gradient gives NaN). ``EmptyState`` (Optax's ``NormalizeState``). SAM's usual
    adversarial optimizer is ``chain(normalize(), sgd(rho))``. Same numbers as
    ``optax.contrib.normalize`` (it is ``normalize_by_update_norm(scale_factor=1, eps=0)``).
    """
    return normalize_by_update_norm(scale_factor=1.0, eps=0.0)


class SAMState(NamedTuple):
    """``steps_since_sync`` (int32), the outer optimizer's state ``opt_state``, the adversarial
    optimizer's ``adv_state``, and ``cache``: the params where the adversarial steps started
    (``None`` in opaque mode)."""

    steps_since_sync: Any
    opt_state: Any
    adv_state: Any
    cache: Any


def _like(new, old):
    """``new``'s leaves in ``old``'s dtypes, so both branches of a ``lax.cond`` agree."""
    return jax.tree.map(lambda n, o: n if n.dtype == o.dtype else n.astype(o.dtype), new, old)


def _negated(updates):
    return jax.tree.map(jnp.negative, updates)


def _require_grad_fn(grad_fn) -> None:
    if grad_fn is None:
        raise ValueError(
            "sam(opaque_mode=True) runs the adversarial steps itself and needs their gradients: "
            "call update(grads, state, params, grad_fn=grad_fn) with grad_fn(params, i) -> "
            "grads, e.g. grad_fn = jax.grad(lambda p, i: loss(p, batch)).")


def sam(optimizer: GradientTransformation, adv_optimizer: GradientTransformation,
        sync_period: int = 2, reset_state: bool = True, opaque_mode: bool = False,
        batch_axis_name: Optional[str] = None) -> GradientTransformationExtraArgs:
    """SAM: ``sync_period - 1`` adversarial steps with ``adv_optimizer``, then one step of
    ``optimizer`` from where they started, with the gradient at the adversarial point.

    The usual SAM is ``sam(sgd(lr), chain(normalize(), sgd(rho)), sync_period=2)``: the
    adversarial step ``θ' = θ + ρ·g/‖g‖``, then ``θ ← θ - lr·∇L(θ')``.

    - Transparent mode (default): each ``update`` call is one step. Adversarial calls return
      the ascent step (the negated ``adv_optimizer`` updates); every ``sync_period``-th call
      returns the outer update that moves the params from where they are to ``cache + u``.
      Extra keyword arguments reach both optimizers.
    - ``opaque_mode=True``: each call runs the adversarial steps itself, taking their gradients
      from ``update(..., grad_fn=grad_fn)`` (``grad_fn(params, i)``; without it ``ValueError``
      saying what to pass), and returns the outer update; ``batch_axis_name`` pmeans those
      gradients under ``pmap``. Use it when a call has side effects (batch-norm statistics).

    ``reset_state`` (default True) re-initialises the adversarial state after each outer step.
    ``sync_period < 1`` raises ``ValueError``. State ``SAMState``. Reference: Foret, Kleiner,
    Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
    Generalization" (ICLR 2021). Same numbers as ``optax.contrib.sam`` for ``sync_period >= 2``.

    Differs from Optax (transparent mode):

    - the outer step starts from this call's cache, so ``sync_period=1`` is the plain outer
      optimizer, as in opaque mode (Optax starts it from the previous call's params, so every
      step undoes the one before);
    - each call runs only the optimizer it needs (``lax.cond``; Optax runs both and mixes them
      as ``c·a + (1-c)·b``, which turns a state's booleans into integers and fails on PRNG
      keys); updates keep the gradients' dtype and states their dtypes.
    """
    if not isinstance(sync_period, int) or sync_period < 1:
        raise ValueError(f"sync_period must be an integer >= 1, got sync_period={sync_period!r}.")
    optimizer = with_extra_args_support(optimizer)
    adv_optimizer = with_extra_args_support(adv_optimizer)

    def init(params):
        return SAMState(steps_since_sync=jnp.zeros([], jnp.int32), opt_state=optimizer.init(params),
                        adv_state=adv_optimizer.init(params),
                        cache=None if opaque_mode else params)

    def transparent_update(updates, state, params=None, *, grad_fn=None, **extra_args):
        del grad_fn
        cache = jax.tree.map(lambda p, c: jnp.where(state.steps_since_sync == 0, p, c), params,
                             state.cache)

        def outer_step(_):
            opt_updates, opt_state = optimizer.update(updates, state.opt_state, cache,
                                                      **extra_args)
            opt_updates = jax.tree.map(lambda c, p, u: c - p + u, cache, params, opt_updates)
            adv_state = adv_optimizer.init(params) if reset_state else state.adv_state
            return _like(opt_updates, updates), _like(opt_state, state.opt_state), _like(
                adv_state, state.adv_state)

        def adversarial_step(_):
            adv_updates, adv_state = adv_optimizer.update(updates, state.adv_state, params,
                                                          **extra_args)
            return (_like(_negated(adv_updates), updates), state.opt_state,
                    _like(adv_state, state.adv_state))

        new_updates, opt_state, adv_state = jax.lax.cond(
            state.steps_since_sync == sync_period - 1, outer_step, adversarial_step, None)
        return new_updates, SAMState((state.steps_since_sync + 1) % sync_period, opt_state,
                                     adv_state, cache)

    def opaque_update(updates, state, params=None, *,
                      grad_fn: Optional[Callable[[Any, int], Any]] = None, **extra_args):
        _require_grad_fn(grad_fn)
        adv_params, adv_updates, adv_state = params, updates, state.adv_state
        for i in range(sync_period - 1):
            adv_updates, adv_state = adv_optimizer.update(adv_updates, adv_state, adv_params,
                                                          **extra_args)
            adv_params = apply_updates(adv_params, _negated(adv_updates))
            adv_updates = grad_fn(adv_params, i)
            if batch_axis_name is not None:
                adv_updates = jax.lax.pmean(adv_updates, axis_name=batch_axis_name)
        if reset_state:
            adv_state = adv_optimizer.init(params)
        new_updates, opt_state = optimizer.update(adv_updates, state.opt_state, params,
                                                  **extra_args)
        return new_updates, SAMState(jnp.zeros([], jnp.int32), opt_state, adv_state, None)

    return GradientTransformationExtraArgs(init, opaque_update if opaque_mode
                                           else transparent_update)


__all__ = ["NormalizeState", "normalize", "SAMState", "sam"]
