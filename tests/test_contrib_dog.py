"""gradx.contrib.dog / dowg and their building blocks against optax 0.2.8 (float32 and bf16,
state included; Optax's documented dowg example is dowg's docstring), and construction-time
validation."""

import jax
import jax.numpy as jnp
import optax
import pytest
from optax.contrib import _dog as optax_dog  # scale_by_dog/dowg are not exported by Optax

import gradx
from contrib_support import compare
from support import make_params

MASK = {"dense": {"kernel": True, "bias": False}, "scale": False, "conv": True, "head": True}


@pytest.mark.parametrize("name, kwargs", [  # the defaults: test_building_blocks_match_optax_in_bf16
    ("dog", {"init_step": ("distance", 0.1), "weight_decay": 0.1, "mask": MASK}),
    ("dog", {"learning_rate": lambda c: 0.5 / (1.0 + c), "init_step": ("learning_rate", 0.05),
             "eps": 1e-6}),
    ("dowg", {"learning_rate": lambda c: 0.5 / (1.0 + c), "init_estim_sq_dist": 0.01,
              "eps": 1e-3, "weight_decay": 0.1, "mask": MASK}),
], ids=["dog-distance-wd", "dog-lr-schedule", "dowg-all"])
def test_matches_optax(name, kwargs):
    ours, theirs = getattr(gradx.contrib, name)(**kwargs), getattr(optax.contrib, name)(**kwargs)
    _, state = compare(ours, theirs)
    inner = state[1]
    assert type(inner).__name__ == {"dog": "DoGState", "dowg": "DoWGState"}[name]
    assert inner._fields == type(theirs.init(make_params())[1])._fields


@pytest.mark.parametrize("name, args", [("scale_by_dog", (("heuristic", 1e-6),)),
                                        ("scale_by_dowg", ())])
def test_building_blocks_match_optax_in_bf16(name, args):
    ours, theirs = getattr(gradx.contrib, name)(*args), getattr(optax_dog, name)(*args)
    updates, state = compare(ours, theirs, params=make_params(jnp.bfloat16), n_steps=3)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert all(jnp.result_type(s) == jnp.result_type(t) for s, t in zip(
        jax.tree.leaves(state), jax.tree.leaves(theirs.init(make_params(jnp.bfloat16)))))


@pytest.mark.parametrize("make, argument", [
    (lambda: gradx.contrib.dog(init_step=("guess", 1e-6)), "init_step\\[0\\]"),
    (lambda: gradx.contrib.dog(init_step=("distance", 0.0)), "init_step\\[1\\]"),
    (lambda: gradx.contrib.dog(eps=-1.0), "eps"),
    (lambda: gradx.contrib.dowg(init_estim_sq_dist=-1.0), "init_estim_sq_dist"),
    (lambda: gradx.contrib.dowg(eps=-1.0), "eps"),
])
def test_bad_hyperparameters_raise(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()
