"""gradx.contrib.mars / scale_by_mars against pytorch_optimizer 4.1.0's MARS (the authors'
defaults: MARS on leaves of rank >= 2, AdamW with its own hyperparameters on the others)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pytorch_optimizer import MARS

import gradx
from contrib_support import compare_with_torch


def test_defaults_match_pytorch_optimizer():
    compare_with_torch(gradx.contrib.mars(), lambda p: MARS(p))


def test_every_leaf_with_weight_decay_matches_pytorch_optimizer():
    """optimize_1d: scale_by_mars on every leaf (the 0-d and 1-d ones too), decoupled decay."""
    compare_with_torch(gradx.contrib.mars(0.01, weight_decay=0.1, gamma=0.05, optimize_1d=True),
                       lambda p: MARS(p, lr=0.01, weight_decay=0.1, gamma=0.05, optimize_1d=True))


def test_scale_by_mars_by_hand():
    """g = 10 then 0 on a 2×2 leaf: c = g·(1 + 0.025·19) = 14.75 (norm 29.5, clipped to 0.5 each),
    then c = 0.475·(0 - 10) = -4.75 (norm 9.5, clipped to -0.5); m̂₂ = (0.95·0.025 - 0.025)/
    (1 - 0.95²), v̂₂ = 0.25."""
    tx = gradx.contrib.scale_by_mars(eps=0.0)
    update = jax.jit(tx.update)
    u, state = update(jnp.full((2, 2), 10.0), tx.init(jnp.zeros((2, 2))))
    np.testing.assert_allclose(u, 1.0, rtol=1e-6)
    u, state = update(jnp.zeros((2, 2)), state)
    np.testing.assert_allclose(u, (0.95 * 0.025 - 0.025) / (1 - 0.95 ** 2) / 0.5, rtol=1e-5)
    np.testing.assert_allclose(state.last_grad, 0.0)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="b1"):
        gradx.contrib.scale_by_mars(b1=1.0)
    with pytest.raises(ValueError, match="gamma"):
        gradx.contrib.mars(gamma=-0.1)
    with pytest.raises(ValueError, match="b2_1d"):
        gradx.contrib.mars(b2_1d=2.0)
