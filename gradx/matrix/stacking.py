"""Stacking: one batched call per block shape, whatever the number of leaves and blocks.

``map_stacked(fn, items)`` takes a list of items, each a tuple of arrays whose leading axis is a
block axis (``(count, d, d)`` factor stacks, ``(count, m, n)`` matrices) and, optionally, static
Python values (an exponent), concatenates the items of the same key (the trailing shapes and
dtypes of their arrays and their static values) along that axis, calls ``fn`` once per key on
the concatenation, and splits the results back in the items' order.
So every factor of size ``d`` in the model, from any leaf or block, goes through one ``eigh`` (or
``qr``, Newton-Schulz, coupled-Newton root) call.

The calls run one after another: each call's first input gets an exact zero computed from the
previous call's result (``_after``). On CPU, JAX's batched LAPACK kernels (``eigh``, ``qr``)
split their batch over XLA's intra-op thread pool and block until it is done, so two such calls
running at once can take every thread of a small pool and deadlock (seen with two ``eigh``
calls on a 2-thread pool); XLA's CPU backend drops optimisation barriers, so the order has to be
a data dependency. Each call is itself batched, so the order costs little.

Sharding: the concatenated arrays are where a mesh axis would be spread over the blocks. A
``jax.lax.with_sharding_constraint(stacked, NamedSharding(mesh, P(axis)))`` on each array of
``stacked`` (padded to a multiple of the axis size) in ``map_stacked``, just before ``fn``, makes
each device compute its share of roots; splitting the result back gathers them (the design of
Google's ``_pmap_compute_preconditioners``, with GSPMD instead of ``pmap``). Nothing else in the
engine needs to change: the block axis leads every stack and the optimizer state.
"""

from typing import Any, Callable, Hashable, Sequence

import jax
import jax.numpy as jnp


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
            stacked[0] = _after(stacked[0], done[-1][1])
        done.append((indices, fn(*stacked)))
    results: list = [None] * len(items)
    for indices, out in done:
        start = 0
        for i in indices:
            size = next(x for x in items[i] if _is_array(x)).shape[0]
            results[i] = jax.tree.map(lambda x, a=start, b=start + size: x[a:b], out)
            start += size
    return results


__all__ = ["map_stacked"]
