"""Stacking: one batched call per block shape, whatever the number of leaves and blocks.

``map_stacked(fn, items)`` takes a list of items, each a tuple of arrays whose leading axis is a
block axis (``(count, d, d)`` factor stacks, ``(count, m, n)`` matrices) and, optionally, static
Python values (an exponent), concatenates the items of the same key (the trailing shapes and
dtypes of their arrays and their static values) along that axis, calls ``fn`` once per key on
the concatenation, and splits the results back in the items' order.
So every factor of size ``d`` in the model, from any leaf or block, goes through one ``eigh`` (or
``qr``, Newton-Schulz, coupled-Newton root) call.

The calls run one after another: each array input of a call gets an exact zero computed from
the previous call's result (``_after``); every input, since a call's LAPACK work may read any
of them (PSGD-Kron's triangular solves read the noise, its second input: ordering the first
input only let two solves run at once and hung a 2-core run). On CPU, JAX's batched LAPACK
kernels (``eigh``, ``qr``) split their batch over XLA's intra-op thread pool and block until it is done, so two such calls
running at once can take every thread of a small pool and deadlock (seen with two ``eigh``
calls on a 2-thread pool); XLA's CPU backend drops optimisation barriers, so the order has to be
a data dependency. Each call is itself batched, so the order costs little.

Sharding: ``shard_blocks(tx, axis)`` runs ``tx`` with every concatenation split over the mesh
axis ``axis`` just before ``fn`` (padded with copies of its last block to a multiple of the
axis size, then ``gradx.sharding.spread_blocks``), so each device computes its share of roots,
bases or Newton-Schulz iterations; splitting the result back gathers them (the design of
Google's ``_pmap_compute_preconditioners``, with GSPMD instead of ``pmap``). Nothing else in the
engine changes: the block axis leads every stack and the optimizer state.
"""

import contextvars
from typing import Any, Callable, Hashable, Optional, Sequence

import jax
import jax.numpy as jnp

from gradx import sharding
from gradx.base import (GradientTransformation, GradientTransformationExtraArgs,
                        with_extra_args_support)

# (axis, mesh) while a ``shard_blocks`` transformation runs its inner update (at trace time).
_SPREAD: contextvars.ContextVar = contextvars.ContextVar("gradx_spread_blocks", default=None)


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _key(item: Sequence[Any]) -> Hashable:
    return tuple((tuple(x.shape[1:]), jnp.result_type(x).name) if _is_array(x) else x
                 for x in item)


def _after(x: jax.Array, previous: Any) -> jax.Array:
    """``x`` plus a zero computed from every array of ``previous`` (exactly ``x``, NaNs in
    ``previous`` or not), so that ``x``'s consumers run after all of ``previous`` is computed.
    Every array: a call's outputs are not ready together (SOAP's refresh returns a sort order
    computed before its ``qr``; a zero from the order alone let two ``qr`` calls run at once)."""
    firsts = [jnp.ravel(leaf)[0] for leaf in jax.tree.leaves(previous) if leaf.size]
    return x + sum((v == v).astype(x.dtype) for v in firsts) * 0


def map_stacked(fn: Callable[..., Any], items: Sequence[Sequence[Any]]) -> list:
    """``fn(*stacked)`` once per key over the items concatenated along axis 0.

    Args:
      fn: takes one argument per position of an item: the concatenated arrays (block axis
        leading) and the static values as they are; returns a pytree whose leaves all have the
        block axis leading.
      items: tuples of arrays with the same leading size, and static hashable values.

    Returns:
      One result per item, in the items' order: ``fn``'s pytree sliced to that item's rows.
    """
    groups: dict = {}
    for index, item in enumerate(items):
        groups.setdefault(_key(item), []).append(index)
    done: list = []  # (indices, fn's output) per key, in order
    for indices in groups.values():
        members = [items[i] for i in indices]
        stacked = [(jnp.concatenate(column) if len(column) > 1 else column[0])
                   if _is_array(column[0]) else column[0] for column in zip(*members)]
        if done:
            stacked = [_after(x, done[-1][1]) if _is_array(x) else x for x in stacked]
        spread = _SPREAD.get()
        if spread is not None:
            stacked = _spread(stacked, *spread)
        done.append((indices, fn(*stacked)))
    results: list = [None] * len(items)
    for indices, out in done:
        start = 0
        for i in indices:
            size = next(x for x in items[i] if _is_array(x)).shape[0]
            results[i] = jax.tree.map(lambda x, a=start, b=start + size: x[a:b], out)
            start += size
    return results


def _spread(stacked: list, axis: str, mesh: Optional[jax.sharding.Mesh]) -> list:
    """The arrays of ``stacked`` padded to a multiple of the mesh axis' size with copies of
    their last block (rows past the items' own, never read back) and split over it."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh.empty:
        return stacked
    sharding.check_axis(mesh, axis)
    ways = mesh.shape[axis]

    def pad(x):
        extra = -x.shape[0] % ways
        return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)]) if extra else x

    return [sharding.spread_blocks(pad(x), axis, mesh) if _is_array(x) else x for x in stacked]


def shard_blocks(tx: GradientTransformation, axis: str,
                 mesh: Optional[jax.sharding.Mesh] = None) -> GradientTransformationExtraArgs:
    """``tx`` (Shampoo, SOAP, Muon, PSGD-Kron, any optimizer of the matrix engine) with each
    batched matrix call split over the mesh axis ``axis`` along its block axis: every device
    computes the roots, eigenbases or Newton-Schulz iterations of its share of the blocks of
    each shape, instead of all of them (with replicated or data-parallel params, the same work
    on every device). Same state, same numbers (round-off aside).

    ``mesh`` defaults to the mesh context at update time (``jax.set_mesh``); without one, ``tx``
    runs unchanged. A batch is padded to a multiple of the axis size with copies of its last
    block. Raises ``ValueError`` when ``axis`` is not an axis of the mesh.

    Example: ``tx = gradx.shard_blocks(gradx.shampoo(1e-3), "data")``, then under
    ``jax.set_mesh(mesh)`` the jitted step runs each device's ``eigh`` on 1/|data| of the
    factors.
    """
    if not isinstance(axis, str):
        raise ValueError(f"axis must be a mesh axis name, got axis={axis!r}.")
    if mesh is not None:
        sharding.check_axis(mesh, axis)
    tx = with_extra_args_support(tx)

    def update(updates, state, params=None, **extra_args):
        token = _SPREAD.set((axis, mesh))
        try:
            return tx.update(updates, state, params, **extra_args)
        finally:
            _SPREAD.reset(token)

    return GradientTransformationExtraArgs(tx.init, update)


__all__ = ["map_stacked", "shard_blocks"]
