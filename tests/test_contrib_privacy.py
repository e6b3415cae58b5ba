"""gradx.contrib.differentially_private_aggregate and dpsgd against optax 0.2.8 (same noise for
the same key, state included, float32 and bf16), a hand-worked noise-free value, and
validation."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from contrib_support import compare
from support import make_params


def per_example(params, step):
    """A batch of 4 per-example gradients per leaf, of growing norms (some clipped, some not)."""
    rng = np.random.default_rng(step)
    return jax.tree.map(lambda p: jnp.asarray(
        rng.normal(size=(4,) + p.shape) * np.arange(1, 5).reshape((4,) + (1,) * p.ndim),
        p.dtype), params)


def test_dpsgd_matches_optax_with_the_same_noise():
    """Keys are "rbg" keys here (XLA's bit generator compiles in a third of threefry's time);
    the noise is the same for the same key whatever its kind."""
    make = lambda lib: lib.contrib.dpsgd(0.1, 1.0, 0.5, seed=3, momentum=0.9,  # noqa: E731
                                         nesterov=True)
    with warnings.catch_warnings(), jax.default_prng_impl("rbg"):
        warnings.simplefilter("ignore", DeprecationWarning)  # optax's dpsgd passes seed=
        ours, theirs = make(gradx), make(optax)
    compare(ours, theirs, n_steps=3, grads_fn=per_example)


def test_matches_optax_in_bf16():
    make = lambda lib: lib.contrib.differentially_private_aggregate(  # noqa: E731
        2.0, 0.1, key=jax.random.key(7, impl="rbg"))
    updates, _ = compare(make(gradx), make(optax), params=make_params(jnp.bfloat16), n_steps=2,
                         grads_fn=per_example)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


def test_noise_free_aggregate_is_the_clipped_mean():
    tx = gradx.contrib.differentially_private_aggregate(1.0, 0.0,
                                                        key=jax.random.key(0, impl="rbg"))
    grads = {"a": jnp.array([[3.0], [0.0], [0.3]]), "b": jnp.array([[4.0, 0.0], [0.0, 0.0],
                                                                    [0.4, 0.0]])}
    updates, _ = jax.jit(tx.update)(grads, tx.init(None))
    # example norms 5 (scaled by 1/5), 0 (factor NaN -> 1) and 0.5 (kept); mean over 3
    np.testing.assert_allclose(updates["a"], [(0.6 + 0.3) / 3], rtol=1e-6)
    np.testing.assert_allclose(updates["b"], [(0.8 + 0.4) / 3, 0.0], rtol=1e-6)


def test_missing_key_warns_and_dpsgd_does_not():
    with pytest.warns(UserWarning, match="key="):
        gradx.contrib.differentially_private_aggregate(1.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradx.contrib.dpsgd(0.1, 1.0, 1.0, seed=0)


@pytest.mark.parametrize("make, argument", [
    (lambda: gradx.contrib.dpsgd(0.1, -1.0, 1.0, seed=0), "l2_norm_clip"),
    (lambda: gradx.contrib.dpsgd(0.1, 1.0, -1.0, seed=0), "noise_multiplier"),
    (lambda: gradx.contrib.dpsgd(0.1, 1.0, 1.0, seed=0, momentum=1.5), "momentum"),
])
def test_bad_hyperparameters_raise(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


def test_gradients_without_a_common_batch_axis_raise():
    tx = gradx.contrib.differentially_private_aggregate(1.0, 1.0, key=0)
    with pytest.raises(ValueError, match="batch dimension"):
        tx.update({"a": jnp.ones((3, 2)), "b": jnp.ones((4,))}, tx.init(None))
