"""One builder for every transformation whose rule acts on each leaf on its own.

A rule is written once, per leaf and usually per element, close to its paper's formula::

    def rule(g, mu, nu, *, bc1, bc2):            # g: one gradient leaf; mu, nu: its moments
        mu = (1 - b1) * g + b1 * mu
        nu = (1 - b2) * g * g + b2 * nu
        return (mu / bc1) / (jnp.sqrt(nu / bc2) + eps), mu, nu

``leafwise(rule, ScaleByAdamState, moments=(Moment('mu'), Moment('nu')), step_scalars=...)``
turns it into an ``(init, update)`` pair: ``init`` allocates each moment like the params,
``update`` checks that the trees match (naming the offending path), advances the step count,
computes the per-step scalars once (bias corrections and the like), applies the rule leaf by
leaf, keeps every moment in its own dtype and returns updates in the gradients' dtype.

A rule marked ``elementwise=True`` uses no reduction over its leaf, so the same function can
also run over a flat buffer holding many leaves at once.
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from gradx import tree_utils
from gradx.base import NO_PARAMS_MSG, GradientTransformation, safe_increment


class Moment(NamedTuple):
    """A full-size state buffer: its field name in the state, its initial value and its dtype
    (``None``: the parameter's dtype)."""

    name: str
    init: Any = 0.0
    dtype: Any = None


def leafwise(
    rule: Callable[..., Any],
    state_cls: type,
    moments: Sequence[Moment] = (),
    step_scalars: Optional[Callable[[jax.Array], dict]] = None,
    needs_params: bool = False,
    elementwise: bool = True,
    count_field: Optional[str] = "count",
) -> GradientTransformation:
    """Builds a transformation from a per-leaf ``rule``.

    Args:
      rule: ``rule(g, [p,] *moments, **scalars)`` returns the update leaf, followed by the new
        moment leaves when there are moments.
      state_cls: NamedTuple holding ``count_field`` (if it has that field) and one tree per moment.
      moments: the full-size buffers, in the order the rule takes and returns them.
      step_scalars: ``step_scalars(count)`` with ``count`` the step number after the increment
        (1 on the first update); returns the keyword scalars of the rule.
      needs_params: pass each parameter leaf to the rule after ``g``.
      elementwise: the rule uses no reduction over its leaf.
      count_field: the state's step-count field.
    """
    has_count = count_field is not None and count_field in state_cls._fields
    names = [m.name for m in moments]

    def init(params):
        fields = {m.name: tree_utils.full_like(params, m.init, m.dtype) for m in moments}
        if has_count:
            fields[count_field] = jnp.zeros([], jnp.int32)
        return state_cls(**fields)

    def update(updates, state, params=None):
        if needs_params and params is None:
            raise ValueError(NO_PARAMS_MSG)
        count = safe_increment(getattr(state, count_field)) if has_count else None
        scalars = step_scalars(count) if step_scalars is not None else {}
        others = ([params] if needs_params else []) + [getattr(state, n) for n in names]
        other_names = (["params"] if needs_params else []) + [f"state.{n}" for n in names]
        treedef, leaf_lists = tree_utils.flatten_matching(updates, others, other_names)
        new_updates, new_moments = [], [[] for _ in names]
        for leaves in zip(*leaf_lists):
            out = rule(*leaves, **scalars)
            u, outs = (out[0], out[1:]) if names else (out, ())
            new_updates.append(jnp.asarray(u).astype(jnp.result_type(leaves[0])))
            for slot, new, old in zip(new_moments, outs, leaves[1 + needs_params:]):
                slot.append(jnp.asarray(new).astype(jnp.result_type(old)))
        fields = {n: treedef.unflatten(leaves) for n, leaves in zip(names, new_moments)}
        if has_count:
            fields[count_field] = count
        for field in state_cls._fields:
            fields.setdefault(field, getattr(state, field))
        return treedef.unflatten(new_updates), state_cls(**fields)

    return GradientTransformation(init, update)
