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
