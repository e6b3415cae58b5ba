"""torch parameter groups: one optimizer per group of leaves, each with its own hyperparameters.

torch::

    torch.optim.SGD([{"params": model.body.parameters()},
                     {"params": model.head.parameters(), "lr": 1e-3, "weight_decay": 0.0}],
                    lr=1e-2, momentum=0.9, weight_decay=1e-4)

gradx::

    labels = {"body": ..., "head": ...}   # the params tree with a group name at every leaf
    tx = torch_compat.param_groups(
        torch_compat.sgd, labels,
        {"body": {}, "head": {"lr": 1e-3, "weight_decay": 0.0}},
        lr=1e-2, momentum=0.9, weight_decay=1e-4)

Every group runs the optimizer built from ``{**defaults, **group}`` on its own leaves (through
``gradx.masked``), so the numbers equal torch's group by group. To add a plateau scheduler or
clipping per group, pass a function that builds the chain as ``optimizer``.
"""

from typing import Any, Callable, Mapping

import jax

from gradx import plumbing
from gradx.base import GradientTransformation, GradientTransformationExtraArgs
from gradx.combine import chain
from gradx.masking import masked, resolve_mask


def param_groups(optimizer: Callable[..., GradientTransformation], labels: Any,
                 groups: Mapping[str, Mapping[str, Any]], **defaults: Any
                 ) -> GradientTransformationExtraArgs:
    """One ``optimizer(**{**defaults, **groups[name]})`` per group, applied to the leaves whose
    label is ``name``.

    Args:
      optimizer: a function returning a transformation, e.g. ``torch_compat.adamw``.
      labels: a tree with the params' structure of group names, or a function ``params -> labels``.
      groups: group name -> hyperparameters overriding ``defaults`` (torch's per-group dicts
        without ``"params"``), in torch's group order.
      defaults: the optimizer's keyword arguments shared by every group (torch's defaults).

    The state is a tuple with one ``MaskedState`` per group, in ``groups`` order. torch numbers
    parameters group by group; ``torch_indices(labels, groups)`` gives that numbering for the state
    dict conversion. Raises ``ValueError`` naming a leaf whose label is not a group.
    """
    names = list(groups)

    def check_labels(tree):
        label_tree = resolve_mask(labels, tree)
        for path, label in zip(plumbing.leaf_paths(label_tree), jax.tree.leaves(label_tree)):
            if label not in groups:
                raise ValueError(f"parameter '{path}' has label {label!r}, which is not a group; "
                                 f"groups are {names} (torch requires every parameter in a group).")
        return label_tree

    def mask_for(name):
        return lambda tree: jax.tree.map(lambda label: label == name, check_labels(tree))

    return chain(*(masked(optimizer(**{**defaults, **groups[name]}), mask_for(name))
                   for name in names))


def torch_indices(labels: Any, groups: Any) -> Any:
    """The index torch gives each leaf when the groups are built in ``groups`` order, each listing
    its parameters in the tree's leaf order: a tree like ``labels`` of ints, to pass as ``names=``
    to ``from_torch_state_dict`` / ``to_torch_state_dict``."""
    leaves, treedef = jax.tree.flatten(labels)
    order = sorted(range(len(leaves)), key=lambda i: (list(groups).index(leaves[i]), i))
    index = {leaf: position for position, leaf in enumerate(order)}
    return treedef.unflatten([index[i] for i in range(len(leaves))])


__all__ = ["param_groups", "torch_indices"]
