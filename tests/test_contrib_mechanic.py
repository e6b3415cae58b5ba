"""gradx.contrib.mechanize against optax 0.2.8 around adam and sgd (float32 and bf16, state
included), extra arguments reaching the base optimizer, and validation."""

import jax
import jax.numpy as jnp
import optax
import pytest

import gradx
from contrib_support import compare
from support import make_params, toward_target


def test_mechanize_adam_matches_optax():
    kwargs = {"weight_decay": 0.1, "eps": 1e-6, "s_init": 1e-4, "num_betas": 3}
    ours = gradx.contrib.mechanize(gradx.adam(1.0), **kwargs)
    theirs = optax.contrib.mechanize(optax.adam(1.0), **kwargs)
    _, state = compare(ours, theirs, n_steps=8, grads_fn=toward_target)
    assert type(state).__name__ == "MechanicState"
    assert state._fields == optax.contrib.MechanicState._fields
    assert float(state.s.sum()) > 2 * kwargs["s_init"]  # the scale grew


def test_mechanize_sgd_matches_optax_in_bf16():
    ours = gradx.contrib.mechanize(gradx.sgd(0.1, momentum=0.9))
    theirs = optax.contrib.mechanize(optax.sgd(0.1, momentum=0.9))
    updates, state = compare(ours, theirs, params=make_params(jnp.bfloat16), n_steps=3,
                             grads_fn=toward_target)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert state.s.dtype == jnp.bfloat16


def test_extra_arguments_reach_the_base_optimizer():
    """polyak_sgd needs the loss: mechanize passes value= through, as Optax does."""
    loss = lambda step, params: {"value": jnp.float32(2.0 + step)}  # noqa: E731
    compare(gradx.contrib.mechanize(gradx.polyak_sgd()),
            optax.contrib.mechanize(optax.polyak_sgd()), n_steps=3, extra_args=loss)


@pytest.mark.parametrize("kwargs, argument", [({"s_init": 0.0}, "s_init"),
                                              ({"num_betas": 0}, "num_betas"),
                                              ({"eps": -1.0}, "eps"),
                                              ({"weight_decay": -1.0}, "weight_decay")])
def test_bad_hyperparameters_raise(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        gradx.contrib.mechanize(gradx.sgd(0.1), **kwargs)


def test_needs_params():
    tx, params = gradx.contrib.mechanize(gradx.sgd(0.1)), make_params()
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))
