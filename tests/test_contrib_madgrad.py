"""gradx.contrib.madgrad / scale_by_madgrad against optax 0.2.8 (float32, bfloat16, a schedule)
and the first step worked out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from support import compare, compare_bf16


def test_madgrad_matches_optax():
    compare(gradx.contrib.madgrad(0.05, weight_decay=0.1),
            optax.contrib.madgrad(0.05, weight_decay=0.1), n_steps=5)


def test_scale_by_madgrad_with_a_schedule_matches_optax():
    schedule = lambda count: 0.05 / (1.0 + count)  # noqa: E731
    compare_bf16(gradx.contrib.scale_by_madgrad(schedule, momentum=0.5),
                 optax.contrib.scale_by_madgrad(schedule, momentum=0.5))


def test_first_step_by_hand():
    """λ₀ = η + eps; x₁ - x₀ = (1-β)·(z - x₀) = -(1-β)·λ₀·g/(∛(λ₀·g²) + eps)."""
    tx = gradx.contrib.scale_by_madgrad(0.1, momentum=0.9, eps=0.0)
    u, _ = jax.jit(tx.update)(jnp.array([8.0]), tx.init(jnp.ones(1)), jnp.ones(1))
    np.testing.assert_allclose(u, [-0.1 * 0.8 / np.cbrt(6.4)], rtol=1e-6)


def test_bad_hyperparameters_and_missing_params():
    with pytest.raises(ValueError, match="momentum"):
        gradx.contrib.madgrad(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        gradx.contrib.scale_by_madgrad(-0.1)
    tx = gradx.contrib.madgrad(0.1)
    with pytest.raises(ValueError, match="params"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
