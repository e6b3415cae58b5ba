"""Masking: apply a transformation to some leaves only; the others pass through unchanged.

A mask is a tree of Python bools with the params' structure (or a prefix of it), or a function
``params -> mask``. Masked-out leaves are replaced by ``MaskedNode()`` (a node with no leaves)
before the inner transformation sees the tree, so it allocates no state and does no work for them.
"""

from typing import Any, Callable, NamedTuple, Union

import jax

from gradx import tree_use
from gradx.base import GradientTransformation, GradientTransformationExtraArgs, with_extra_args_support


class MaskedState(NamedTuple):
    """The inner transformation's state, over the masked-in leaves only."""

    inner_state: Any


class MaskedNode(NamedTuple):
    """Stands in for a masked-out leaf or subtree: a container with no children."""


def is_mask_function(mask: Any) -> bool:
    """A mask counts as a function when every one of its leaves is callable (so a callable
    pytree module is still treated as a function, as in Optax)."""
    leaves = jax.tree.leaves(jax.tree.map(callable, mask))
    return bool(leaves) and all(leaves)


def resolve_mask(mask: Union[Any, Callable[[Any], Any]], tree: Any) -> Any:
    """The mask tree for ``tree``: ``mask(tree)`` for a mask function, else ``mask``."""
    return mask(tree) if is_mask_function(mask) else mask


def mask_tree(tree: Any, mask: Any) -> Any:
    """Replaces every subtree whose mask value is False with ``MaskedNode()``."""
    return jax.tree.map(lambda keep, subtree: subtree if keep else MaskedNode(), mask, tree)


def is_params_placeholder(params: Any) -> bool:
    """Whether ``params`` is a placeholder node: a registered pytree node without children that
    is no container (``optax.tree.map_params`` calls ``init`` with one to find which parts of
    the state mirror the params)."""
    if params is None or isinstance(params, (dict, list, tuple)):
        return False
    treedef = jax.tree.structure(params)
    return treedef.num_leaves == 0 and treedef.num_nodes == 1


def masked(inner: GradientTransformation, mask: Union[Any, Callable[[Any], Any]], *,
           mask_compatible_extra_args: bool = False) -> GradientTransformationExtraArgs:
    """Applies ``inner`` to the leaves where ``mask`` is True; the others pass through unchanged.

    Same semantics and state (``MaskedState(inner_state)``) as ``optax.masked``; like Optax's,
    ``init`` hands the placeholder of ``optax.tree.map_params`` down unmasked. With
    ``mask_compatible_extra_args=True``, extra arguments shaped like the updates are masked too.
    Mask values must be Python bools (static under ``jit``).
    """
    declared, inner = inner, with_extra_args_support(inner)

    def init(params):
        if is_params_placeholder(params):  # nothing to mask: hand it down, as Optax does
            return MaskedState(inner_state=inner.init(params))
        return MaskedState(inner_state=inner.init(mask_tree(params, resolve_mask(mask, params))))

    def update(updates, state, params=None, **extra_args):
        mask_values = resolve_mask(mask, updates)
        if mask_compatible_extra_args:
            structure = jax.tree.structure(updates)
            extra_args = {k: mask_tree(v, mask_values) if jax.tree.structure(v) == structure else v
                          for k, v in extra_args.items()}
        inner_updates, inner_state = inner.update(
            mask_tree(updates, mask_values), state.inner_state,
            None if params is None else mask_tree(params, mask_values), **extra_args)
        merged = jax.tree.map(lambda keep, new, old: new if keep else old,
                              mask_values, inner_updates, updates)
        return merged, MaskedState(inner_state=inner_state)

    def rebuild(convert, masks):
        return masked(convert(0, declared), masks[0],
                      mask_compatible_extra_args=mask_compatible_extra_args)

    return tree_use.declare(GradientTransformationExtraArgs(init, update), tree_use.BY_PATH,
                            "masked", inner=(declared,), masks=(mask,), rebuild=rebuild)
