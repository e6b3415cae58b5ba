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

Each case in two lines:

- scalars from the step count (1 on the first update), the common case::

    leafwise(rule, ScaleByAdamState, (Moment("mu"), Moment("nu")),
             step_scalars=lambda count: {"bc1": debias_factor(b1, count), ...})

- per-leaf state that is not a full-size buffer: ``init`` is a function of the parameter leaf::

    leafwise(rule, ScaleByNovogradState, (Moment("mu"), Moment("nu", lambda p: jnp.zeros([]))),
             needs_params=True)           # rule(g, p, mu, nu) gets and returns nu as a 0-d array

- scalars from the trees (``step_inputs``: a global norm, the count before the increment, a loss)::

    leafwise(rule, EmptyState, step_inputs=("updates",),
             step_scalars=lambda _, updates: {"norm": global_norm(updates)})

- state carried from step to step (``carry``: its initial values, or functions of the params
  that return them, such as a nested transformation's ``init``)::

    leafwise(rule, NAdamState, moments, carry={"mu_product": 1.0},
             step_scalars=lambda count, mu_product: (scalars, {"mu_product": mu_product * mu}))

- one value per leaf for one step (``PerLeaf``, in flattening order; add_noise's key per leaf)::

    keys = jax.random.split(sample_key, len(jax.tree.leaves(updates)))    # in step_scalars
    return {"std": std, "key": PerLeaf(keys)}, {"rng_key": rng_key}      # the rule gets one key

A rule marked ``elementwise=True`` uses no reduction over its leaf (and no ``PerLeaf`` value),
so the same function can also run over a flat buffer holding many leaves at once; step scalars
computed from the trees (``step_inputs``) must then reduce over the whole tree (a global norm),
never leaf by leaf. The transformation declares which it is (``gradx.tree_use``), with its
``LeafwiseSpec`` (the rule, its moments and the flag), which is what ``gradx.fused`` reads.
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from gradx import plumbing, tree_use
from gradx.base import (NO_PARAMS_MSG, GradientTransformation, GradientTransformationExtraArgs,
                        safe_increment)


class Moment(NamedTuple):
    """Per-leaf state: its field name in the state, its initial value and its dtype (``None``:
    the parameter's dtype).

    ``init`` a number: a buffer shaped like the parameter, filled with it, whose shape is checked
    against the updates at every step. ``init`` a function of the parameter leaf: whatever it
    returns (an array of another shape, a list of arrays), cast to ``dtype`` when one is given;
    only the tree structure down to the leaf is checked, and the rule gets and returns the same
    structure.
    """

    name: str
    init: Any = 0.0
    dtype: Any = None

    def init_leaf(self, p):
        if callable(self.init):
            return plumbing.cast(self.init(p), self.dtype)
        dtype = self.dtype or jnp.result_type(p)
        if not jnp.issubdtype(dtype, jnp.inexact):  # integer params: a float state from init
            dtype = jnp.result_type(float)
        return plumbing.filled_like(p, self.init, dtype)


class PerLeaf(NamedTuple):
    """A step scalar with one value per leaf, in flattening order: leaf ``i`` gets ``values[i]``."""

    values: Any


class LeafwiseSpec(NamedTuple):
    """The parts a ``leafwise`` transformation was built from (its declaration's ``spec``)."""

    rule: Callable[..., Any]
    state_cls: type
    moments: tuple
    step_scalars: Optional[Callable[..., Any]]
    needs_params: bool
    elementwise: bool
    step_inputs: tuple
    carry: dict

    @property
    def per_element(self) -> bool:
        """The rule acts on each element on its own and every moment is a full-size buffer, so
        it gives the same numbers on a flat buffer holding many leaves."""
        return self.elementwise and not any(callable(m.init) for m in self.moments)


def debias_factor(decay, count) -> jax.Array:
    """``1 - decay**count``: the Adam-style bias correction of an EMA after ``count`` steps.

    Computed in the default float dtype (``decay`` may be a Python float or an array); a rule
    casts it to its moment's dtype before dividing, so a low-precision moment never sees
    ``decay**count`` rounded to 1.
    """
    return 1 - decay ** count


def _check_lossless(new, old, what: str, updates, index: int) -> None:
    """Raises ``TypeError`` naming the leaf when keeping ``old``'s dtype would silently lose
    ``new``'s values: complex into real (complex gradients for real params), or floating-point
    into an integer (a state given an integer dtype)."""
    new_dtype, old_dtype = jnp.result_type(new), jnp.result_type(old)
    if jnp.issubdtype(new_dtype, jnp.complexfloating) and not jnp.issubdtype(
            old_dtype, jnp.complexfloating) and jnp.issubdtype(old_dtype, jnp.inexact):
        loss = "its imaginary parts would be dropped"
    elif jnp.issubdtype(new_dtype, jnp.inexact) and not jnp.issubdtype(old_dtype, jnp.inexact):
        loss = "the values would be truncated to integers"
    else:
        return
    path = plumbing.leaf_paths(updates, lambda x: x is None)[index]
    source = "the gradients' dtype" if what == "updates" else "init built it from the params"
    raise TypeError(
        f"{what} at '{path}' is {old_dtype} ({source}) and this update gives it {new_dtype} "
        f"values: {loss}. Use floating-point (or complex) params and gradients of one kind, "
        "or leave the leaf out with gradx.masked / gradx.partition.")


def _compiled(step_scalars: Callable[..., Any]) -> Callable[..., Any]:
    """``step_scalars`` as a jitted update computes it, also outside ``jit``.

    Inside a trace (a jitted update) it runs as it is, inlined in the update's program: a
    Python-number hyperparameter it returns stays a Python number, so ``(1 - b3) * m`` rounds
    ``1 - b3`` in double precision, as Optax's rules do (through a ``jit`` boundary it would
    become a float32 array, ``1 - 0.9999`` off by 1.7e-4 relative). Outside ``jit`` its array
    outputs come from one cached program, as they would inside the jitted update (op by op,
    ``b1 ** count`` on a concrete count compiles a new ``integer_pow`` at every step and rounds
    differently); its other outputs (Python numbers, static structure) are kept from the trace,
    per input signature. A function that cannot be traced (a schedule branching on the count in
    Python) runs as it is.
    """
    static_outputs = {}

    def arrays_only(signature, *args, **kwargs):
        leaves, treedef = jax.tree.flatten(step_scalars(*args, **kwargs))
        is_array = [isinstance(x, jax.Array) for x in leaves]
        static_outputs[signature] = treedef, is_array, [
            None if a else x for a, x in zip(is_array, leaves)]
        return [x for a, x in zip(is_array, leaves) if a]

    compiled = jax.jit(arrays_only, static_argnums=0)

    def call(*args, **kwargs):
        leaves, structure = jax.tree.flatten((args, kwargs))
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            return step_scalars(*args, **kwargs)
        signature = (structure, tuple(jax.typeof(x) for x in leaves))
        try:
            arrays = iter(compiled(signature, *args, **kwargs))
        except jax.errors.ConcretizationTypeError:
            return step_scalars(*args, **kwargs)
        treedef, is_array, static = static_outputs[signature]
        return treedef.unflatten([next(arrays) if a else x for a, x in zip(is_array, static)])

    return call


def leafwise(
    rule: Callable[..., Any],
    state_cls: type,
    moments: Sequence[Moment] = (),
    step_scalars: Optional[Callable[..., Any]] = None,
    needs_params: bool = False,
    elementwise: bool = True,
    count_field: Optional[str] = "count",
    *,
    step_inputs: Sequence[str] = (),
    carry: Optional[dict] = None,
) -> GradientTransformation:
    """Builds a transformation from a per-leaf ``rule``.

    Args:
      rule: ``rule(g, [p,] *moments, **scalars)`` returns the update leaf, or a tuple of the
        update leaf and the new moment leaves. A ``None`` update leaf (or ``updates=None``)
        is not given to the rule: it stays ``None`` and its state is kept, as Optax passes
        ``None`` updates through. Integer params get a float state (the default float dtype)
        from ``init`` and integer gradients float updates (Optax's promotion, without its
        state changing dtype at the first step); a value that a state's or the updates' dtype
        cannot hold (complex gradients on real params) raises ``TypeError`` naming the leaf.
      state_cls: NamedTuple holding ``count_field`` (if it has that field), one tree per moment
        and the ``carry`` fields; other fields pass through. A state class without fields
        (``EmptyState``) passes the incoming state through, as Optax's stateless blocks.
      moments: the per-leaf state, in the order the rule takes and returns it.
      step_scalars: ``step_scalars(count, **inputs)`` with ``count`` the step number after the
        increment (1 on the first update; ``None`` without a count field) returns the keyword
        scalars of the rule; a ``PerLeaf`` value gives each leaf its own. It runs under
        ``jax.jit(inline=True)`` (unless it takes ``extra_args``), so an update outside ``jit``
        compiles it once and gets the jitted numbers.
      needs_params: pass each parameter leaf to the rule after ``g``.
      elementwise: the rule uses no reduction over its leaf.
      count_field: the state's step-count field.
      step_inputs: what ``step_scalars`` also takes, as keywords: any of ``'state'`` (the
        incoming state), ``'updates'``, ``'params'``, ``'extra_args'`` (the update's extra
        keyword arguments, spread; the transformation then takes them).
      carry: state fields carried from step to step (scalars or any pytree), with their
        initial values or functions of the params that return them (a nested
        transformation's ``init``); ``step_scalars`` also gets their current values as keywords
        and returns ``(scalars, new_values)``. New values keep the old values' dtypes.
    """
    has_count = count_field is not None and count_field in state_cls._fields
    names = [m.name for m in moments]
    carry = carry or {}

    def init(params):
        fields = {m.name: jax.tree.map(m.init_leaf, params) for m in moments}
        fields.update({name: jax.tree.map(jnp.asarray, value(params) if callable(value) else value)
                       for name, value in carry.items()})
        if has_count:
            fields[count_field] = jnp.zeros([], jnp.int32)
        return state_cls(**fields)

    compiled_scalars = None if step_scalars is None else _compiled(step_scalars)

    def scalars_for(count, state, updates, params, extra_args):
        trees = {"state": state, "updates": updates, "params": params}
        inputs = {name: trees[name] for name in step_inputs if name != "extra_args"}
        inputs.update({name: getattr(state, name) for name in carry})
        if step_scalars is None:
            out = {}
        elif "extra_args" in step_inputs:  # any Python object may come in: no jit
            out = step_scalars(count, **inputs, **extra_args)
        else:
            out = compiled_scalars(count, **inputs)
        return out if carry else (out, {})

    def update(updates, state, params=None, **extra_args):
        if needs_params and params is None:
            raise ValueError(NO_PARAMS_MSG)
        count = safe_increment(getattr(state, count_field)) if has_count else None
        scalars, carried = scalars_for(count, state, updates, params, extra_args)
        per_leaf = {k: v.values for k, v in scalars.items() if isinstance(v, PerLeaf)}
        others = ([params] if needs_params else []) + [getattr(state, n) for n in names]
        other_names = (["params"] if needs_params else []) + [f"state.{n}" for n in names]
        shaped = [True] * needs_params + [not callable(m.init) for m in moments]
        treedef, leaf_lists = plumbing.flatten_matching(updates, others, other_names,
                                                          shaped=shaped)
        new_updates, new_moments = [], [[] for _ in names]
        for i, leaves in enumerate(zip(*leaf_lists)):
            if leaves[0] is None:  # a None update passes through, its state untouched (Optax)
                new_updates.append(None)
                for slot, old in zip(new_moments, leaves[1 + needs_params:]):
                    slot.append(old)
                continue
            out = rule(*leaves, **{**scalars, **{k: v[i] for k, v in per_leaf.items()}})
            u, outs = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
            g = leaves[0]
            if jnp.issubdtype(jnp.result_type(g), jnp.inexact):
                _check_lossless(u, g, "updates", updates, i)
                u = plumbing.cast_like(u, g)
            new_updates.append(jnp.asarray(u))  # integer gradients: float updates, as Optax
            for slot, name, new, old in zip(new_moments, names, outs, leaves[1 + needs_params:]):
                jax.tree.map(lambda n, o, name=name: _check_lossless(n, o, f"state.{name}",
                                                                      updates, i), new, old)
                slot.append(jax.tree.map(plumbing.cast_like, new, old))
        if not state_cls._fields:
            return treedef.unflatten(new_updates), state
        fields = {n: treedef.unflatten(leaves) for n, leaves in zip(names, new_moments)}
        fields.update({k: jax.tree.map(plumbing.cast_like, v, getattr(state, k))
                       for k, v in carried.items()})
        if has_count:
            fields[count_field] = count
        for field in state_cls._fields:
            fields.setdefault(field, getattr(state, field))
        return treedef.unflatten(new_updates), state_cls(**fields)

    if "extra_args" in step_inputs:
        tx = GradientTransformationExtraArgs(init, update)
    else:
        def update_without_extra_args(updates, state, params=None):
            return update(updates, state, params)

        tx = GradientTransformation(init, update_without_extra_args)
    spec = LeafwiseSpec(rule, state_cls, tuple(moments), step_scalars, needs_params, elementwise,
                        tuple(step_inputs), dict(carry))
    kind = (tree_use.PER_LEAF if not spec.per_element
            else tree_use.GLOBAL if {"updates", "params"} & set(step_inputs)
            else tree_use.ELEMENTWISE)
    return tree_use.declare(tx, kind, _name(rule, state_cls), spec=spec)


def _name(rule, state_cls) -> str:
    """The function that built ``rule`` (``clip_by_block_rms`` for a lambda defined there), else
    the rule's or the state class's name."""
    qualname = getattr(rule, "__qualname__", "")
    if ".<locals>" in qualname:
        return qualname.split(".<locals>")[0]
    return qualname or state_cls.__name__
