"""apply_if_finite, conditionally_transform/mask, flatten and lookahead against optax 0.2.8."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradx.wrappers import (ApplyIfFiniteState, ConditionallyMaskState,
                            ConditionallyTransformState, LookaheadParams, LookaheadState,
                            apply_if_finite, conditionally_mask, conditionally_transform, flatten,
                            lookahead)
from support import assert_trees_close, compare, make_grads, make_params


def inner():
    return optax.adam(1e-2)


def nan_at(steps):
    """Gradients from make_grads with a NaN in one leaf at the given steps."""
    def grads(params, step):
        g = make_grads(params, step)
        if step in steps:
            g["head"] = g["head"].at[0, 0].set(jnp.nan)
        return g
    return grads


def run_both(ours, theirs, grads_fn, n_steps):
    params = make_params()
    so, st = ours.init(params), theirs.init(params)
    out = []
    for step in range(n_steps):
        g = grads_fn(params, step)
        uo, so = jax.jit(ours.update)(g, so, params)
        ut, st = jax.jit(theirs.update)(g, st, params)
        out.append((uo, ut, so, st))
    return out


def test_apply_if_finite_matches_optax_before_giving_up():
    steps = run_both(apply_if_finite(inner(), 2), optax.apply_if_finite(inner(), 2),
                     nan_at({1, 3, 4}), 6)
    for step, (uo, ut, so, st) in enumerate(steps):
        assert isinstance(so, ApplyIfFiniteState)
        assert_trees_close(uo, ut, what=f"updates {step}")
        assert_trees_close(so, st, what=f"state {step}")
    uo, _, so, _ = steps[1]  # a skipped step: zero updates, inner state as after step 0
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(uo))
    assert_trees_close(so.inner_state, steps[0][2].inner_state, rtol=0, atol=0)
    assert int(so.total_notfinite) == 1 and not bool(so.last_finite)


def test_apply_if_finite_resets_its_streak_after_giving_up():
    """Three NaN steps in a row with max_consecutive_errors=1: skip, give up (apply), skip.

    Optax keeps counting after giving up and applies the third NaN update too (PR#1746)."""
    steps = run_both(apply_if_finite(inner(), 1), optax.apply_if_finite(inner(), 1),
                     nan_at({0, 1, 2}), 3)
    counts = [int(so.notfinite_count) for _, _, so, _ in steps]
    optax_counts = [int(st.notfinite_count) for _, _, _, st in steps]
    assert counts == [1, 0, 1] and optax_counts == [1, 2, 3]
    applied = [bool(jnp.isnan(uo["head"]).any()) for uo, _, _, _ in steps]
    optax_applied = [bool(jnp.isnan(ut["head"]).any()) for _, ut, _, _ in steps]
    assert applied == [False, True, False] and optax_applied == [False, True, True]
    assert [int(so.total_notfinite) for _, _, so, _ in steps] == [1, 2, 3]


def every_other(step):
    return step % 2 == 0


def test_conditionally_transform_and_mask_match_optax():
    ours = conditionally_transform(inner(), every_other)
    _, state = compare(ours, optax.conditionally_transform(inner(), every_other))
    assert isinstance(state, ConditionallyTransformState) and int(state.step) == 6
    ours = conditionally_mask(inner(), every_other)
    _, state = compare(ours, optax.conditionally_mask(inner(), every_other))
    assert isinstance(state, ConditionallyMaskState) and state._fields == ("step", "inner_state")


def test_conditional_wrappers_forward_extra_args_to_the_condition():
    def condition(step, *, loss):
        return loss < 1.0

    def extra(step, params):
        return {"loss": jnp.asarray(0.5 if step % 3 else 2.0)}

    for ours, theirs in ((conditionally_transform, optax.conditionally_transform),
                         (conditionally_mask, optax.conditionally_mask)):
        compare(ours(inner(), condition, forward_extra_args=True),
                theirs(inner(), condition, forward_extra_args=True), extra_args=extra)


def test_flatten_matches_optax():
    _, state = compare(flatten(inner()), optax.flatten(inner()))
    assert state[0].mu.shape == (15 + 3 + 1 + 72 + 6,)


def test_flatten_keeps_each_leaf_dtype():
    grads = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
    tx = flatten(optax.scale(0.5))
    u, _ = jax.jit(tx.update)(grads, tx.init(grads))
    assert u["a"].dtype == jnp.bfloat16 and u["b"].dtype == jnp.float32
    u_optax, _ = optax.flatten(optax.scale(0.5)).update(grads, optax.EmptyState())
    assert u_optax["a"].dtype == jnp.float32  # optax: the concatenation's promoted dtype


def run_lookahead(tx, params_cls, n_steps=7):
    params = params_cls.init_synced(make_params())
    state = tx.init(params)
    update = jax.jit(tx.update)
    history = []
    for step in range(n_steps):
        updates, state = update(make_grads(params.fast, step), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        history.append(params)
    return history, state


@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_matches_optax(reset_state):
    ours, our_state = run_lookahead(lookahead(inner(), 3, 0.5, reset_state), LookaheadParams)
    theirs, their_state = run_lookahead(optax.lookahead(inner(), 3, 0.5, reset_state),
                                         optax.LookaheadParams)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert_trees_close(a, b, what=f"params at step {step}")
    assert isinstance(our_state, LookaheadState)
    assert_trees_close(our_state, their_state, what="state")
    synced = ours[2]  # after sync_period steps, fast weights land on the slow ones (up to rounding)
    assert_trees_close(synced.fast, synced.slow)


def test_lookahead_slow_weights_follow_the_paper():
    """sgd(1) on f = x²/2 from x=1 (g = x), k=2, α=0.5: fast 1 → 0 → 0, slow 1 + 0.5(0 - 1)."""
    tx = lookahead(optax.sgd(1.0), 2, 0.5)
    params = LookaheadParams.init_synced(jnp.ones(()))
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(params.fast, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    np.testing.assert_allclose([params.fast, params.slow], [0.5, 0.5])


def test_lookahead_rejects_bad_sync_period_and_missing_params():
    with pytest.raises(ValueError, match=r"sync_period must be >= 1, got sync_period=0\."):
        lookahead(inner(), 0, 0.5)
    tx = lookahead(inner(), 2, 0.5)
    params = LookaheadParams.init_synced({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="requires the current value of parameters"):
        tx.update({"w": jnp.ones(2)}, tx.init(params))
