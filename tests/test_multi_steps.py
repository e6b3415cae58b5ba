"""MultiSteps against optax 0.2.8: same numbers and state, inner optimizer evaluated only on the
emitting mini-step, skip predicates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx

from gradx.multi_steps import (MultiSteps, MultiStepsState, skip_large_updates, skip_not_finite)
from support import assert_trees_close, compare, make_params


def inner():
    return optax.adam(1e-2)


@pytest.mark.parametrize("use_grad_mean", [True, False])
def test_multi_steps_matches_optax(use_grad_mean):
    ours = MultiSteps(inner(), 3, use_grad_mean=use_grad_mean)
    theirs = optax.MultiSteps(inner(), 3, use_grad_mean=use_grad_mean)
    history, state = compare(ours.gradient_transformation(), theirs.gradient_transformation(),
                             n_steps=7)
    assert isinstance(state, MultiStepsState)
    for step, updates in enumerate(history):  # zeros except on every third mini-step
        emitted = max(float(jnp.abs(u).max()) for u in jax.tree.leaves(updates)) > 0
        assert emitted == (step % 3 == 2)
    assert int(state.gradient_step) == 2 and int(state.mini_step) == 1


def test_multi_steps_schedule_and_has_updated():
    schedule = lambda step: jnp.where(step < 1, 1, 2)  # noqa: E731 - k=1 then k=2
    ours, theirs = MultiSteps(inner(), schedule), optax.MultiSteps(inner(), schedule)
    compare(ours.gradient_transformation(), theirs.gradient_transformation(), n_steps=5)
    params = make_params()
    state = ours.init(params)
    update, has_updated = jax.jit(ours.update), jax.jit(ours.has_updated)
    flags = []
    for _ in range(5):
        _, state = update(params, state, params)
        flags.append(bool(has_updated(state)))
    assert flags == [True, False, True, False, True]
    assert ours.inner_opt.init is not None


def test_mean_of_k_minibatches_is_one_step_on_the_mean():
    params = {"w": jnp.zeros(3)}
    tx = MultiSteps(optax.sgd(1.0), 4)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for i in range(4):
        updates, state = update({"w": jnp.full(3, i + 1.0)}, state, params)
        if i < 3:  # first three mini-steps: exactly zero, params untouched
            np.testing.assert_array_equal(updates["w"], np.zeros(3))
    np.testing.assert_allclose(updates["w"], np.full(3, -2.5), rtol=0)  # mean of 1..4


def test_inner_optimizer_runs_only_on_the_emitting_step():
    calls = []

    def counting_update(updates, state, params=None):
        jax.debug.callback(lambda: calls.append(1))
        return updates, state

    counting = optax.GradientTransformation(lambda p: optax.EmptyState(), counting_update)
    params = {"w": jnp.ones(2)}
    for wrapper, expected in ((MultiSteps, 2), (optax.MultiSteps, 6)):
        calls.clear()
        tx = wrapper(counting, 3)
        state, update = tx.init(params), jax.jit(tx.update)
        for _ in range(6):
            _, state = update(params, state, params)
        jax.effects_barrier()
        assert len(calls) == expected, wrapper  # optax runs the inner update on all 6 mini-steps


def test_bf16_grads_accumulate_in_float32():
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    ours = MultiSteps(optax.sgd(1.0), 2)
    theirs = optax.MultiSteps(optax.sgd(1.0), 2)
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    assert s_ours.acc_grads["w"].dtype == jnp.float32
    for i in range(4):
        g = {"w": jnp.full(4, 0.1 * (i + 1), jnp.bfloat16)}
        u_ours, s_ours = jax.jit(ours.update)(g, s_ours, params)
        u_theirs, s_theirs = jax.jit(theirs.update)(g, s_theirs, params)
        assert u_ours["w"].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(u_ours["w"], np.float32),
                                      np.asarray(u_theirs["w"], np.float32))
    assert_trees_close(s_ours, s_theirs, rtol=0, atol=0)


def test_skip_not_finite_matches_optax_and_leaves_state_untouched():
    ours = MultiSteps(inner(), 2, should_skip_update_fn=skip_not_finite)
    theirs = optax.MultiSteps(inner(), 2, should_skip_update_fn=optax.skip_not_finite)

    def grads(params, step):
        g = jax.tree.map(lambda p: jnp.full(p.shape, 0.5 + step, p.dtype), params)
        if step in (1, 4):
            g["dense"]["bias"] = g["dense"]["bias"].at[0].set(jnp.nan)
        return g

    params = make_params()
    so, st = ours.init(params), theirs.init(params)
    for step in range(6):
        g = grads(params, step)
        before = so
        uo, so = jax.jit(ours.update)(g, so, params)
        ut, st = jax.jit(theirs.update)(g, st, params)
        assert_trees_close(uo, ut, what=f"updates {step}")
        assert_trees_close(so, st, what=f"state {step}")
        if step in (1, 4):
            assert bool(so.skip_state["should_skip"]) and int(so.skip_state["num_not_finite"]) == 1
            same = so._replace(skip_state=before.skip_state)
            for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(before)):
                np.testing.assert_array_equal(a, b)  # bit-identical


def test_skip_large_updates_matches_optax():
    ours = MultiSteps(inner(), 2, should_skip_update_fn=functools.partial(
        skip_large_updates, max_squared_norm=150.0))
    theirs = optax.MultiSteps(inner(), 2, should_skip_update_fn=functools.partial(
        optax.skip_large_updates, max_squared_norm=150.0))
    _, state = compare(ours.gradient_transformation(), theirs.gradient_transformation(), n_steps=6)
    assert state.skip_state["norm_squared"].shape == ()


def test_skip_function_must_return_a_bool_scalar():
    tx = MultiSteps(inner(), 2, should_skip_update_fn=lambda u, s, p: (jnp.zeros(2, bool), ()))
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="must return a boolean scalar, got dtype bool and shape"):
        tx.update(params, tx.init(params), params)


def test_every_k_must_be_positive():
    with pytest.raises(ValueError, match=r"every_k_schedule must be > 0, got every_k_schedule=0\."):
        MultiSteps(inner(), 0)


def test_accumulator_follows_float64_under_x64():
    with jax.enable_x64(True):
        params = {"w": jnp.ones(2, jnp.float64)}
        assert MultiSteps(optax.sgd(1.0), 2).init(params).acc_grads["w"].dtype == jnp.float64
        assert optax.MultiSteps(optax.sgd(1.0), 2).init(params).acc_grads["w"].dtype == jnp.float32
        tx = MultiSteps(optax.sgd(1.0), 3)
        state = tx.init(params)
        grads = [1.0 + 1e-12, 2.0, 3.0 + 3e-12]
        for g in grads:
            u, state = tx.update({"w": jnp.full(2, g, jnp.float64)}, state, params)
        np.testing.assert_allclose(u["w"], -np.full(2, np.mean(grads)), rtol=1e-15)


def test_accumulator_keeps_complex_gradients():
    """Complex params accumulate complex gradients: the mean of 1+2j and 3-4j is 2-1j, where
    Optax's float32 accumulator dropped the first gradient's imaginary part (1 + (3-4j - 1)/2 =
    2-2j)."""
    params = {"w": jnp.zeros(2, jnp.complex64)}
    grads = [jnp.full(2, 1 + 2j, jnp.complex64), jnp.full(2, 3 - 4j, jnp.complex64)]
    for tx, expected in ((MultiSteps(optax.sgd(1.0), 2), -(2 - 1j)),
                         (optax.MultiSteps(optax.sgd(1.0), 2), -(2 - 2j))):
        state = tx.init(params)
        for g in grads:
            updates, state = tx.update({"w": g}, state, params)
        np.testing.assert_allclose(np.asarray(updates["w"]), np.full(2, expected), rtol=1e-6)
    assert MultiSteps(optax.sgd(1.0), 2).init(params).acc_grads["w"].dtype == jnp.complex64


def test_mini_steps_are_zeros_where_optaxs_inner_update_overflows():
    """float16 Nesterov AdaBelief with a gradient of 30000: its moments overflow to Inf and the
    inner update is NaN (Inf / Inf). Optax runs the inner optimizer on the mini-step and multiplies its output by
    0 (NaN); gradx runs it on the emitting step only, so the mini-step's update is 0."""
    params = {"w": jnp.zeros(2, jnp.float16)}
    grads = {"w": jnp.array([30000.0, 0.5], jnp.float16)}
    ours = MultiSteps(gradx.adabelief(0.1, nesterov=True), 2)
    theirs = optax.MultiSteps(optax.adabelief(0.1, nesterov=True), 2)
    u, _ = jax.jit(ours.update)(grads, ours.init(params), params)
    v, _ = jax.jit(theirs.update)(grads, theirs.init(params), params)
    np.testing.assert_array_equal(np.asarray(u["w"], np.float32), 0.0)
    assert np.isnan(np.asarray(v["w"], np.float32)[0])
