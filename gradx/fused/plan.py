"""The plan: how each part of a transformation runs on the bucketed tree, read from what each
part declares (``gradx.tree_use``), never from its trace when it declares something.

Walking the declarations from the top:

* ``ELEMENTWISE`` and ``GLOBAL`` parts run on the buckets as they are (a global norm over the
  buckets is the norm over the leaves; only the order in which its sum adds terms differs);
* ``BY_PATH`` parts (``masked``, ``partition``) are rebuilt around masks of the bucketed tree:
  the layout gives each group of leaves buckets of its own (``group_keys``), so a mask keeps or
  drops whole buckets;
* ``PER_LEAF`` parts (LAMB's trust ratio, Adafactor, block RMS clipping), and parts without a
  declaration that the trace check (``trace_check``) does not find elementwise, run leaf by
  leaf on views of the buckets (``on_views``: the buckets cut into the leaves, the part's
  state in the reference layout, its updates packed back).

A part that runs on views keeps the flat path for flat params (``flatten_params``); given the
params' tree, ``fused`` then runs the reference path instead, since cutting and packing every
step would cost more than the buckets save. ``FusedPlan.views`` says which parts and why.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradx.base import GradientTransformationExtraArgs, with_extra_args_support
from gradx.fused.layout import FlatTree, Layout, abstract_flat, abstract_tree, pack, unpack
from gradx.fused.trace_check import elementwise_reason
from gradx.masking import MaskedNode, mask_tree, resolve_mask
from gradx.tree_use import BY_PATH, PER_LEAF, tree_use


class FusedPlan(NamedTuple):
    """Which path ``fused`` takes for given params: ``flat`` (True: buckets), ``reason`` (why
    not, else ""), ``buckets`` (``(dtype, number of elements)`` per bucket), ``n_bucketed`` and
    ``n_inplace`` (leaves in buckets and kept in place), ``views`` (the parts that run leaf by
    leaf on views of the buckets when the params are flat, each with why)."""

    flat: bool
    reason: str
    buckets: tuple
    n_bucketed: int
    n_inplace: int
    views: tuple = ()


def _abstract(params):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), params)


def _mask_values(mask, tree, index) -> dict:
    """``{leaf index: bool}`` for the leaves of ``tree`` (their indices in ``index``, a tree of
    the same structure) under ``mask``, and the mask resolved."""
    values = resolve_mask(mask, tree)
    subtrees = jax.tree.structure(values).flatten_up_to(index)
    return {i: bool(keep) for keep, sub in zip(jax.tree.leaves(values), subtrees)
            for i in jax.tree.leaves(sub)}, values


def _inner_trees(use, tree, index):
    """Per inner transformation of a declaration: ``(tree, index, leaf values or None, mask)``
    of the leaves it sees."""
    out = []
    for i, _ in enumerate(use.inner_transformations()):
        if use.kind == BY_PATH and i < len(use.masks) and use.masks[i] is not None:
            per_leaf, values = _mask_values(use.masks[i], tree, index)
            out.append((mask_tree(tree, values), mask_tree(index, values), per_leaf))
        else:
            out.append((tree, index, None))
    return out


def group_keys(tx, params) -> list:
    """One hashable key per leaf of ``params``: its value under every mask and label of ``tx``
    (``masked``, ``partition``), so that leaves of one key can share a bucket."""
    tree = _abstract(params)
    leaves, treedef = jax.tree.flatten(tree)
    keys = [()] * len(leaves)

    def walk(tx, tree, index, path):
        use = tree_use(tx)
        if use is None:
            return
        for i, (inner, (sub, sub_index, per_leaf)) in enumerate(
                zip(use.inner_transformations(), _inner_trees(use, tree, index))):
            for leaf, keep in (per_leaf or {}).items():
                keys[leaf] = keys[leaf] + ((path, i, keep),)
            walk(inner, sub, sub_index, f"{path}/{i}")

    walk(tx, tree, treedef.unflatten(range(len(leaves))), "")
    return keys


def _flat_mask(layout: Layout, per_leaf: dict):
    """The mask as a ``FlatTree`` of bools (one per bucket and in-place leaf), or None when a
    bucket holds leaves on both sides of it."""
    buckets = []
    for members in layout.bucket_leaves():
        values = {per_leaf[i] for i in members if i in per_leaf}
        if len(values) > 1:
            return None
        buckets.append(values.pop() if values else False)
    return FlatTree(buckets, [per_leaf.get(i, False) for i in layout.inplace_leaves()], layout)


def _present(layout: Layout, index) -> FlatTree:
    """The abstract bucketed tree of the leaves in ``index``; slots of other leaves masked."""
    present = set(jax.tree.leaves(index))
    flat = abstract_flat(layout)
    buckets = [b if set(m) & present else MaskedNode()
               for b, m in zip(flat.buckets, layout.bucket_leaves())]
    inplace = [x if i in present else MaskedNode()
               for x, i in zip(flat.inplace, layout.inplace_leaves())]
    return FlatTree(buckets, inplace, layout)


def on_views(tx, layout: Layout):
    """``tx`` run leaf by leaf on views of the buckets: the bucketed trees are cut into leaves
    (slices), ``tx`` runs on them with its state in the reference layout, and its updates are
    packed back into buckets."""
    tx = with_extra_args_support(tx)

    def init(params):
        return tx.init(unpack(params))

    def update(updates, state, params=None, **extra_args):
        new, state = tx.update(unpack(updates), state, None if params is None else unpack(params),
                               **extra_args)
        return pack(new, layout, "updates"), state

    return GradientTransformationExtraArgs(init, update)


def _convert(tx, layout: Layout, tree, index, where: str):
    """``(transformation to run on the bucketed tree, [parts on views, with why])``."""
    use = tree_use(tx)
    if use is None:
        why = elementwise_reason(tx, _present(layout, index))
        where = f"{where}{getattr(tx, '__name__', 'an undeclared transformation')}"
        return (tx, []) if why is None else (on_views(tx, layout), [f"{where}: {why}"])
    where = f"{where}{use.name}"
    if use.kind == PER_LEAF:
        return on_views(tx, layout), [f"{where}: reduces over each leaf"]
    inner = use.inner_transformations()
    if not inner:
        return tx, []
    subs = _inner_trees(use, tree, index)
    masks = [None if per_leaf is None else _flat_mask(layout, per_leaf) for _, _, per_leaf in subs]
    if use.rebuild is None or any(m is None for m, (_, _, p) in zip(masks, subs) if p is not None):
        why = "cannot be rebuilt" if use.rebuild is None else "a bucket holds leaves of two groups"
        return on_views(tx, layout), [f"{where}: {why}"]
    done, views = {}, []
    for i, inner_tx in enumerate(inner):  # now, for the views of inner parts built on demand too
        converted, inner_views = _convert(inner_tx, layout, *subs[i][:2], f"{where}[{i}] > ")
        done[i, id(inner_tx)] = inner_tx, converted  # inner_tx kept alive: its id stays its own
        views += [v for v in inner_views if v not in views]

    def convert(i, inner_tx):
        if (i, id(inner_tx)) not in done:  # built by the rebuilt transformation (injected values)
            return _convert(inner_tx, layout, *subs[i][:2], "")[0]
        return done[i, id(inner_tx)][1]

    return use.rebuild(convert, masks), views


class _Plan(NamedTuple):
    converted: GradientTransformationExtraArgs
    views: tuple
    reference: object  # the structure of tx.init on the params' tree


@functools.lru_cache(maxsize=256)
def plan(tx, layout: Layout) -> _Plan:
    """How ``tx`` runs on trees of ``layout`` (cached per transformation and layout)."""
    tree = abstract_tree(layout)
    index = layout.treedef.unflatten(range(len(layout.leaves)))
    converted, views = _convert(tx, layout, tree, index, "")
    reference = jax.tree.structure(jax.eval_shape(with_extra_args_support(tx).init, tree))
    return _Plan(with_extra_args_support(converted), tuple(views), reference)


def describe(tx, layout: Layout) -> FusedPlan:
    """The ``FusedPlan`` of ``tx`` on the params' tree of ``layout``."""
    if not layout.buckets:
        reason, views = "no leaf small enough to bucket", ()
    else:
        views = plan(tx, layout).views
        reason = f"runs leaf by leaf: {views[0]}" if views else ""
    n_inplace = layout.n_inplace
    return FusedPlan(not reason, reason, tuple((name, size) for name, _, size in layout.buckets),
                     len(layout.leaves) - n_inplace, n_inplace, views)
