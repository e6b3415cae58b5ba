"""The bucketed layout: which leaf goes in which flat buffer ("bucket"), at which offset, and the
``FlatTree`` that holds a tree in that form.

Leaves are bucketed by dtype, by group (the masks and labels of the transformation that will run
on them, so that each bucket lies wholly inside or outside every mask) and by placement (leaves
replicated on the same devices); a leaf of ``inplace_min_size`` elements or more, or one that is
sharded, stays as it is. Packing and unpacking are slices, reshapes and concatenations: exact.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradx.masking import MaskedNode

DEFAULT_INPLACE_MIN_SIZE = 1 << 14


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static description of a bucketed tree (hashable, so it can be pytree metadata).

    ``treedef``: the tree's structure; ``leaves[i] = (shape, dtype, weak_type)``;
    ``slots[i] = (bucket, offset)`` for a bucketed leaf, ``(None, position among the in-place
    leaves)`` for a leaf kept in place; ``buckets``: ``(dtype name, weak_type, size)`` per bucket.
    """

    treedef: Any
    leaves: tuple
    slots: tuple
    buckets: tuple
    n_inplace: int

    def bucket_leaves(self) -> list:
        """The indices of the leaves in each bucket."""
        out = [[] for _ in self.buckets]
        for i, (b, _) in enumerate(self.slots):
            if b is not None:
                out[b].append(i)
        return out

    def inplace_leaves(self) -> list:
        """The indices of the leaves kept in place, in order."""
        return [i for i, (b, _) in enumerate(self.slots) if b is None]


def _aval(x):
    aval = jax.typeof(x)
    return tuple(aval.shape), np.dtype(aval.dtype), bool(getattr(aval, "weak_type", False))


def placement(x):
    """Where a leaf lives, as a hashable key: ``(mesh axes and sizes,)`` for a leaf replicated on
    a mesh (or on one device: ``((),)``), None for a sharded leaf (it stays in place)."""
    sharding = getattr(jax.typeof(x), "sharding", None)  # arrays, tracers, ShapeDtypeStructs
    spec, mesh = getattr(sharding, "spec", None), getattr(sharding, "mesh", None)
    if spec is None or mesh is None:  # a single device, or nothing known
        return ((),)
    if any(axis is not None for axis in spec):
        return None
    return (tuple(mesh.shape.items()),)


def build(tree, inplace_min_size: int, groups=None) -> Layout:
    """The layout of ``tree``: ``groups[i]`` (hashable, default all equal) is leaf ``i``'s group."""
    leaves, treedef = jax.tree.flatten(tree)
    groups = groups or [()] * len(leaves)
    avals = tuple(_aval(x) for x in leaves)
    keys, sizes, slots, n_inplace = [], [], [], 0
    for x, (shape, dtype, weak), group in zip(leaves, avals, groups):
        size = int(np.prod(shape, dtype=np.int64))
        where = placement(x)
        if size >= inplace_min_size or where is None:
            slots.append((None, n_inplace))
            n_inplace += 1
            continue
        key = (dtype.name, weak, group, where)
        if key not in keys:
            keys.append(key)
            sizes.append(0)
        b = keys.index(key)
        slots.append((b, sizes[b]))
        sizes[b] += size
    buckets = tuple((name, weak, size) for (name, weak, _, _), size in zip(keys, sizes))
    return Layout(treedef, avals, tuple(slots), buckets, n_inplace)


@jax.tree_util.register_pytree_node_class
class FlatTree:
    """A tree in bucketed form: ``buckets`` (one flat buffer per dtype and group of small leaves)
    and ``inplace`` (the leaves kept as they are), with the layout to get the tree back. A slot
    holds ``MaskedNode()`` where a mask left its leaves out (inside ``masked``/``partition``)."""

    def __init__(self, buckets, inplace, layout):
        self.buckets, self.inplace, self.layout = tuple(buckets), tuple(inplace), layout

    def tree_flatten(self):
        return (self.buckets, self.inplace), self.layout

    @classmethod
    def tree_unflatten(cls, layout, children):
        return cls(children[0], children[1], layout)

    def __repr__(self):
        return f"FlatTree(buckets={self.buckets}, inplace={self.inplace})"

    def __contains__(self, key) -> bool:
        """No key: code that looks for one in the params (Flax's ``TrainState`` looks for
        ``'overwrite_with_gradient'``) treats flat params as plain params."""
        return False


def is_flat(x) -> bool:
    return isinstance(x, FlatTree)


def _is_masked(x) -> bool:
    return isinstance(x, MaskedNode)


def pack(tree, layout: Layout, name: str) -> FlatTree:
    """``tree`` in bucketed form. Only its leaves must match the layout (count, shapes, dtypes):
    the containers may differ, as nnx params held in ``nnx.Param`` variables and gradients as
    plain arrays do. ``MaskedNode()`` leaves (a masked tree) fill whole slots."""
    leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_masked)
    if len(leaves) != len(layout.leaves):
        raise ValueError(f"fused: {name} has {len(leaves)} leaves ({treedef}), the state was built "
                         f"for {len(layout.leaves)} ({layout.treedef}).")
    parts = [[] for _ in layout.buckets]
    inplace = []
    for i, (x, (shape, dtype, _), (b, _)) in enumerate(zip(leaves, layout.leaves, layout.slots)):
        if not _is_masked(x) and (tuple(jnp.shape(x)) != shape or jnp.result_type(x) != dtype):
            path = jax.tree_util.keystr(
                jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_masked)[0][i][0])
            raise ValueError(f"fused: {name}{path} is {jnp.result_type(x)}{list(jnp.shape(x))}, the "
                             f"layout expects {dtype}{list(shape)} (the params' shape and dtype).")
        if b is None:
            inplace.append(x)
        else:
            parts[b].append(x if _is_masked(x) else jnp.ravel(x))
    return FlatTree([_concatenate(p, name) for p in parts], inplace, layout)


def _concatenate(parts, name):
    masked = [_is_masked(p) for p in parts]
    if all(masked):
        return MaskedNode()
    if any(masked):
        raise ValueError(f"fused: {name} masks some leaves of a bucket and not others; build the "
                         "layout with the transformation's masks (flatten_params(params, tx=tx)).")
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def unpack(flat: FlatTree, offsets=None, treedef=None):
    """The tree from ``flat`` (a ``MaskedNode()`` for each leaf of a masked slot). With
    ``offsets`` (int32 scalars, one per bucketed leaf, passed in at run time) every leaf is cut
    out by a ``dynamic_slice`` whose start is an input rather than a constant, so all the leaves
    of one shape share one compiled kernel: XLA compiles a kernel per distinct fused
    computation, and constant offsets would make each leaf's distinct (seconds of compile time
    per thousand leaves; so would one array of offsets indexed by leaf: 79 s instead of 3 s at
    1000 leaves). ``treedef`` (default: the layout's) is the structure to give the leaves."""
    layout = flat.layout
    leaves, k = [], 0
    for (shape, _, _), (b, where) in zip(layout.leaves, layout.slots):
        if b is None:
            leaves.append(flat.inplace[where])
            continue
        size = int(np.prod(shape, dtype=np.int64))
        bucket = flat.buckets[b]
        if _is_masked(bucket):
            piece = bucket
        elif offsets is None:
            piece = jax.lax.slice(bucket, (where,), (where + size,)).reshape(shape)
        else:
            piece = jax.lax.dynamic_slice(bucket, (offsets[k],), (size,)).reshape(shape)
        leaves.append(piece)
        k += 1
    return (layout.treedef if treedef is None else treedef).unflatten(leaves)


def offsets(layout: Layout) -> tuple:
    """Where each bucketed leaf starts in its bucket, as int32 scalars (see ``unpack``)."""
    return tuple(jnp.asarray(where, jnp.int32) for b, where in layout.slots if b is not None)


def abstract_flat(layout: Layout) -> FlatTree:
    buckets = [jax.ShapeDtypeStruct((size,), np.dtype(name), weak_type=weak)
               for name, weak, size in layout.buckets]
    inplace = [jax.ShapeDtypeStruct(shape, dtype, weak_type=weak)
               for (shape, dtype, weak), (b, _) in zip(layout.leaves, layout.slots) if b is None]
    return FlatTree(buckets, inplace, layout)


def abstract_tree(layout: Layout):
    """The tree's leaves as ``ShapeDtypeStruct``s, in its structure."""
    return layout.treedef.unflatten(
        [jax.ShapeDtypeStruct(shape, dtype, weak_type=weak) for shape, dtype, weak in layout.leaves])


def flatten_params(params, inplace_min_size: int = DEFAULT_INPLACE_MIN_SIZE, *,
                   tx=None) -> FlatTree:
    """``params`` in bucketed form, to keep them flat from step to step (the fastest use of
    ``fused``: updates then come back as a ``FlatTree`` too, and ``apply_updates`` runs a few
    kernels instead of one per leaf). ``unflatten_params`` gives the tree back.

    ``tx``: the transformation that will run on them, whose masks and groups (``masked``,
    ``partition``, ``adamw(mask=...)``) then get buckets of their own, so that those stages run
    on whole buckets too (without it they run leaf by leaf on views of the buckets).
    """
    from gradx.fused.plan import group_keys  # the plan reads the layout; groups read the plan

    groups = None if tx is None else group_keys(tx, params)
    return pack(params, build(params, inplace_min_size, groups), "params")


def unflatten_params(flat: FlatTree):
    """The params' tree from a ``FlatTree`` (slices and reshapes, exact).

    Differentiable: the gradient of a loss of ``unflatten_params(flat)`` with respect to
    ``flat`` is a ``FlatTree``, the leaves' gradients packed into the buckets with one
    concatenation per bucket. (Autodiff's own transpose of the slices would pad every leaf's
    gradient to the size of its bucket and add them up: a bucket-sized addition per leaf, which
    made a step on a 260-leaf model 10x slower.)
    """
    return _differentiable_unpack(flat.layout)(flat.buckets, flat.inplace)


@functools.lru_cache(maxsize=64)
def _differentiable_unpack(layout: Layout):
    """``unpack`` for one layout, whose gradient packs the leaves' gradients (see above)."""

    @jax.custom_vjp
    def unpack_leaves(buckets, inplace):
        return unpack(FlatTree(buckets, inplace, layout))

    def forward(buckets, inplace):
        return unpack_leaves(buckets, inplace), None

    def backward(_, cotangent):
        packed = pack(cotangent, layout, "cotangent")
        return packed.buckets, packed.inplace

    unpack_leaves.defvjp(forward, backward)
    return unpack_leaves
