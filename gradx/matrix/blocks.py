"""Block partitioning: how a parameter leaf becomes stacks of blocks, and back, exactly.

A leaf of any rank is first reshaped by merging small dimensions (``merge_dims``), then each
dimension longer than ``block_size`` is cut into pieces of ``block_size`` and a remainder (the
splits of Google's ``BlockPartitioner`` and Meta's ``multi_dim_split``). The blocks form a grid;
blocks of the same shape are one *group*, held as one stack of shape ``(count, *block_shape)``
with the block axis leading, in row-major grid order. ``LeafBlocks.split`` builds the stacks with
slices and reshapes only, and ``LeafBlocks.merge`` is its exact inverse (no arithmetic touches the
values), so ``merge(split(x)) == x`` bit for bit.

Everything here is static: a plan depends on shapes only and is recomputed at trace time from
the gradient's shape, so nothing about the partition lives in the optimizer state.
"""

import itertools
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp


def merge_dims(shape: Sequence[int], max_dim: int, *, reverse: bool = False) -> tuple[int, ...]:
    """Merges adjacent dimensions while their product stays ``<= max_dim``; drops 1s.

    ``reverse=False`` walks the shape from the first dimension (Google's ``merge_small_dims``, the
    official SOAP ``merge_dims``): ``(1, 2, 512, 1, 2048, 1, 3, 4)`` with ``max_dim=1024`` gives
    ``(1024, 2048, 12)``. ``reverse=True`` walks from the last one (Meta's ``merge_small_dims``
    with ``target_tensor_dimensionality=1``): ``(2, 3, 3, 4)`` with 10 gives ``(2, 9, 4)``
    where the forward walk gives ``(6, 3, 4)``. All-ones shapes give ``(1,)``, ``()`` stays ``()``.

    Examples:
      >>> gradx.matrix.merge_dims((1, 2, 512, 1, 2048, 1, 3, 4), 1024)
      (1024, 2048, 12)
      >>> gradx.matrix.merge_dims((2, 3, 3, 4), 10, reverse=True)
      (2, 9, 4)
    """
    shape = tuple(int(d) for d in shape)
    dims = [d for d in (shape[::-1] if reverse else shape) if d != 1]
    if not dims:
        return (1,) if shape else ()
    merged = [dims[0]]
    for d in dims[1:]:
        if merged[-1] * d <= max_dim:
            merged[-1] *= d
        else:
            merged.append(d)
    return tuple(merged[::-1]) if reverse else tuple(merged)


class Part(NamedTuple):
    """A run of equal pieces along one dimension: ``count`` pieces of ``size`` from ``start``."""

    start: int
    count: int
    size: int


def split_dim(length: int, block_size: Optional[int]) -> tuple[Part, ...]:
    """The pieces of one dimension: ``length // block_size`` full blocks and a remainder
    (one part when ``block_size`` is None or not smaller than ``length``)."""
    if not block_size or length <= block_size:
        return (Part(0, 1, length),)
    count, rest = divmod(length, block_size)
    parts = (Part(0, count, block_size),)
    return parts + ((Part(count * block_size, 1, rest),) if rest else ())


class BlockGroup(NamedTuple):
    """The blocks of one shape within a leaf: one ``Part`` per dimension."""

    parts: tuple[Part, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of each block."""
        return tuple(p.size for p in self.parts)

    @property
    def count(self) -> int:
        """How many blocks the group holds (the stack's leading axis)."""
        return math.prod(p.count for p in self.parts)


class LeafBlocks(NamedTuple):
    """The static partition of one leaf: its shape, its merged shape and its block groups
    (the cartesian product of each dimension's parts, row-major)."""

    shape: tuple[int, ...]
    merged: tuple[int, ...]
    parts: tuple[tuple[Part, ...], ...]

    @property
    def groups(self) -> tuple[BlockGroup, ...]:
        return tuple(BlockGroup(p) for p in itertools.product(*self.parts))

    def split(self, x: jax.Array) -> list[jax.Array]:
        """The leaf as one stack ``(count, *block_shape)`` per group."""
        x = jnp.reshape(x, self.merged)
        stacks = []
        for group in self.groups:
            region = x[tuple(slice(p.start, p.start + p.count * p.size) for p in group.parts)]
            rank = len(group.parts)
            interleaved = [n for p in group.parts for n in (p.count, p.size)]
            region = region.reshape(interleaved).transpose(
                tuple(range(0, 2 * rank, 2)) + tuple(range(1, 2 * rank, 2)))
            stacks.append(region.reshape((group.count,) + group.shape))
        return stacks

    def merge(self, stacks: Sequence[jax.Array]) -> jax.Array:
        """The exact inverse of ``split``: stacks back to a leaf of ``self.shape``."""
        regions = []
        for group, stack in zip(self.groups, stacks):
            rank = len(group.parts)
            counts = tuple(p.count for p in group.parts)
            region = stack.reshape(counts + group.shape)
            order = [i for d in range(rank) for i in (d, rank + d)]
            region = region.transpose(order).reshape(
                tuple(p.count * p.size for p in group.parts))
            regions.append(region)
        if len(regions) == 1:
            merged = regions[0]
        else:
            grid = [len(p) for p in self.parts]
            merged = jnp.block(_nest(regions, grid))
        return jnp.reshape(merged, self.shape)


def _nest(items: list, grid: Sequence[int]) -> list:
    """A flat row-major list as nested lists of the grid's shape (for ``jnp.block``)."""
    if len(grid) == 1:
        return list(items)
    step = len(items) // grid[0]
    return [_nest(items[i * step:(i + 1) * step], grid[1:]) for i in range(grid[0])]


def plan_blocks(shape: Sequence[int], block_size: Optional[int] = None,
                merge_size: Optional[int] = None, *, reverse: bool = False,
                promote_scalar: bool = False) -> LeafBlocks:
    """The partition of a leaf of ``shape``: dimensions merged up to ``merge_size`` (None: not
    merged), then cut into ``block_size`` pieces (None: not cut). ``promote_scalar`` treats a 0-d
    leaf as ``(1,)`` (Meta's Shampoo); otherwise it stays one 0-d block."""
    shape = tuple(int(d) for d in shape)
    merged = shape if merge_size is None else merge_dims(shape, merge_size, reverse=reverse)
    if promote_scalar and not merged:
        merged = (1,)
    return LeafBlocks(shape, merged, tuple(split_dim(d, block_size) for d in merged))


__all__ = ["merge_dims", "plan_blocks", "split_dim", "LeafBlocks", "BlockGroup", "Part"]
