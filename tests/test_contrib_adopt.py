"""gradx.contrib.adopt / scale_by_adopt against optax 0.2.8 and the authors' torch-adopt 0.1.0,
and the fixed first-step weight decay."""

import adopt as torch_adopt
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from contrib_support import compare_with_torch
from support import assert_trees_close, compare, compare_bf16, make_params


def test_adopt_matches_optax_and_torch_adopt():
    ours = gradx.contrib.adopt(0.05)
    compare(ours, optax.contrib.adopt(0.05), n_steps=5)
    compare_with_torch(ours, lambda p: torch_adopt.ADOPT(p, lr=0.05))


def test_scale_by_adopt_nesterov_without_clipping_matches_optax():
    kwargs = {"b1": 0.8, "nesterov": True, "use_clipping": False}
    compare(gradx.contrib.scale_by_adopt(**kwargs), optax.contrib.scale_by_adopt(**kwargs),
            n_steps=5)


def test_bf16():
    compare_bf16(gradx.contrib.adopt(0.05), optax.contrib.adopt(0.05))


@pytest.mark.parametrize("decouple", [False, True])
def test_weight_decay_matches_torch_adopt(decouple):
    ours, _ = compare_with_torch(
        gradx.contrib.adopt(0.05, weight_decay=0.1, decouple=decouple),
        lambda p: torch_adopt.ADOPT(p, lr=0.05, weight_decay=0.1, decouple=decouple))
    if decouple:  # the first step only initialises v: the params do not move
        for leaf, start in zip(jax.tree.leaves(ours[0]), jax.tree.leaves(make_params())):
            np.testing.assert_array_equal(leaf, start)


def test_optax_chain_decays_on_the_first_step():
    """The defect fixed: Optax's decoupled chain moves the params by -η·λ·p on step 0."""
    params = jnp.array([1.0, -2.0])
    optax_tx = optax.chain(optax.contrib.scale_by_adopt(), optax.add_decayed_weights(0.1),
                           optax.scale_by_learning_rate(0.05))
    updates, _ = optax_tx.update(jnp.array([0.5, 3.0]), optax_tx.init(params), params)
    np.testing.assert_allclose(updates, -0.05 * 0.1 * params, rtol=1e-6)


def test_without_weight_decay_the_chain_is_optax():
    ours = gradx.contrib.adopt(0.1).init(make_params())
    theirs = optax.contrib.adopt(0.1).init(make_params())
    assert [type(s).__name__ for s in ours] == [type(s).__name__ for s in theirs]
    assert len(jax.tree.leaves(ours)) == len(jax.tree.leaves(theirs))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="b2"):
        gradx.contrib.scale_by_adopt(b2=1.0)
    with pytest.raises(ValueError, match="eps"):
        gradx.contrib.adopt(0.1, eps=-1.0)
    with pytest.raises(ValueError, match="decouple"):
        gradx.contrib.adopt(0.1, decouple="yes")


def test_adopt_in_inject_hyperparams_gives_plain_adopts_updates():
    """inject_hyperparams injects every numeric default, weight_decay=0.0 included, as an
    array (traced in the update): adopt then keeps its decay stage (a zero decay) instead of
    raising on ``weight_decay == 0``, and gives the plain optimizer's updates. Its chain holds
    that stage, which plain ``adopt(weight_decay=0.0)`` leaves out as Optax's adopt has none."""
    params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
    grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]
    plain = gradx.contrib.adopt(1e-2)
    injected = gradx.inject_hyperparams(gradx.contrib.adopt, static_args=("clip_value_fn",))(
        learning_rate=1e-2)
    state, state_injected = plain.init(params), injected.init(params)
    for _ in range(3):
        u, state = jax.jit(plain.update)(grads, state, params)
        v, state_injected = jax.jit(injected.update)(grads, state_injected, params)
        assert_trees_close(v, u, rtol=1e-6, atol=0)
    assert float(state_injected.hyperparams["weight_decay"]) == 0.0
