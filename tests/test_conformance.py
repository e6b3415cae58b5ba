"""Defects that Optax's own tests, real programs written for Optax and the differential runs
found in gradx: each case against optax 0.2.8 or a value worked out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from support import assert_trees_close


# -- None updates pass through (Optax's update_test / _adding_test) ----------------------------

def test_incremental_update_keeps_none():
    x = jnp.array([1.0, 2.0, 3.0])
    assert gradx.incremental_update(None, x, 1) is None
    new, old = {"a": None, "b": jnp.ones(2)}, {"a": jnp.ones(2), "b": jnp.zeros(2)}
    ours = gradx.incremental_update(new, old, 0.25)
    assert ours["a"] is None
    assert_trees_close(ours, optax.incremental_update(new, old, 0.25))


@pytest.mark.parametrize("lib", [gradx, optax], ids=["gradx", "optax"])
def test_add_decayed_weights_passes_none_updates(lib):
    params = (jnp.ones(2), {"a": jnp.ones(2), "b": jnp.full(2, 2.0)})
    tx = lib.add_decayed_weights(0.1)
    assert tx.update(None, tx.init(params), params)[0] is None
    updates, _ = jax.jit(tx.update)((None, {"a": None, "b": jnp.ones(2)}), tx.init(params), params)
    assert updates[0] is None and updates[1]["a"] is None
    np.testing.assert_allclose(updates[1]["b"], [1.2, 1.2])


def test_none_updates_keep_the_state_of_their_leaf():
    params = {"a": jnp.ones(2), "b": jnp.full(2, 2.0)}
    tx = gradx.adam(0.1)
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)({"a": None, "b": jnp.ones(2)}, state, params)
    assert updates["a"] is None
    np.testing.assert_array_equal(new_state[0].mu["a"], state[0].mu["a"])
    np.testing.assert_allclose(new_state[0].mu["b"], [0.1, 0.1], rtol=1e-6)
