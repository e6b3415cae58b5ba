"""The flat path's state (``FusedState``) and the conversions between the flat layout and the
reference one (the layout ``tx.init`` builds on the params' tree), in both directions, exact.

The conversions work on any tree holding ``FusedState``s and ``FlatTree``s (flat params), so
that code which stores or reports trees (``gradx.checkpoint``, ``gradx.memory_report``) sees the
reference layout whichever path built them.
"""

import jax
import numpy as np

from gradx.fused.layout import FlatTree, is_flat, offsets, pack
from gradx.masking import MaskedNode


@jax.tree_util.register_pytree_node_class
class FusedState:
    """``fused(tx)``'s state on the flat path: ``inner`` is ``tx``'s state built on the buckets
    (each params-shaped tree a ``FlatTree``; a stage run leaf by leaf keeps its state in the
    reference layout), ``offsets`` where each bucketed leaf starts in its bucket (int32
    scalars, run-time inputs for cutting updates back into leaves: see
    ``gradx.fused.layout.unpack``; empty when the state was built on flat params, whose updates
    stay flat, so that a step has no argument per leaf). ``layout`` and ``reference`` (the
    structure of ``tx.init(params)``) are static."""

    def __init__(self, inner, offsets, layout, reference):
        self.inner, self.offsets = inner, tuple(offsets)
        self.layout, self.reference = layout, reference

    def tree_flatten(self):
        return (self.inner, self.offsets), (self.layout, self.reference)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], children[1], *aux)

    def __repr__(self):
        return f"FusedState(inner={self.inner!r})"


def _is_node(x):
    return isinstance(x, (FlatTree, FusedState))


def _leaves(flat: FlatTree, cut) -> list:
    """The leaves of ``flat`` present (not masked out), each cut from its bucket by ``cut``."""
    out = []
    for (shape, dtype, weak), (b, where) in zip(flat.layout.leaves, flat.layout.slots):
        x = flat.inplace[where] if b is None else flat.buckets[b]
        if isinstance(x, MaskedNode):
            continue
        out.append(x if b is None else cut(x, where, shape, dtype, weak))
    return out


def _convert_to_reference(tree, cut):
    def convert(x):
        if isinstance(x, FusedState):
            leaves = []
            for leaf in jax.tree.leaves(x.inner, is_leaf=is_flat):
                leaves += _leaves(leaf, cut) if is_flat(leaf) else [leaf]
            return x.reference.unflatten(leaves)
        return x.layout.treedef.unflatten(_leaves(x, cut)) if is_flat(x) else x

    return jax.tree.map(convert, tree, is_leaf=_is_node)


def _slice(bucket, where, shape, dtype, weak):
    size = int(np.prod(shape, dtype=np.int64))
    return jax.lax.slice(bucket, (where,), (where + size,)).reshape(shape)


def _abstract_slice(bucket, where, shape, dtype, weak):
    sharding = getattr(bucket, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding):
        sharding = None
    return jax.ShapeDtypeStruct(shape, dtype, weak_type=weak, sharding=sharding)


def to_reference_state(tree):
    """The reference layout of ``tree``: every ``FusedState`` becomes the state ``tx.init``
    builds on the params' tree, and every ``FlatTree`` (flat params) the params' tree (exact:
    slices and reshapes). Anything else passes through unchanged."""
    return _convert_to_reference(tree, _slice)


def reference_like(tree):
    """As ``to_reference_state`` without computing anything: the bucketed leaves become
    ``ShapeDtypeStruct``s (with their bucket's sharding), the others stay as they are. For
    restore targets and memory figures."""
    return _convert_to_reference(tree, _abstract_slice)


def from_reference_like(reference, like):
    """``reference`` (in the reference layout) in the layout of ``like``, a tree with
    ``FusedState``s and ``FlatTree``s where ``reference`` has their reference forms (exact:
    concatenations). ``like`` may hold arrays or ``ShapeDtypeStruct``s."""
    nodes, outer = jax.tree.flatten(like, is_leaf=_is_node)
    leaves, position = jax.tree.leaves(reference), [0]

    def take(n):
        out = leaves[position[0]:position[0] + n]
        position[0] += n
        return out

    def repack(flat):
        present = _leaves(flat, lambda *_: None)
        taken = iter(take(len(present)))
        full = [MaskedNode() if _masked(flat, b, where) else next(taken)
                for b, where in flat.layout.slots]
        return pack(flat.layout.treedef.unflatten(full), flat.layout, "state")

    out = []
    for node in nodes:
        if isinstance(node, FusedState):
            inner, inner_def = jax.tree.flatten(node.inner, is_leaf=is_flat)
            inner = [repack(x) if is_flat(x) else take(1)[0] for x in inner]
            out.append(FusedState(inner_def.unflatten(inner),
                                  offsets(node.layout) if node.offsets else (), node.layout,
                                  node.reference))
        elif is_flat(node):
            out.append(repack(node))
        else:
            out.append(take(1)[0])
    if position[0] != len(leaves):
        raise ValueError(f"from_reference_like: the reference tree has {len(leaves)} leaves, the "
                         f"layout of like holds {position[0]}.")
    return jax.tree.unflatten(outer, out)


def _masked(flat, b, where) -> bool:
    return isinstance(flat.inplace[where] if b is None else flat.buckets[b], MaskedNode)


def from_reference_state(fused_tx, state, params):
    """``fused_tx``'s state from the reference state ``state`` of the same transformation
    (exact: concatenations). ``params`` (a tree or flat params) give the layout."""
    template = jax.eval_shape(fused_tx.init, params)
    if isinstance(template, FusedState):
        if jax.tree.structure(state) != template.reference:
            raise ValueError(f"from_reference_state: the state's structure is "
                             f"{jax.tree.structure(state)}, the transformation's reference state "
                             f"is {template.reference}.")
    return from_reference_like(state, template)


__all__ = ["FusedState", "to_reference_state", "reference_like", "from_reference_like",
           "from_reference_state"]
