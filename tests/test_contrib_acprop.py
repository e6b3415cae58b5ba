"""gradx.contrib.acprop / scale_by_acprop against optax 0.2.8 (float32 and bfloat16) and a step
worked out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from support import compare, compare_bf16


def test_scale_by_acprop_matches_optax():
    compare(gradx.contrib.scale_by_acprop(b1=0.8, eps_root=1e-10),
            optax.contrib.scale_by_acprop(b1=0.8, eps_root=1e-10), n_steps=5)


def test_acprop_bf16_matches_optax():
    compare_bf16(gradx.contrib.acprop(0.05, weight_decay=0.1),
                 optax.contrib.acprop(0.05, weight_decay=0.1))


def test_second_step_by_hand():
    """Step 2 divides g₂ by √ŝ₁ + eps, ŝ₁ = (1-b2)·g₁²/(1-b2) = g₁² (m₀ = 0); b2 = 0.5 keeps
    the bias correction exact in float32."""
    tx = gradx.contrib.scale_by_acprop(b2=0.5, eps=0.0, eps_root=0.0)
    update = jax.jit(tx.update)
    _, state = update(jnp.array([2.0, -4.0]), tx.init(jnp.zeros(2)))
    u, _ = update(jnp.array([1.0, 1.0]), state)
    np.testing.assert_allclose(u, [0.5, 0.25], rtol=1e-6)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="b1"):
        gradx.contrib.acprop(0.1, b1=1.5)
    with pytest.raises(ValueError, match="eps_root"):
        gradx.contrib.scale_by_acprop(eps_root=-1.0)
