"""Optax's own documentation examples run with ``import gradx as optax``.

A few cheap examples are read from the installed optax 0.2.8's docstrings (losses, tree
utilities, projections, microbatching, nnls) and run by doctest with every ``optax`` module replaced
by its gradx counterpart in ``sys.modules``, so ``import optax`` and ``from optax.losses import
...`` inside an example get gradx. Each must print what Optax's documentation says it prints.
"""

import doctest
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx

EXAMPLES = [  # (object whose docstring holds the example, its name in the test id)
    (optax.losses.softmax_cross_entropy, "optax.losses.softmax_cross_entropy"),
    (optax.losses.triplet_margin_loss, "optax.losses.triplet_margin_loss"),
    (optax.projections.projection_l1_ball, "optax.projections.projection_l1_ball"),
    (optax.tree_utils.tree_get, "optax.tree_utils.tree_get"),
    (optax.tree_utils.tree_set, "optax.tree_utils.tree_set"),
    (optax.tree_utils.tree_cast_like, "optax.tree_utils.tree_cast_like"),
    (optax.tree_utils.tree_dtype, "optax.tree_utils.tree_dtype"),
    (optax.tree_utils.tree_map_params, "optax.tree_utils.tree_map_params"),
    (optax.microbatching.microbatch, "optax.microbatching.microbatch"),
    (optax.microbatching.micro_grad, "optax.microbatching.micro_grad"),
    (optax.nnls, "optax.nnls"),
]

GRADX_MODULES = {
    "optax": gradx, "optax.losses": gradx.losses, "optax.tree": gradx.tree,
    "optax.tree_utils": gradx.tree_utils, "optax.projections": gradx.projections,
    "optax.microbatching": gradx.microbatching,
}


def _examples(obj, name):
    finder = doctest.DocTestFinder(recurse=False)
    tests = [t for t in finder.find(obj, name) if t.examples]
    assert tests, f"{name} has no example"
    return tests


@pytest.mark.parametrize("obj, name", EXAMPLES, ids=[name for _, name in EXAMPLES])
def test_optax_example_runs_on_gradx(obj, name, monkeypatch):
    for module, replacement in GRADX_MODULES.items():
        monkeypatch.setitem(sys.modules, module, replacement)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with np.printoptions():  # examples may change the print options
        for test in _examples(obj, name):
            test.globs = {"optax": gradx, "jax": jax, "jnp": jnp, "np": np}
            runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
