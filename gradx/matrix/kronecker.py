"""Kronecker-factored preconditioners over blocks: the part of the engine every matrix
optimizer shares.

For a block ``G`` of order ``k`` (a stack ``(count, s₀, …, s_{k-1})``) a *factor* of axis ``i``
is a ``(count, sᵢ, sᵢ)`` stack of matrices; its statistic is the Gram matrix of the axis,
``G_(i) G_(i)ᵀ`` (``gram``), and a matrix ``M`` acts on the axis by the mode product
``G ×ᵢ M`` (``mode_product``). A leaf's factors are nested tuples: one tuple per block group
(``gradx.matrix.LeafBlocks``), holding one stack per factored axis. Whole-model work on factors
goes through ``map_factors``, which runs a function once per factor size over every leaf's
factors stacked together, and ``refresh``, which recomputes them only on the steps a scalar
predicate selects (one ``lax.cond``, traced once: refresh and non-refresh steps share the
compiled step) and keeps the previous value of any factor whose new value is non-finite or
failed, counting the failures.

Statistics and roots live in ``statistics_dtype(param)``: float32, or the param's dtype when it
is wider (bf16 params get float32 statistics).
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from gradx.matrix.blocks import LeafBlocks, plan_blocks
from gradx.matrix.stacking import map_stacked

_LETTERS = "abcdefghijklmnopqrstuvwxy"


def statistics_dtype(x) -> jnp.dtype:
    """float32, or ``x``'s dtype when it is a wider float."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


class FactorPlan(NamedTuple):
    """A leaf's blocks and which of the merged axes carry a factor."""

    blocks: LeafBlocks
    factored: tuple[bool, ...]

    @property
    def num_factors(self) -> int:
        """Factored axes per block (``2 × num_factors`` is Shampoo's default root)."""
        return sum(self.factored)

    @property
    def preconditioned(self) -> bool:
        """False when no axis has a factor: the optimizer's diagonal fallback runs instead."""
        return any(self.factored)

    def factor_sizes(self) -> list[list[int]]:
        """For each block group, the sizes of its factored axes."""
        return [[s for s, f in zip(g.shape, self.factored) if f] for g in self.blocks.groups]


def plan_leaf(shape: Sequence[int], *, block_size: Optional[int] = None,
              merge_size: Optional[int] = None, reverse: bool = False,
              promote_scalar: bool = False, max_factor_size: Optional[int] = None,
              select: Optional[Callable[[tuple[int, ...]], Sequence[bool]]] = None,
              enabled: bool = True) -> FactorPlan:
    """The factor plan of a leaf of ``shape``: ``gradx.matrix.plan_blocks`` then one factor per
    merged axis, except axes longer than ``max_factor_size``, axes ``select(merged_shape)`` turns
    off, or every axis when ``enabled`` is False (a leaf the optimizer leaves to its fallback)."""
    blocks = plan_blocks(shape, block_size, merge_size, reverse=reverse,
                         promote_scalar=promote_scalar)
    merged = blocks.merged
    chosen = tuple(select(merged)) if select is not None else (True,) * len(merged)
    factored = tuple(bool(enabled and c and (max_factor_size is None or d <= max_factor_size))
                     for d, c in zip(merged, chosen))
    return FactorPlan(blocks, factored)


# ---------------------------------------------------------------------------------------------
# Per-block operations

def gram(x: jax.Array, axis: int, precision=None) -> jax.Array:
    """``G_(i) G_(i)ᵀ`` for every block of a stack ``x`` of shape ``(count, *block)``: the
    contraction of all block axes but ``axis``; shape ``(count, s, s)``."""
    sub = _LETTERS[:x.ndim - 1]
    other = sub.replace(sub[axis], "z")
    return jnp.einsum(f"Z{sub},Z{other}->Z{sub[axis]}z", x, x, precision=precision)


def mode_product(x: jax.Array, m: jax.Array, axis: int, *, transpose: bool = False,
                 precision=None) -> jax.Array:
    """``y_{…j…} = Σᵢ x_{…i…} M_{ij}`` along block axis ``axis`` for every block of the stack
    (``transpose``: ``Σⱼ x_{…j…} M_{ij}``); ``m`` is ``(count, s, s)``."""
    sub = _LETTERS[:x.ndim - 1]
    out = sub.replace(sub[axis], "z")
    msub = f"z{sub[axis]}" if transpose else f"{sub[axis]}z"
    return jnp.einsum(f"Z{sub},Z{msub}->Z{out}", x, m, precision=precision)


def precondition(plan: FactorPlan, stacks: Sequence[jax.Array], mats: Sequence[Sequence[jax.Array]],
                 *, transpose: bool = False, precision=None) -> list[jax.Array]:
    """Each group's stack multiplied along every factored axis by that axis' matrices."""
    out = []
    for stack, group_mats in zip(stacks, mats):
        factors = iter(group_mats)
        for axis, factored in enumerate(plan.factored):
            if factored:
                stack = mode_product(stack, next(factors).astype(stack.dtype), axis,
                                     transpose=transpose, precision=precision)
        out.append(stack)
    return out


def grams(plan: FactorPlan, stacks: Sequence[jax.Array], precision=None) -> tuple:
    """The statistics of one step: per group, the Gram matrix of each factored axis."""
    return tuple(tuple(gram(stack, axis, precision) for axis, f in enumerate(plan.factored) if f)
                 for stack in stacks)


def init_factors(plan: FactorPlan, make: Callable[[int, int], jax.Array]) -> tuple:
    """Per group, ``make(count, size)`` for each factored axis."""
    return tuple(tuple(make(group.count, s) for s, f in zip(group.shape, plan.factored) if f)
                 for group in plan.blocks.groups)


def eye_stack(dtype) -> Callable[[int, int], jax.Array]:
    """``make`` for ``init_factors``: ``count`` identity matrices."""
    return lambda count, size: jnp.broadcast_to(jnp.eye(size, dtype=dtype), (count, size, size))


# ---------------------------------------------------------------------------------------------
# Whole-model operations on factors

def map_factors(fn: Callable[..., Any], *per_leaf: Sequence[Any], outputs: int = 1) -> list:
    """``fn`` on every factor of every leaf, one call per factor size (``map_stacked``).

    ``per_leaf[j]`` is a list over leaves of nested factor tuples (or anything with that
    structure: one ``(count,)`` array, or one static Python value such as an exponent, per
    factor; static values split the batches); ``fn`` gets the stacked arrays (and the static
    values) of every ``per_leaf`` position and returns ``outputs`` arrays with the block axis
    leading. Returns ``outputs`` lists over leaves, each nested as ``per_leaf[0]``.
    """
    flat0, treedef = jax.tree.flatten(list(per_leaf[0]))
    flats = [flat0] + [treedef.flatten_up_to(list(tree)) for tree in per_leaf[1:]]
    results = map_stacked(lambda *xs: tuple(fn(*xs)) if outputs > 1 else (fn(*xs),),
                          list(zip(*flats)))
    return [treedef.unflatten([r[k] for r in results]) for k in range(outputs)]


def keep_failed(new: Any, ok: Any, old: Any, failures: Any) -> tuple[Any, Any, Any]:
    """``new`` where it is finite and ``ok`` (one bool per matrix: arrays of shape ``(count,)``
    nested as ``failures``), else ``old``; failure counts grow by 1 where ``old`` was kept.
    Returns ``(values, failures, ok)``: a failed root never reaches an update as NaN."""
    ok = jax.tree.map(lambda k, v: k & jnp.all(jnp.isfinite(v), axis=tuple(range(1, v.ndim))),
                      ok, new)
    kept = jax.tree.map(lambda k, v, o: jnp.where(
        k.reshape(k.shape + (1,) * (v.ndim - 1)), v, o).astype(o.dtype), ok, new, old)
    counts = jax.tree.map(lambda k, n: n + (~k).astype(n.dtype), ok, failures)
    return kept, counts, ok


def refresh(predicate: jax.Array, compute: Callable[[], tuple[Any, Any]], values: Any,
            failures: Any) -> tuple[Any, Any]:
    """Recomputes factors when the scalar ``predicate`` holds; returns ``(values, failures)``.

    ``compute()`` returns ``(new_values, ok)``; ``keep_failed`` keeps the previous value of any
    matrix that failed and counts it. One ``lax.cond`` on the scalar: no retrace between
    refresh and non-refresh steps, and no root work on the steps that skip it.
    """
    return lax.cond(predicate, lambda: keep_failed(*compute(), values, failures)[:2],
                    lambda: (values, failures))


def fallback_notes(factors: Any, params: Any, note: str) -> list[str]:
    """``note`` for each parameter leaf whose factors (in the nested per-leaf layout of a state
    field) are empty, ``''`` for the others: what a state's ``memory_notes`` returns."""
    subtrees = jax.tree.structure(params).flatten_up_to(factors)
    return [note if type(sub) is tuple and not jax.tree.leaves(sub) else "" for sub in subtrees]


__all__ = ["FactorPlan", "plan_leaf", "statistics_dtype", "gram", "mode_product", "precondition",
           "grams", "init_factors", "eye_stack", "map_factors", "refresh", "keep_failed",
           "fallback_notes"]
