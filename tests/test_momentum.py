"""trace, ema and scale_by_optimistic_gradient against optax 0.2.8 and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from support import (assert_same_state_class, assert_trees_close, compare, compare_bf16,
                     compare_complex, make_grads, make_params, run)


@pytest.mark.parametrize("kwargs", [dict(decay=0.9), dict(decay=0.7, nesterov=True),
                                    dict(decay=0.0), dict(decay=1.0)])
def test_trace_matches_optax(kwargs):
    ours, theirs = gradx.trace(**kwargs), optax.trace(**kwargs)
    compare(ours, theirs)
    assert_same_state_class(ours, theirs, "TraceState")


def test_trace_closed_form_with_nesterov():
    tx = gradx.trace(0.5, nesterov=True)
    update, state = jax.jit(tx.update), tx.init({"w": jnp.zeros(2)})
    u1, state = update({"w": jnp.array([1.0, 2.0])}, state)
    u2, state = update({"w": jnp.array([3.0, -2.0])}, state)
    # b1 = g1 = [1, 2], u1 = g1 + 0.5·b1; b2 = g2 + 0.5·b1 = [3.5, -1], u2 = g2 + 0.5·b2
    np.testing.assert_allclose(u1["w"], [1.5, 3.0])
    np.testing.assert_allclose(state.trace["w"], [3.5, -1.0])
    np.testing.assert_allclose(u2["w"], [4.75, -2.5])


def test_trace_and_ema_complex_match_optax():
    compare_complex(gradx.trace(0.9, nesterov=True), optax.trace(0.9, nesterov=True))
    compare_complex(gradx.ema(0.9), optax.ema(0.9))


@pytest.mark.parametrize("factory", ["trace", "ema"])
def test_low_precision_accumulator_matches_optax(factory):
    # f32 params, bf16 accumulator: the accumulator is rounded to bf16 after every step.
    ours = getattr(gradx, factory)(0.9, accumulator_dtype=jnp.bfloat16)
    theirs = getattr(optax, factory)(0.9, accumulator_dtype=jnp.bfloat16)
    compare(ours, theirs)
    state = ours.init(make_params())
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(getattr(state, factory)))


@pytest.mark.parametrize("factory", ["trace", "ema"])
def test_f32_accumulator_with_bf16_params_keeps_bf16_updates(factory):
    params = make_params(jnp.bfloat16)
    ours = getattr(gradx, factory)(0.9, accumulator_dtype=jnp.float32)
    theirs = getattr(optax, factory)(0.9, accumulator_dtype=jnp.float32)
    # The same gradients for both (applying bf16 vs f32 updates would make the params differ).
    fixed = lambda _, step: make_grads(params, step)
    a, _, a_state = run(ours, params, n_steps=3, grads_fn=fixed)
    b, _, b_state = run(theirs, params, n_steps=3, grads_fn=fixed)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(a[-1]))
    # optax returns float32 updates here; gradx returns the same numbers rounded to bf16.
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(b[-1]))
    assert_trees_close(a, jax.tree.map(lambda x: x.astype(jnp.bfloat16), b), rtol=0, atol=0)
    assert_trees_close(a_state, b_state)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(getattr(a_state, factory)))


@pytest.mark.parametrize("factory, kwargs", [("trace", dict(decay=0.9, nesterov=True)),
                                             ("ema", dict(decay=0.9)),
                                             ("scale_by_optimistic_gradient", {})])
def test_bf16_params_keep_bf16(factory, kwargs):
    compare_bf16(getattr(gradx, factory)(**kwargs), getattr(optax, factory)(**kwargs))


@pytest.mark.parametrize("kwargs", [dict(decay=0.9), dict(decay=0.8, debias=False),
                                    dict(decay=1.0, debias=False)])
def test_ema_matches_optax(kwargs):
    ours, theirs = gradx.ema(**kwargs), optax.ema(**kwargs)
    compare(ours, theirs)
    assert_same_state_class(ours, theirs, "EmaState")


def test_ema_state_stays_biased_and_output_is_debiased():
    tx = gradx.ema(0.9)
    update, state = jax.jit(tx.update), tx.init({"w": jnp.zeros(2)})
    g1, g2 = jnp.array([1.0, -2.0]), jnp.array([3.0, 4.0])
    u1, state = update({"w": g1}, state)
    np.testing.assert_allclose(u1["w"], g1, rtol=1e-6)           # 0.1·g1 / (1 - 0.9)
    np.testing.assert_allclose(state.ema["w"], 0.1 * g1, rtol=1e-6)
    u2, state = update({"w": g2}, state)
    biased = 0.1 * g2 + 0.09 * g1
    np.testing.assert_allclose(state.ema["w"], biased, rtol=1e-6)
    np.testing.assert_allclose(u2["w"], biased / (1 - 0.81), rtol=1e-6)
    assert int(state.count) == 2


@pytest.mark.parametrize("kwargs", [{}, dict(alpha=0.5, beta=2.0)])
def test_optimistic_gradient_matches_optax(kwargs):
    ours = gradx.scale_by_optimistic_gradient(**kwargs)
    theirs = optax.scale_by_optimistic_gradient(**kwargs)
    compare(ours, theirs)
    assert_same_state_class(ours, theirs, "ScaleByOptimisticGradientState")


def test_optimistic_gradient_exact_sequence():
    params = make_params()
    tx = gradx.scale_by_optimistic_gradient()
    g = [make_grads(params, step) for step in range(3)]
    updates, _, state = run(tx, params, n_steps=3, grads_fn=lambda _, step: g[step])
    combine = lambda a, b: jax.tree.map(lambda x, y: 2 * x - y, a, b)
    for actual, expected in zip(updates, [g[0], combine(g[1], g[0]), combine(g[2], g[1])]):
        assert_trees_close(actual, expected)
    assert not bool(state.is_initial_step)
    assert_trees_close(state.previous_gradient, g[2], rtol=0, atol=0)


@pytest.mark.parametrize("factory, kwargs, message", [
    (gradx.trace, dict(decay=1.5), r"decay must be in \[0.0, 1.0\], got decay=1.5"),
    (gradx.trace, dict(decay=-0.9), r"decay must be in \[0.0, 1.0\], got decay=-0.9"),
    (gradx.ema, dict(decay=1.5), r"decay must be in \[0.0, 1.0\], got decay=1.5"),
    (gradx.ema, dict(decay=-0.1, debias=False), r"decay must be in \[0.0, 1.0\], got decay=-0.1"),
])
def test_invalid_hyperparameters_raise(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)
