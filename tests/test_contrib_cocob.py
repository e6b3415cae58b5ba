"""gradx.contrib.cocob / scale_by_cocob against optax 0.2.8 (float32 and bf16, state included)."""

import jax
import jax.numpy as jnp
import optax
import pytest

import gradx
from contrib_support import compare
from support import make_params


def test_cocob_matches_optax_with_schedule_weight_decay_and_mask():
    mask = {"dense": {"kernel": True, "bias": False}, "scale": False, "conv": True, "head": True}
    kwargs = dict(learning_rate=lambda c: 0.5 / (1.0 + c), alpha=10.0, eps=1e-6,
                  weight_decay=0.1, mask=mask)
    _, state = compare(gradx.contrib.cocob(**kwargs), optax.contrib.cocob(**kwargs))
    assert type(state[2]) is gradx.contrib.COCOBState
    assert state[2]._fields == optax.contrib.COCOBState._fields


def test_scale_by_cocob_matches_optax_in_bf16():
    params = make_params(jnp.bfloat16)
    updates, state = compare(gradx.contrib.scale_by_cocob(), optax.contrib.scale_by_cocob(),
                             params=params, n_steps=3)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert all(s.dtype == jnp.bfloat16 for s in jax.tree.leaves(state))


@pytest.mark.parametrize("kwargs, name", [({"alpha": 0.0}, "alpha"), ({"eps": -1.0}, "eps")])
def test_cocob_rejects_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        gradx.contrib.scale_by_cocob(**kwargs)


def test_scale_by_cocob_needs_params():
    tx = gradx.contrib.scale_by_cocob()
    params = make_params()
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))
