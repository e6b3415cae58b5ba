"""Mixed precision: low-precision (bf16, fp16) params with float32 master weights.

``with_master_weights(opt)`` keeps a float32 copy of every low-precision parameter and runs
``opt`` on the copies, in float32, on float32 gradients. Each step it writes the new master
weights back to the params, rounded to their dtype (to nearest, or stochastically), by
returning updates that land there under ``gradx.apply_updates``. Steps far smaller than a bf16
ulp (2⁻⁸ relative) then accumulate in the master weights instead of rounding away, which is why
plain bf16 training stalls.

The optimizer's state dtypes are chosen per moment by field name
(``moment_dtypes={'mu': jnp.bfloat16, 'nu': jnp.float32}``): stored in that dtype, computed
in float32.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gradx import plumbing
from gradx.base import (NO_PARAMS_MSG, GradientTransformation, GradientTransformationExtraArgs,
                        with_extra_args_support)
from gradx.masking import MaskedNode


def stochastic_round(x: jax.Array, dtype: jax.typing.DTypeLike, key: jax.Array) -> jax.Array:
    """Rounds ``x`` to ``dtype``, to one of its two neighbours ``lo ≤ x ≤ hi`` in ``dtype``:
    ``hi`` with probability ``(x - lo) / (hi - lo)``, else ``lo``, so ``E[result] = x``.

    Values exact in ``dtype`` (and ±Inf, NaN) are returned as they are. ``key`` is a JAX PRNG
    key; one uniform draw per element (resolution 2⁻²⁴ of the gap). Works for any float
    ``dtype`` narrower than ``x``'s (bf16 and fp16 alike, subnormals included).
    """
    x = jnp.asarray(x)
    return _round_up_below(x, dtype, jax.random.uniform(key, x.shape, x.dtype))


def _round_up_below(x: jax.Array, dtype: Any, uniform: jax.Array) -> jax.Array:
    """``stochastic_round`` with the uniform draws in ``[0, 1)`` given: rounds up where
    ``uniform < (x - lo) / (hi - lo)``."""
    dtype = jnp.dtype(dtype)
    nearest = x.astype(dtype)
    nearest_wide = nearest.astype(x.dtype)
    toward_x = jnp.where(nearest_wide < x, jnp.inf, -jnp.inf).astype(dtype)
    other = jnp.nextafter(nearest, toward_x).astype(x.dtype)
    lo, hi = jnp.minimum(nearest_wide, other), jnp.maximum(nearest_wide, other)
    gap = hi - lo
    p_up = (x - lo) / jnp.where(gap > 0, gap, 1)
    up = uniform < p_up
    rounded = jnp.where(up, hi, lo).astype(dtype)
    return jnp.where(nearest_wide == x, nearest, rounded)


class MasterWeightsState(NamedTuple):
    """``master_params``: the float32 master copy of each low-precision parameter
    (``MaskedNode()`` for params already in the master precision, which need none);
    ``inner_state``: the inner optimizer's state; ``key``: raw PRNG key data (uint32) for
    stochastic rounding, ``()`` without it."""

    master_params: Any
    inner_state: Any
    key: Any


def _cast_moments(state: Any, moment_dtypes: dict, found: set) -> Any:
    """Casts the float leaves of every NamedTuple field named in ``moment_dtypes`` to its dtype;
    records the names it met in ``found``."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        fields = {}
        for name, value in zip(state._fields, state):
            if name in moment_dtypes:
                found.add(name)
                dtype = moment_dtypes[name]
                fields[name] = jax.tree.map(
                    lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                    value)
            else:
                fields[name] = _cast_moments(value, moment_dtypes, found)
        return type(state)(**fields)
    split = plumbing.one_level(state)  # tuples, lists, dicts, other wrapper states
    if split is None:
        return state
    return split[1].unflatten([_cast_moments(v, moment_dtypes, found) for v in split[0]])


def _field_names(state: Any) -> set:
    """Every NamedTuple field name inside ``state``."""
    names = set(state._fields) if isinstance(state, tuple) and hasattr(state, "_fields") else set()
    for value in (split[0] if (split := plumbing.one_level(state)) else ()):
        names |= _field_names(value)
    return names


def with_master_weights(inner: GradientTransformation, master_dtype: Any = jnp.float32,
                        moment_dtypes: Optional[dict] = None, stochastic_rounding: bool = False,
                        seed: int = 0) -> GradientTransformationExtraArgs:
    """Runs ``inner`` on float32 master copies of the low-precision params.

    For each parameter ``p`` narrower than ``master_dtype`` (bf16, fp16), with master ``m``:
    ``u = inner(g as float32, m)``, ``m ← m + u`` (float32) and the returned update is
    ``round(m) - p``, in float32, so ``apply_updates(p, update)`` gives exactly ``round(m)``
    (``round(m) - p`` is exact in float32 whenever the two differ by less than a factor 2¹⁶).
    ``round`` is to nearest, or ``stochastic_round`` with ``stochastic_rounding=True`` (the
    key lives in the state and is split every step). Params already in ``master_dtype`` or
    wider need no copy: ``inner`` runs on them directly and their updates pass through.

    ``moment_dtypes`` maps state field names (``'mu'``, ``'nu'``, ``'trace'``...) to the dtype
    they are stored in; the other state leaves keep the dtypes ``inner.init`` gives them on the
    master weights (float32 moments). Each step upcasts the narrower float state leaves to
    ``master_dtype``, runs ``inner`` there, and stores the result back in the stored dtypes.
    ``update`` needs ``params``. Wrap it around gradient accumulation
    (``with_master_weights(accumulate_gradients(opt, k))``), not inside it: accumulation
    returns updates in the gradients' dtype, which would round the float32 updates again.

    Defaults: ``master_dtype=float32``, no ``moment_dtypes``, rounding to nearest, ``seed=0``.
    Raises ``ValueError`` at ``init`` for a ``moment_dtypes`` name that is no field of the inner
    state. Not in Optax (optax#1552: its ``mu_dtype`` covers the first moment only, and bf16
    params have no master copy); the updates are float32 rather than the gradients' dtype,
    because a bf16 update cannot carry ``round(m) - p`` exactly.

    References: Micikevicius et al., 2018, "Mixed Precision Training" (master weights); Gupta
    et al., 2015, "Deep Learning with Limited Numerical Precision" (stochastic rounding).
    """
    master_dtype = plumbing.canonicalize_dtype(master_dtype)
    moment_dtypes = {name: plumbing.canonicalize_dtype(d) for name, d in
                     (moment_dtypes or {}).items()}
    inner = with_extra_args_support(inner)

    def is_low(p):
        dtype = jnp.result_type(p)
        return (jnp.issubdtype(dtype, jnp.floating)
                and jnp.finfo(dtype).bits < jnp.finfo(master_dtype).bits)

    def working(params, master):
        """The tree ``inner`` works on: masters where there are, params elsewhere."""
        return jax.tree.map(lambda p, m: p if isinstance(m, MaskedNode) else m, params, master)

    def upcast(tree):
        return jax.tree.map(lambda x: x.astype(master_dtype) if is_low(x) else x, tree)

    def init(params):
        master = jax.tree.map(lambda p: p.astype(master_dtype) if is_low(p) else MaskedNode(),
                              params)
        found = set()
        inner_state = _cast_moments(inner.init(working(params, master)), moment_dtypes, found)
        unknown = set(moment_dtypes) - found
        if unknown:
            raise ValueError(f"moment_dtypes names {sorted(unknown)}, which the inner state does "
                             f"not have; its fields are {sorted(_field_names(inner_state))}.")
        key = jax.random.key_data(jax.random.key(seed)) if stochastic_rounding else ()
        return MasterWeightsState(master_params=master, inner_state=inner_state, key=key)

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        weights = working(params, state.master_params)
        grads = jax.tree.map(lambda g, w: g.astype(jnp.result_type(w)), updates, weights)
        inner_updates, inner_state = inner.update(grads, upcast(state.inner_state), weights,
                                                  **extra_args)
        inner_state = jax.tree.map(lambda new, old: new.astype(old.dtype) if is_low(old) else new,
                                   inner_state, state.inner_state)
        key, draws = state.key, None
        if stochastic_rounding:  # one draw for all the leaves: one generator kernel, not one each
            key, sub = jax.random.split(jax.random.wrap_key_data(state.key))
            key = jax.random.key_data(key)
            sizes = [m.size for m in jax.tree.leaves(state.master_params)]
            draws = iter(jnp.split(jax.random.uniform(sub, (sum(sizes),), master_dtype),
                                   np.cumsum(sizes)[:-1]))

        def write(p, m, u, g):
            if isinstance(m, MaskedNode):
                return u.astype(g.dtype), m
            new_m = (m + u).astype(m.dtype)
            low = (_round_up_below(new_m, p.dtype, next(draws).reshape(m.shape))
                   if stochastic_rounding else new_m.astype(p.dtype))
            return low.astype(master_dtype) - p.astype(master_dtype), new_m

        treedef = jax.tree.structure(params)
        pairs = [write(*leaves) for leaves in zip(
            *(treedef.flatten_up_to(t) for t in (params, state.master_params, inner_updates,
                                                 updates)))]
        new_updates = treedef.unflatten([u for u, _ in pairs])
        master = treedef.unflatten([m for _, m in pairs])
        return new_updates, MasterWeightsState(master_params=master, inner_state=inner_state,
                                               key=key)

    return GradientTransformationExtraArgs(init, update)


__all__ = ["stochastic_round", "MasterWeightsState", "with_master_weights"]
