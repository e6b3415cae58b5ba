"""with_master_weights and stochastic_round: bf16 params tracking a float32 run, updates landing
the params on the rounded master weights, per-moment state dtypes with float32 math, state
size, unbiased stochastic rounding."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from gradx.base import NO_PARAMS_MSG
from gradx.masking import MaskedNode
from gradx.mixed_precision import MasterWeightsState, stochastic_round, with_master_weights
from gradx.multi_steps import accumulate_gradients
from gradx.skipping import skip_bad_steps
from gradx.updates import apply_updates
from support import assert_trees_close, make_grads, make_params

RNG = np.random.default_rng(0)
N = 64
TARGET = jnp.asarray(RNG.uniform(-0.1, 0.1, N), jnp.float32)
CURVATURE = jnp.asarray(RNG.uniform(0.5, 2.0, N), jnp.float32)
X0 = np.asarray(RNG.uniform(0.5, 1.5, N), np.float32)


def quadratic(x):
    return 0.5 * jnp.sum(CURVATURE * (x.astype(jnp.float32) - TARGET) ** 2)


@jax.jit
def train_all(x32, x16):
    """Adam(3e-3), 1500 steps on the quadratic: float32, bf16 with master weights, plain bf16."""
    def train(tx, x):
        def body(carry, _):
            x, state = carry
            updates, state = tx.update(jax.grad(quadratic)(x).astype(x.dtype), state, x)
            return (apply_updates(x, updates), state), None
        return jax.lax.scan(body, (x, tx.init(x)), None, length=1500)[0][0]
    adam = optax.adam(3e-3)
    return train(adam, x32), train(with_master_weights(adam), x16), train(adam, x16)


def test_master_weights_track_float32_where_plain_bf16_does_not():
    """Adam's steps of ~3e-3 are below half a bf16 ulp for params in [1, 2) (2⁻⁸ ≈ 3.9e-3), so
    plain bf16 params never move from there; the master weights take every step. The final
    bf16 params then differ from the float32 run by their rounding (≤ 2⁻¹² near the targets)
    plus the effect of gradients taken at rounded params."""
    ref, master, plain = train_all(jnp.asarray(X0), jnp.asarray(X0, jnp.bfloat16))
    assert master.dtype == plain.dtype == jnp.bfloat16
    master_error = np.max(np.abs(np.asarray(master, np.float32) - np.asarray(ref)))
    plain_error = np.max(np.abs(np.asarray(plain, np.float32) - np.asarray(ref)))
    assert master_error < 1e-3, master_error
    assert plain_error > 1e-1, plain_error


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_updates_land_params_on_the_rounded_master_weights(dtype):
    """sgd(1) with g = m - target moves each master weight to its target: across zero, by
    large jumps, to tiny values; p + u (apply_updates) must give round(m) exactly."""
    start = jnp.asarray([1e-3, 300.0, 0.0, -2.0, 1.0, 3e-5, 1000.0, -0.5], dtype)
    targets = [[-2.5e-3, 1e-3, 1e-4, 2.0, 1.0 + 1e-4, -7e-5, 0.0, -0.5 - 1e-4],
               [0.3, -300.0, 5.0, 1e-3, 1.0 - 3e-4, 1e-4, 999.0, 7.0]]
    params = {"low": start, "f32": jnp.asarray([1.0, 2.0])}
    tx = with_master_weights(optax.sgd(1.0))
    state, update = tx.init(params), jax.jit(tx.update)
    for target in targets:
        g = {"low": (state.master_params["low"] - jnp.asarray(target)).astype(dtype),
             "f32": jnp.asarray([0.5, -0.25])}
        # The gradient given is in the params' dtype (rounded); the step is what the master
        # weights make of it, so compute the expected master from the same rounded gradient.
        expected_master = state.master_params["low"] - g["low"].astype(jnp.float32)
        updates, state = update(g, state, params)
        assert updates["low"].dtype == jnp.float32 and updates["f32"].dtype == jnp.float32
        params = apply_updates(params, updates)
        np.testing.assert_array_equal(state.master_params["low"], expected_master)
        np.testing.assert_array_equal(np.asarray(params["low"], np.float32),
                                      np.asarray(expected_master.astype(dtype), np.float32))
        assert params["low"].dtype == dtype
    np.testing.assert_array_equal(params["f32"], [0.0, 2.5])  # passed through, no master
    assert isinstance(state.master_params["f32"], MaskedNode)


def test_moment_dtypes_store_per_moment_and_compute_in_float32():
    """mu stored in bf16, nu in float32, math in float32: equal to a float32 Adam whose mu is
    rounded to bf16 after every step. Optax's adam(mu_dtype=bf16) on bf16 params keeps nu in
    bf16 too (optax#1552), and has no master weights."""
    params = make_params(jnp.bfloat16)
    tx = with_master_weights(optax.adam(1e-2),
                             moment_dtypes={"mu": jnp.bfloat16, "nu": jnp.float32})
    state, update = tx.init(params), jax.jit(tx.update)
    adam_state = state.inner_state[0]
    assert all(m.dtype == jnp.bfloat16 for m in jax.tree.leaves(adam_state.mu))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(adam_state.nu))
    assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(
        optax.adam(1e-2, mu_dtype=jnp.bfloat16).init(params)[0].nu))

    oracle = optax.adam(1e-2)
    oracle_update = jax.jit(oracle.update)
    master = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    oracle_state = oracle.init(master)
    to_bf16_and_back = lambda t: jax.tree.map(  # noqa: E731
        lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), t)
    for step in range(4):
        g = make_grads(params, step)
        updates, state = update(g, state, params)
        params = apply_updates(params, updates)
        u, oracle_state = oracle_update(jax.tree.map(lambda x: x.astype(jnp.float32), g),
                                        oracle_state, master)
        oracle_state = (oracle_state[0]._replace(mu=to_bf16_and_back(oracle_state[0].mu)),
                        oracle_state[1])
        master = optax.apply_updates(master, u)
    assert_trees_close(state.master_params, master, what="master weights")
    assert_trees_close(state.inner_state, oracle_state, what="adam state")
    assert jax.tree.leaves(state.inner_state[0].mu)[0].dtype == jnp.bfloat16


def test_moment_dtypes_reach_into_the_fast_path_state():
    """Around ``gradx.fused(adam)``, whose moments sit in a ``FusedState``: mu is stored in bf16
    there too, and the steps equal those around the reference adam (same master weights)."""
    params = make_params(jnp.bfloat16)
    dtypes = {"mu": jnp.bfloat16}
    fast = with_master_weights(gradx.fused.fused(gradx.adam(1e-2)), moment_dtypes=dtypes)
    reference = with_master_weights(gradx.adam(1e-2), moment_dtypes=dtypes)
    fast_state, ref_state = fast.init(params), reference.init(params)
    assert isinstance(fast_state.inner_state, gradx.fused.FusedState)
    assert all(m.dtype == jnp.bfloat16
               for m in jax.tree.leaves(fast_state.inner_state.inner[0].mu))
    for step in range(3):
        g = make_grads(params, step)
        _, fast_state = jax.jit(fast.update)(g, fast_state, params)
        _, ref_state = jax.jit(reference.update)(g, ref_state, params)
    assert_trees_close(fast_state.master_params, ref_state.master_params, rtol=1e-6,
                       what="master weights")


def nbytes(tree):
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def test_master_copies_only_for_low_precision_params():
    params = {"bf16": make_params(jnp.bfloat16), "f32": make_params(jnp.float32)}
    inner = optax.adam(1e-2)
    state = with_master_weights(inner).init(params)
    assert isinstance(state, MasterWeightsState) and state.key == ()
    numel = sum(p.size for p in jax.tree.leaves(params["bf16"]))
    assert nbytes(state.master_params) == 4 * numel
    assert all(isinstance(m, MaskedNode) for m in jax.tree.leaves(
        state.master_params["f32"], is_leaf=lambda x: isinstance(x, MaskedNode)))
    # Moments are float32 for every leaf (computed on the masters); nothing else is added.
    assert nbytes(state.inner_state) == nbytes(inner.init(
        jax.tree.map(lambda p: p.astype(jnp.float32), params)))


def test_validation_errors():
    params = {"w": jnp.ones(2, jnp.bfloat16)}
    message = (r"moment_dtypes names \['mo'\], which the inner state does not have; its fields "
               r"are \['count', 'mu', 'nu'\]\.")
    with pytest.raises(ValueError, match=message):
        with_master_weights(optax.adam(1e-2), moment_dtypes={"mo": jnp.bfloat16}).init(params)
    tx = with_master_weights(optax.adam(1e-2))
    with pytest.raises(ValueError, match=re.escape(NO_PARAMS_MSG)):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_stochastic_rounding_is_unbiased(dtype):
    """Each rounding error, in units of the gap between the two neighbours, has mean 0 and
    variance p(1 - p) ≤ 1/4, so the mean of n = 2¹⁶ independent ones has standard deviation
    ≤ 1 / (2·256): 5 standard deviations is 0.01 (a chance of 6e-7 to fail for a random key;
    the key is fixed, so the test is deterministic). Nearest rounding of the same values is
    biased by 0.3 gap."""
    n = 2 ** 16
    lo = jnp.asarray(1.0, dtype).astype(jnp.float32)
    gap = jnp.nextafter(jnp.asarray(1.0, dtype), jnp.asarray(2.0, dtype)).astype(jnp.float32) - lo
    x = jnp.full(n, lo + 0.3 * gap)
    rounded = jax.jit(stochastic_round, static_argnums=1)(x, dtype, jax.random.key(0))
    assert rounded.dtype == dtype
    values = np.asarray(rounded, np.float32)
    assert set(np.unique(values)) == {float(lo), float(lo + gap)}
    assert abs(np.mean((values - np.asarray(x)) / float(gap))) < 0.01
    assert abs(np.mean((np.asarray(x.astype(dtype), np.float32) - np.asarray(x)) / float(gap))
               ) == pytest.approx(0.3, rel=1e-3)

    # Values over many magnitudes (fp16 subnormals included), errors measured in ulps.
    x = jnp.asarray(RNG.normal(size=n) * 10.0 ** RNG.uniform(-6, 2, n), jnp.float32)
    rounded = jax.jit(stochastic_round, static_argnums=1)(x, dtype, jax.random.key(1))
    down = np.asarray(rounded, np.float32)
    other = np.asarray(jnp.nextafter(rounded, jnp.where(rounded.astype(jnp.float32) < x, jnp.inf,
                                                        -jnp.inf).astype(dtype)), np.float32)
    spacing = np.abs(other - down)
    inexact = np.asarray(x) != down
    assert np.all(np.abs(down - np.asarray(x))[inexact] < spacing[inexact])  # a neighbour
    errors = ((down - np.asarray(x)) / np.where(spacing > 0, spacing, 1))[inexact]
    assert abs(np.mean(errors)) < 5 / (2 * np.sqrt(errors.size))


def test_stochastic_rounding_in_the_wrapper_keeps_params_unbiased():
    """4096 bf16 params at 1.0 take 100 sgd steps of 1e-4: the masters reach 0.99 (between the
    bf16 neighbours 0.98828125 and 0.9921875, 0.44 of the gap up). Stochastically rounded params
    average to 0.99 (standard deviation of the mean 2⁻⁸·√(0.25/4096) ≈ 3e-5, tolerance 5×);
    nearest rounding puts every param at 0.98828125, 1.7e-3 below."""
    params = {"w": jnp.ones(4096, jnp.bfloat16)}
    g = {"w": jnp.full(4096, 1e-4, jnp.bfloat16)}

    def run(tx):
        p, state = params, tx.init(params)
        update = jax.jit(tx.update)
        for _ in range(100):
            updates, state = update(g, state, p)
            p = apply_updates(p, updates)
        return np.asarray(p["w"], np.float32), state

    stochastic, state = run(with_master_weights(optax.sgd(1.0), stochastic_rounding=True))
    nearest, _ = run(with_master_weights(optax.sgd(1.0)))
    master = float(state.master_params["w"][0])
    assert master == pytest.approx(1.0 - 100 * float(jnp.asarray(1e-4, jnp.bfloat16)), abs=1e-6)
    assert set(np.unique(stochastic)) == {0.98828125, 0.9921875}
    assert abs(stochastic.mean() - master) < 1.5e-4
    assert np.all(nearest == 0.98828125)
    assert state.key.dtype == jnp.uint32 and not np.array_equal(
        state.key, jax.random.key_data(jax.random.key(0)))


def test_a_skipped_step_leaves_master_weights_and_moments_bit_identical():
    params = make_params(jnp.bfloat16)
    tx = skip_bad_steps(with_master_weights(optax.adam(1e-2), stochastic_rounding=True))
    state, update = tx.init(params), jax.jit(tx.update)
    _, state = update(make_grads(params, 0), state, params)
    before = state.inner_state
    bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), make_grads(params, 1))
    updates, state = update(bad, state, params)
    assert_trees_close(state.inner_state, before, rtol=0, atol=0)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))
    assert int(state.skipped_steps) == 1


def test_around_gradient_accumulation():
    """Micro-steps leave params and masters untouched; the emitting step moves the masters by
    the float32 mean and lands the bf16 params on them, rounded."""
    params = {"w": jnp.asarray([1.0, -3.0, 0.25], jnp.bfloat16)}
    tx = with_master_weights(accumulate_gradients(optax.sgd(1e-3), 2))
    state, update = tx.init(params), jax.jit(tx.update)
    grads = [{"w": jnp.asarray(v, jnp.bfloat16)} for v in ([1.0, 2.0, -1.0], [2.0, 3.0, 4.0])]
    updates, state = update(grads[0], state, params)
    np.testing.assert_array_equal(updates["w"], np.zeros(3))
    np.testing.assert_array_equal(state.master_params["w"], np.asarray(params["w"], np.float32))
    updates, state = update(grads[1], state, params)
    expected = np.asarray([1.0, -3.0, 0.25], np.float32) - np.float32(1e-3) * np.asarray(
        [1.5, 2.5, 1.5], np.float32)
    np.testing.assert_allclose(state.master_params["w"], expected, rtol=1e-7)
    new = apply_updates(params, updates)
    np.testing.assert_array_equal(np.asarray(new["w"], np.float32), np.asarray(
        state.master_params["w"].astype(jnp.bfloat16), np.float32))
