"""gradx.contrib.momo / momo_adam against optax 0.2.8 (float32 and bf16, state included, both
lower-bound modes), Optax's documented values, and the errors for a missing loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradx
from contrib_support import compare_by_name


def loss(step, params):
    """``value=``: a loss of the current params (half the squared distance to 0.3), in float32."""
    leaves = jax.tree.leaves(params)
    return {"value": sum(jnp.sum(0.5 * (p.astype(jnp.float32) - 0.3) ** 2) for p in leaves)}


CASES = [  # float32 with every argument set; bf16 with the defaults
    ("momo", {"learning_rate": lambda c: 0.5 / (1.0 + c), "beta": 0.8, "lower_bound": 0.5,
              "weight_decay": 0.1, "adapt_lower_bound": True}, jnp.float32),
    ("momo_adam", {"learning_rate": lambda c: 0.5 / (1.0 + c), "b1": 0.8, "b2": 0.99,
                   "eps": 1e-6, "lower_bound": 0.5, "weight_decay": 0.1,
                   "adapt_lower_bound": True}, jnp.float32),
    ("momo", {}, jnp.bfloat16),
    ("momo_adam", {}, jnp.bfloat16),
]


@pytest.mark.parametrize("name, kwargs, dtype", CASES,
                         ids=["momo-f32", "adam-f32", "momo-bf16", "adam-bf16"])
def test_matches_optax(name, kwargs, dtype):
    _, state = compare_by_name(name, kwargs, dtype, extra_args=loss)
    if kwargs.get("adapt_lower_bound"):
        assert float(state.lb) > kwargs["lower_bound"]  # the estimated bound moved


def test_momo_adam_optax_documented_value():
    """Optax's docstring example, as written (it takes the updates for the new params): one
    momo_adam step on Σx² from [1, 2, 3] prints 0.00029999594."""
    tx, params = gradx.contrib.momo_adam(), jnp.array([1.0, 2.0, 3.0])
    value, grad = jax.value_and_grad(lambda x: jnp.sum(x ** 2))(params)
    params, _ = jax.jit(tx.update)(grad, tx.init(params), params, value=value)
    np.testing.assert_allclose(jnp.sum(params ** 2), 0.00029999594, rtol=1e-6)


@pytest.mark.parametrize("name", ["momo", "momo_adam"])
def test_missing_loss_says_what_to_pass(name):
    tx, params = getattr(gradx.contrib, name)(), {"w": jnp.ones(2)}
    with pytest.raises(TypeError, match="value=loss"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match="value=loss"):
        tx.update(params, tx.init(params), params, value=None)


@pytest.mark.parametrize("make, argument", [
    (lambda: gradx.contrib.momo(beta=1.0), "beta"),
    (lambda: gradx.contrib.momo(learning_rate=-1.0), "learning_rate"),
    (lambda: gradx.contrib.momo_adam(b2=1.5), "b2"),
    (lambda: gradx.contrib.momo_adam(eps=-1.0), "eps"),
    (lambda: gradx.contrib.momo_adam(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters_raise(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()
