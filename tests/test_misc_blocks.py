"""Weight decay, gradient noise, constraints, apply_every, Polyak step and DoG against optax."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax._src.transform import ScaleByDistanceOverGradientsState as OptaxDoGState
from optax.transforms._adding import WeightDecaySchedule as OptaxWeightDecaySchedule

import gradx
from support import assert_trees_close, compare, make_grads, make_params, run


def wd_schedule(count):
    return 1e-2 * (1.0 + count)


# ---------------------------------------------------------------------------------------------
# add_decayed_weights

WD_CASES = {
    "scalar": lambda m: m.add_decayed_weights(0.05),
    "zero": lambda m: m.add_decayed_weights(),
    "negative": lambda m: m.add_decayed_weights(-0.2),
    "schedule": lambda m: m.add_decayed_weights(wd_schedule),
    "prefix_mask": lambda m: m.add_decayed_weights(0.05, {"dense": {"kernel": True, "bias": False},
                                                          "scale": False, "conv": True,
                                                          "head": True}),
    "fn_mask_schedule": lambda m: m.add_decayed_weights(
        wd_schedule, lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
}


@pytest.mark.parametrize("name", WD_CASES)
def test_add_decayed_weights_matches_optax(name):
    compare(WD_CASES[name](gradx), WD_CASES[name](optax))


def test_add_decayed_weights_states():
    params = make_params()
    assert gradx.add_decayed_weights(0.1).init(params) == gradx.EmptyState()
    state = gradx.add_decayed_weights(wd_schedule).init(params)
    assert isinstance(state, gradx.WeightDecaySchedule)
    assert state._fields == OptaxWeightDecaySchedule._fields
    mask = {"dense": True, "scale": False, "conv": False, "head": False}
    masked_state = gradx.add_decayed_weights(wd_schedule, mask).init(params)
    assert isinstance(masked_state, gradx.MaskedState)
    assert isinstance(masked_state.inner_state, gradx.WeightDecaySchedule)


def test_schedule_weight_decay_uses_the_count_before_the_increment():
    params = {"w": jnp.ones(2)}
    tx = gradx.add_decayed_weights(lambda c: 1.0 + c)
    update = jax.jit(tx.update)
    state = tx.init(params)
    u1, state = update({"w": jnp.zeros(2)}, state, params)
    u2, state = update({"w": jnp.zeros(2)}, state, params)
    np.testing.assert_array_equal(u1["w"], 1.0)
    np.testing.assert_array_equal(u2["w"], 2.0)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1, wd_schedule])
def test_add_decayed_weights_needs_params_even_at_zero(weight_decay):
    """Optax raises here too (drop-in behaviour), even for the literal 0.0."""
    for m in (gradx, optax):
        tx = m.add_decayed_weights(weight_decay)
        with pytest.raises(ValueError, match=re.escape(gradx.NO_PARAMS_MSG)):
            tx.update(make_params(), tx.init(make_params()), None)


# ---------------------------------------------------------------------------------------------
# add_noise

def _key_data(state):
    return np.asarray(jax.random.key_data(state.rng_key))


def test_add_noise_reproduces_optax_noise_exactly():
    key = jax.random.key(3)
    ours, _, our_state = run(gradx.add_noise(0.3, 0.55, key), make_params(), n_steps=3)
    theirs, _, their_state = run(optax.add_noise(0.3, 0.55, key), make_params(), n_steps=3)
    for a, e in zip(ours, theirs):
        assert_trees_close(a, e, rtol=0, atol=0)      # bit-identical noise
    np.testing.assert_array_equal(_key_data(our_state), _key_data(their_state))
    assert int(our_state.count) == int(their_state.count) == 3
    # the noise is really there: updates differ from the gradients
    assert not np.allclose(ours[0]["conv"], make_grads(make_params(), 0)["conv"])


def test_add_noise_accepts_a_raw_key_unlike_optax():
    """gradx extension: a legacy ``PRNGKey`` is used as the typed key with the same data."""
    params = grads = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    raw, typed = gradx.add_noise(0.3, 0.55, jax.random.PRNGKey(5)), gradx.add_noise(
        0.3, 0.55, jax.random.key(5))
    u_raw = jax.jit(raw.update)(grads, raw.init(params))[0]
    u_typed = jax.jit(typed.update)(grads, typed.init(params))[0]
    assert_trees_close(u_raw, u_typed, rtol=0, atol=0)
    with pytest.raises(TypeError):
        optax.add_noise(0.3, 0.55, jax.random.PRNGKey(5)).init(params)


def test_add_noise_key_and_seed_handling():
    params = make_params()
    with pytest.warns(UserWarning, match="add_noise got no key and uses seed 0"):
        no_key = gradx.add_noise(0.1, 0.5)
    np.testing.assert_array_equal(_key_data(no_key.init(params)),
                                  np.asarray(jax.random.key_data(jax.random.key(0))))
    np.testing.assert_array_equal(_key_data(gradx.add_noise(0.1, 0.5, 7).init(params)),
                                  _key_data(optax.add_noise(0.1, 0.5, 7).init(params)))
    with pytest.warns(DeprecationWarning, match='"seed" is deprecated, use "key".'):
        seeded = gradx.add_noise(0.1, 0.5, seed=4)
    np.testing.assert_array_equal(_key_data(seeded.init(params)),
                                  np.asarray(jax.random.key_data(jax.random.key(4))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ValueError, match="Only one of seed or key can be specified."):
            gradx.add_noise(0.1, 0.5, key=1, seed=4)
    with pytest.raises(ValueError, match=re.escape("eta must be >= 0, got eta=-0.1.")):
        gradx.add_noise(-0.1, 0.5, key=0)


# ---------------------------------------------------------------------------------------------
# keep_params_nonnegative, zero_nans

def test_keep_params_nonnegative_matches_optax():
    params = jax.tree.map(jnp.abs, make_params())
    params["head"] = params["head"].at[0].set(-0.5)     # a negative param is moved to 0
    compare(gradx.keep_params_nonnegative(), optax.keep_params_nonnegative(), params=params)
    ours, final, _ = run(gradx.keep_params_nonnegative(), params)
    assert min(float(x.min()) for x in jax.tree.leaves(final)) >= 0.0
    grads = make_grads(params, 0)
    replaced = [np.sum(np.asarray(u) != np.asarray(g)) for u, g in
                zip(jax.tree.leaves(ours[0]), jax.tree.leaves(grads))]
    assert sum(replaced) > 0
    with pytest.raises(ValueError, match=re.escape(gradx.NO_PARAMS_MSG)):
        gradx.keep_params_nonnegative().update(params, gradx.EmptyState())


def nan_grads(params, step):
    grads = make_grads(params, step)
    if step % 2 == 0:
        grads["conv"] = grads["conv"].at[0, 1].set(jnp.nan)
        grads["scale"] = jnp.asarray(jnp.nan, jnp.float32)
    return grads


@pytest.mark.parametrize("n_steps", [3, 4])
def test_zero_nans_matches_optax(n_steps):
    params = make_params()
    ours, _, our_state = run(gradx.zero_nans(), params, n_steps, grads_fn=nan_grads)
    theirs, _, their_state = run(optax.zero_nans(), params, n_steps, grads_fn=nan_grads)
    for a, e in zip(ours, theirs):
        assert_trees_close(a, e)
    assert jax.tree.map(bool, our_state.found_nan) == jax.tree.map(bool, their_state.found_nan)
    assert bool(our_state.found_nan["conv"]) == (n_steps % 2 == 1)
    assert gradx.zero_nans().init(params).found_nan == jax.tree.map(lambda _: False, params)


# ---------------------------------------------------------------------------------------------
# apply_every

@pytest.mark.parametrize("k", [1, 3])
def test_apply_every_matches_optax(k):
    ours, state = compare(gradx.apply_every(k), optax.apply_every(k), n_steps=7)
    assert int(state.count) == 7 % k
    if k == 3:
        assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(ours[0]))
        assert float(jnp.abs(ours[2]["conv"]).max()) > 0.0


@pytest.mark.parametrize("k", [0, -2])
def test_apply_every_rejects_k_below_one(k):
    with pytest.raises(ValueError, match=re.escape(f"k must be in [1, inf), got k={k}.")):
        gradx.apply_every(k)


# ---------------------------------------------------------------------------------------------
# scale_by_polyak

def loss_value(step, params):
    return {"value": jnp.asarray(step - 2.0, jnp.float32)}   # gap < 0 on the first two steps


POLYAK_CASES = {
    "sps": lambda m: m.scale_by_polyak(),
    "sps+": lambda m: m.scale_by_polyak(variant="sps+"),
    "args": lambda m: m.scale_by_polyak(f_min=-1.0, max_learning_rate=0.02, eps=10.0),
}


@pytest.mark.parametrize("name", POLYAK_CASES)
def test_polyak_matches_optax(name):
    tx = POLYAK_CASES[name](gradx)
    assert isinstance(tx, gradx.GradientTransformationExtraArgs)
    ours, _ = compare(tx, POLYAK_CASES[name](optax), extra_args=loss_value)
    if name == "sps+":
        assert float(jnp.abs(ours[0]["conv"]).max()) == 0.0
        assert float(jnp.abs(ours[-1]["conv"]).max()) > 0.0


def test_polyak_zero_gradient_gives_zero_step_and_needs_value():
    grads = jax.tree.map(jnp.zeros_like, make_params())
    tx = gradx.scale_by_polyak()
    u, _ = jax.jit(tx.update)(grads, tx.init(grads), value=3.0)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u))
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'value'"):
        tx.update(grads, tx.init(grads))
    with pytest.raises(TypeError, match="'value'"):
        gradx.chain(tx).update(grads, gradx.chain(tx).init(grads))


def test_polyak_validation():
    """Unknown variants are rejected at construction (optax: at the first update)."""
    with pytest.raises(ValueError, match=re.escape(
            "variant must be one of ('sps', 'sps+'), got variant='spsx'.")):
        gradx.scale_by_polyak(variant="spsx")
    with pytest.raises(ValueError, match=re.escape(
            "max_learning_rate must be >= 0, got max_learning_rate=-1.0.")):
        gradx.scale_by_polyak(max_learning_rate=-1.0)
    with pytest.raises(ValueError, match=re.escape("eps must be >= 0, got eps=-1.0.")):
        gradx.scale_by_polyak(eps=-1.0)


# ---------------------------------------------------------------------------------------------
# scale_by_distance_over_gradients (DoG)

def params_without_scalar():
    params = make_params()
    del params["scale"]
    return params


DOG_CASES = {
    "default": lambda m: m.scale_by_distance_over_gradients(),
    "args": lambda m: m.scale_by_distance_over_gradients(reps_rel=1e-2, eps=1e-4,
                                                         global_scale=-1.0),
}


@pytest.mark.parametrize("name", DOG_CASES)
def test_dog_matches_optax(name):
    _, state = compare(DOG_CASES[name](gradx), DOG_CASES[name](optax),
                       params=params_without_scalar())
    assert isinstance(state, gradx.ScaleByDistanceOverGradientsState)
    assert state._fields == OptaxDoGState._fields
    assert state.grad_sum_of_squares["conv"].shape == (1,)


def test_dog_keeps_scalar_param_shape_unlike_optax():
    """Optax returns a (1,)-shaped update for a 0-d parameter; gradx keeps the shape () with the
    same value."""
    params = {"s": jnp.asarray(0.7, jnp.float32), "v": jnp.arange(1.0, 4.0)}
    grads = {"s": jnp.asarray(-0.3, jnp.float32), "v": jnp.asarray([0.5, -1.0, 2.0])}
    ours_tx = gradx.scale_by_distance_over_gradients(reps_rel=0.1)
    theirs_tx = optax.scale_by_distance_over_gradients(reps_rel=0.1)
    ours, state = jax.jit(ours_tx.update)(grads, ours_tx.init(params), params)
    theirs, _ = theirs_tx.update(grads, theirs_tx.init(params), params)
    assert ours["s"].shape == () and theirs["s"].shape == (1,)
    np.testing.assert_allclose(ours["s"], theirs["s"][0], rtol=2e-5)
    # hand-worked: r0 = 0.1 * (1 + 0.7), sum_sq = 0.09, u = r0 / sqrt(0.09 + 1e-8) * g
    np.testing.assert_allclose(ours["s"], 0.17 / np.sqrt(0.09 + 1e-8) * -0.3, rtol=2e-5)
    assert_trees_close(ours["v"], theirs["v"])
    ours2, _ = jax.jit(ours_tx.update)(grads, state, jax.tree.map(lambda p: p + 1.0, params))
    np.testing.assert_allclose(ours2["s"], 1.0 / np.sqrt(0.18 + 1e-8) * -0.3, rtol=2e-5)


def test_dog_validation_and_params():
    with pytest.raises(ValueError, match=re.escape(gradx.NO_PARAMS_MSG)):
        tx = gradx.scale_by_distance_over_gradients()
        tx.update(make_params(), tx.init(make_params()))
    with pytest.raises(ValueError, match=re.escape("reps_rel must be > 0, got reps_rel=0.0.")):
        gradx.scale_by_distance_over_gradients(reps_rel=0.0)
    with pytest.raises(ValueError, match=re.escape("eps must be >= 0, got eps=-1.0.")):
        gradx.scale_by_distance_over_gradients(eps=-1.0)
