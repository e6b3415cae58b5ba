"""Partitioning: a different transformation for each labelled group of parameters.

``partition({'adam': adam(...), 'sgd': sgd(...)}, labels)`` runs every group as
``masked(transform, labels == group)``: each transformation sees only its own leaves (the others
are ``MaskedNode()``, so it allocates no state and computes nothing for them). A frozen group
(``set_to_zero()``) therefore costs no optimizer state at all.

Labels are a tree with the params' structure (or a prefix of it) whose leaves name a group, or a
function ``params -> labels`` (e.g. ``gradx.groups.label_by_path``).
"""

from typing import Any, Callable, Hashable, Mapping, NamedTuple, Union

import jax

from gradx import plumbing, tree_use
from gradx.base import (GradientTransformation, GradientTransformationExtraArgs, set_to_zero,
                        with_extra_args_support)
from gradx.masking import masked, resolve_mask


class PartitionState(NamedTuple):
    """One inner state per group, keyed by label (each a ``MaskedState``)."""

    inner_states: Mapping[Hashable, Any]


MultiTransformState = PartitionState


def _check_labels(labels: Any, known: Mapping[Hashable, Any]) -> None:
    """Raises ``ValueError`` naming every path whose label has no transformation."""
    unknown = [(plumbing.path_str(path), label)
               for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]
               if label not in known]
    if unknown:
        listed = ", ".join(f"'{path}' -> {label!r}" for path, label in unknown)
        raise ValueError(
            "Some parameters have no corresponding transformation: "
            f"{listed}. Transforms keys: {sorted(map(repr, known))}.")


def partition(transforms: Mapping[Hashable, GradientTransformation],
              param_labels: Union[Any, Callable[[Any], Any]], *,
              mask_compatible_extra_args: bool = False) -> GradientTransformationExtraArgs:
    """Applies ``transforms[label]`` to the leaves labelled ``label``.

    Same arguments, semantics and state (``PartitionState(inner_states={label: MaskedState})``,
    groups in the order of ``transforms``) as ``optax.partition`` (alias ``multi_transform``).
    A label function is applied to ``params`` in ``init`` and to ``updates`` in ``update``.

    Differs from Optax: an unknown label raises in ``update`` as well as in ``init``, and the
    error lists each offending path with its label.

    Examples:
      >>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
      >>> tx = gradx.partition({"train": gradx.sgd(0.1), "frozen": gradx.set_to_zero()},
      ...                      {"w": "train", "b": "frozen"})
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state)
      >>> print(np.asarray(updates["w"], float).round(4), updates["b"])
      [[-0.1 -0.1]
       [-0.1 -0.1]] [0. 0.]
    """
    declared = dict(transforms)
    transforms = {label: with_extra_args_support(tx) for label, tx in transforms.items()}

    def group_transforms(tree):
        labels = resolve_mask(param_labels, tree)
        _check_labels(labels, transforms)
        return {group: masked(tx, jax.tree.map(lambda label, g=group: label == g, labels),
                              mask_compatible_extra_args=mask_compatible_extra_args)
                for group, tx in transforms.items()}

    def init(params):
        return PartitionState({group: tx.init(params)
                               for group, tx in group_transforms(params).items()})

    def update(updates, state, params=None, **extra_args):
        inner_states = {}
        for group, tx in group_transforms(updates).items():
            updates, inner_states[group] = tx.update(updates, state.inner_states[group], params,
                                                     **extra_args)
        return updates, PartitionState(inner_states)

    groups = tuple(declared)

    def group_mask(group):
        return lambda tree: jax.tree.map(lambda label: label == group,
                                         resolve_mask(param_labels, tree))

    def rebuild(convert, masks):
        # One label per leaf of the masks' tree: the group whose mask holds there (the first
        # group where none does: such a place holds no leaf).
        labels = jax.tree.map(lambda *keep: groups[keep.index(True) if True in keep else 0],
                              *masks)
        return partition({g: convert(i, declared[g]) for i, g in enumerate(groups)}, labels,
                         mask_compatible_extra_args=mask_compatible_extra_args)

    return tree_use.declare(GradientTransformationExtraArgs(init, update), tree_use.BY_PATH,
                            "partition", inner=tuple(declared.values()),
                            masks=tuple(map(group_mask, groups)), rebuild=rebuild)


multi_transform = partition


def freeze(mask: Union[bool, Any]) -> GradientTransformationExtraArgs:
    """Zeros the updates where ``mask`` is True (frozen); other leaves pass through unchanged.

    ``masked(set_to_zero(), mask)``, as ``optax.freeze``; state ``MaskedState(EmptyState())``.
    """
    return masked(set_to_zero(), mask)


def selective_transform(optimizer: GradientTransformation, *,
                        freeze_mask: Union[bool, Any]) -> GradientTransformationExtraArgs:
    """Runs ``optimizer`` on the leaves where ``freeze_mask`` is False and zeros the others.

    ``partition({'train': optimizer, 'freeze': set_to_zero()}, labels)`` as
    ``optax.selective_transform``: the optimizer holds no state for frozen leaves and computes
    nothing for them.
    """

    def labels(tree):
        del tree
        return jax.tree.map(lambda frozen: "freeze" if frozen else "train", freeze_mask)

    return partition({"train": optimizer, "freeze": set_to_zero()}, labels)


__all__ = ["PartitionState", "MultiTransformState", "partition", "multi_transform", "freeze",
           "selective_transform"]
