"""gradx.contrib.split_real_and_imaginary against optax 0.2.8 on complex64 params, and by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradx
from support import compare_complex


def test_matches_optax_on_complex_params():
    """signum on (Re g, Im g): the sign of each part, not g/|g| as on the complex leaf."""
    compare_complex(gradx.contrib.split_real_and_imaginary(gradx.signum(0.05)),
                    optax.contrib.split_real_and_imaginary(optax.signum(0.05)))


def test_adam_sees_two_real_leaves():
    """Adam's first step is -η·sign(g) on each real part: on (Re g, Im g) separately, where
    Adam on the complex leaf would divide g by |g|."""
    tx = gradx.contrib.split_real_and_imaginary(gradx.adam(0.1, b2=0.5, eps=0.0))
    params = {"c": jnp.array([1 + 1j]), "r": jnp.array([1.0])}
    u, _ = jax.jit(tx.update)({"c": jnp.array([3 - 4j]), "r": jnp.array([2.0])}, tx.init(params))
    np.testing.assert_allclose(u["c"], [-0.1 + 0.1j], rtol=1e-6)
    np.testing.assert_allclose(u["r"], [-0.1], rtol=1e-6)
    assert u["c"].dtype == jnp.complex64 and u["r"].dtype == jnp.float32
