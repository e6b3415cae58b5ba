"""Optax's ``optax.tree_utils`` module: every tree helper under its ``tree_``-prefixed name
(``gradx.tree`` has the same functions under short names).

Each name is the one definition gradx uses elsewhere: the arithmetic in ``gradx.tree_math``, the
state search in ``gradx.tree_state``, constructors, casts and ``tree_where`` in
``gradx.plumbing``, the moment helpers in ``gradx.adam_family``. The names Optax has deprecated
(``tree_scalar_mul``, ``tree_add_scalar_mul``, ``tree_l1_norm``, ``tree_l2_norm``,
``tree_linf_norm``) still resolve, with a ``DeprecationWarning``, as in Optax.
"""

import functools
import warnings

from gradx.adam_family import bias_correction as tree_bias_correction
from gradx.adam_family import update_infinity_moment as tree_update_infinity_moment
from gradx.adam_family import update_moment as tree_update_moment
from gradx.adam_family import update_moment_per_elem_norm as tree_update_moment_per_elem_norm
from gradx.plumbing import cast as tree_cast
from gradx.plumbing import full_like as tree_full_like
from gradx.plumbing import tree_dtype
from gradx.plumbing import where as tree_where
from gradx.plumbing import zeros_like as tree_zeros_like
from gradx.tree_math import *  # noqa: F401,F403
from gradx.tree_math import __all__ as _tree_math_names
from gradx.tree_math import tree_add_scale, tree_norm, tree_scale
from gradx.tree_state import *  # noqa: F401,F403
from gradx.tree_state import __all__ as _tree_state_names

__all__ = [
    "tree_bias_correction", "tree_update_infinity_moment", "tree_update_moment",
    "tree_update_moment_per_elem_norm", "tree_cast", "tree_full_like", "tree_dtype", "tree_where",
    "tree_zeros_like", *_tree_math_names, *_tree_state_names,
]

_DEPRECATED = {
    "tree_scalar_mul": ("tree_scale", tree_scale),
    "tree_add_scalar_mul": ("tree_add_scale", tree_add_scale),
    "tree_l1_norm": ("tree_norm(..., ord=1)", functools.partial(tree_norm, ord=1)),
    "tree_l2_norm": ("tree_norm", functools.partial(tree_norm, ord=2)),
    "tree_linf_norm": ("tree_norm(..., ord='inf')", functools.partial(tree_norm, ord="inf")),
}


def __getattr__(name):
    if name in _DEPRECATED:
        replacement, value = _DEPRECATED[name]
        warnings.warn(f"gradx.tree_utils.{name} is deprecated (as in Optax): use "
                      f"gradx.tree_utils.{replacement}.", DeprecationWarning, stacklevel=2)
        return value
    raise AttributeError(f"module 'gradx.tree_utils' has no attribute {name!r}")
