"""Core types, chain, apply_updates, the leafwise builder and tree-mismatch errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from support import assert_trees_close, make_params


def test_transformation_types_match_optax_protocol():
    tx = gradx.identity()
    init, update = tx
    assert isinstance(tx, gradx.GradientTransformation)
    assert isinstance(gradx.chain(tx), gradx.GradientTransformationExtraArgs)
    assert isinstance(gradx.chain(tx), gradx.GradientTransformation)
    assert init({"a": 1.0}) == gradx.EmptyState()


def test_identity_and_set_to_zero_under_jit():
    params = make_params()
    u, _ = jax.jit(gradx.identity().update)(params, gradx.EmptyState())
    assert_trees_close(u, params)
    z, _ = jax.jit(gradx.set_to_zero().update)(params, gradx.EmptyState())
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(z))


def test_stateless_and_tree_map():
    params = make_params()
    tx = gradx.stateless(lambda u, p: jax.tree.map(lambda a, b: a * 2 + b, u, p))
    u, s = jax.jit(tx.update)(params, tx.init(params), params)
    assert_trees_close(u, jax.tree.map(lambda x: 3 * x, params))
    assert s == gradx.EmptyState()
    tx = gradx.stateless_with_tree_map(lambda u, p: u - (0 if p is None else p))
    u, _ = jax.jit(tx.update)(params, tx.init(params), params)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u))
    u, _ = jax.jit(tx.update)(params, tx.init(params))
    assert_trees_close(u, params)


def test_with_extra_args_support_drops_extras():
    tx = gradx.with_extra_args_support(gradx.identity())
    u, _ = jax.jit(lambda g: tx.update(g, tx.init(g), None, value=3.0))({"a": jnp.ones(2)})
    np.testing.assert_array_equal(u["a"], np.ones(2))
    assert gradx.with_extra_args_support(tx) is tx


def test_chain_and_named_chain_match_optax():
    params = make_params()
    grads = jax.tree.map(lambda x: x * 0.5 + 1.0, params)
    ours = gradx.chain(gradx.identity(), gradx.identity())
    u, state = jax.jit(ours.update)(grads, ours.init(params), params)
    assert isinstance(state, tuple) and len(state) == 2
    assert_trees_close(u, grads)
    named = gradx.named_chain(("a", gradx.identity()), ("b", gradx.set_to_zero()))
    u, state = jax.jit(named.update)(grads, named.init(params), params)
    assert list(state) == ["a", "b"]
    assert_trees_close(u, optax.set_to_zero().update(grads, None)[0])


def test_chain_state_length_mismatch_raises():
    tx = gradx.chain(gradx.identity(), gradx.identity())
    with pytest.raises(ValueError, match="2 transformations but the state has 1"):
        tx.update({"a": jnp.ones(2)}, (gradx.EmptyState(),))


def test_named_chain_duplicate_names_raise():
    with pytest.raises(ValueError, match="distinct names"):
        gradx.named_chain(("a", gradx.identity()), ("a", gradx.identity()))


def test_apply_updates_keeps_param_dtype_and_none():
    params = {"w": jnp.ones(3, jnp.bfloat16), "n": None}
    updates = {"w": jnp.full(3, 0.5, jnp.float32), "n": None}
    new = jax.jit(gradx.apply_updates)(params, updates)
    expected = optax.apply_updates(params, updates)
    assert new["w"].dtype == jnp.bfloat16 and new["n"] is None
    np.testing.assert_array_equal(np.asarray(new["w"], np.float32), np.asarray(expected["w"], np.float32))


def test_incremental_and_periodic_update_match_optax():
    new, old = make_params(seed=1), make_params(seed=2)
    assert_trees_close(jax.jit(gradx.incremental_update)(new, old, 0.3),
                       optax.incremental_update(new, old, 0.3))
    f = jax.jit(gradx.periodic_update, static_argnums=3)
    for step in range(4):
        assert_trees_close(f(new, old, step, 2), optax.periodic_update(new, old, step, 2))


def test_global_norm_matches_optax():
    params = make_params()
    np.testing.assert_allclose(jax.jit(gradx.global_norm)(params), optax.global_norm(params), rtol=1e-6)


def test_safe_increment_saturates():
    top = jnp.asarray(np.iinfo(np.int32).max, jnp.int32)
    assert int(jax.jit(gradx.safe_increment)(top)) == np.iinfo(np.int32).max
    assert int(gradx.safe_increment(jnp.asarray(1, jnp.int32))) == 2


def _momentum_rule_tx():
    from typing import NamedTuple

    class State(NamedTuple):
        count: jax.Array
        trace: object

    def rule(g, trace, *, t):
        trace = g + 0.5 * trace
        return trace * t, trace

    return gradx.leafwise(rule, State, (gradx.Moment("trace"),),
                          step_scalars=lambda count: {"t": count.astype(jnp.float32)})


def test_leafwise_builder_counts_and_keeps_dtypes():
    tx = _momentum_rule_tx()
    params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones((), jnp.float32)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    u, state = update(params, state)
    u, state = update(params, state)
    assert int(state.count) == 2
    assert u["a"].dtype == jnp.bfloat16 and state.trace["a"].dtype == jnp.bfloat16
    # trace: 1, then 1 + 0.5 = 1.5; update = trace * count = 3.0
    np.testing.assert_allclose(np.asarray(u["b"]), 3.0)


def test_mismatched_grads_name_the_path():
    tx = _momentum_rule_tx()
    state = tx.init({"layer": {"w": jnp.ones(3), "b": jnp.ones(2)}})
    with pytest.raises(ValueError, match="state.trace does not match updates: 'layer/b' is in state.trace but not in updates"):
        tx.update({"layer": {"w": jnp.ones(3)}}, state)
    with pytest.raises(ValueError, match=r"at 'layer/w': shape \(3,\) vs \(4,\)"):
        tx.update({"layer": {"w": jnp.ones(4), "b": jnp.ones(2)}}, state)


def test_masked_matches_optax_with_prefix_and_function_masks():
    params = make_params()
    grads = jax.tree.map(lambda x: x + 1.0, params)
    for mask in ({"dense": True, "scale": False, "conv": True, "head": False},
                 lambda p: jax.tree.map(lambda x: x.ndim > 1, p)):
        ours = gradx.masked(gradx.set_to_zero(), mask)
        theirs = optax.masked(optax.set_to_zero(), mask)
        u, _ = jax.jit(ours.update)(grads, ours.init(params))
        assert_trees_close(u, theirs.update(grads, theirs.init(params))[0])


def test_contrib_names_resolve_like_optax():
    assert gradx.contrib.reduce_on_plateau is gradx.reduce_on_plateau
    assert callable(optax.contrib.reduce_on_plateau)
