"""accumulate_gradients: k micro-batches equal one step on their (token-weighted) mean, one
full-size buffer, optimizer steps counted apart from micro-steps (schedules included),
non-finite micro-batches dropped and counted."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradx.hyperparams import inject_hyperparams, read_state
from gradx.multi_steps import AccumulateGradientsState, MultiSteps, accumulate_gradients
from support import assert_trees_close, make_grads, make_params

K = 3


def micro_batches(params, n):
    return [make_grads(params, step) for step in range(n)]


def weighted_mean(grads, weights, mean=True):
    """Σ wᵢ gᵢ / Σ wᵢ (or Σ wᵢ gᵢ) in float64, cast to float32."""
    total = sum(weights) if mean else 1.0
    return jax.tree.map(
        lambda *gs: jnp.asarray(sum(w * np.asarray(g, np.float64) for w, g in zip(weights, gs))
                                / total, jnp.float32), *grads)


def run(tx, grads, weights=None, params=None):
    params = make_params() if params is None else params
    update = jax.jit(tx.update)
    state, history = tx.init(params), []
    for i, g in enumerate(grads):
        kwargs = {} if weights is None else {"weight": weights[i]}
        updates, state = update(g, state, params, **kwargs)
        history.append(updates)
    return history, state


def assert_zero(updates):
    for u in jax.tree.leaves(updates):
        np.testing.assert_array_equal(u, np.zeros_like(u))


@pytest.mark.parametrize("weights", [None, [3, 1, 4, 1, 5, 9]], ids=["mean", "token-weighted"])
def test_k_micro_batches_equal_one_step_on_their_mean(weights):
    params = make_params()
    grads = micro_batches(params, 2 * K)
    history, state = run(accumulate_gradients(optax.adam(1e-2), K), grads, weights, params)
    w = weights or [1] * (2 * K)
    oracle_update, oracle_state = jax.jit(optax.adam(1e-2).update), optax.adam(1e-2).init(params)
    for window in range(2):
        lo, hi = window * K, (window + 1) * K
        for step in range(lo, hi - 1):
            assert_zero(history[step])
        expected, oracle_state = oracle_update(weighted_mean(grads[lo:hi], w[lo:hi]),
                                               oracle_state, params)
        assert_trees_close(history[hi - 1], expected, what=f"window {window}")
    assert isinstance(state, AccumulateGradientsState)
    assert_trees_close(state.inner_state, oracle_state, what="inner state")
    assert (int(state.optimizer_step), int(state.micro_step)) == (2, 0)


def test_weighted_sum_without_mean():
    params = {"w": jnp.zeros(3)}
    grads = [{"w": jnp.full(3, v)} for v in (1.0, 2.0, 4.0)]
    history, _ = run(accumulate_gradients(optax.sgd(1.0), 3, use_grad_mean=False), grads,
                     [2, 0, 1], params)
    np.testing.assert_array_equal(history[-1]["w"], np.full(3, -(2 * 1.0 + 4.0)))


def test_inner_schedule_and_every_k_follow_optimizer_steps():
    """The inner optimizer's count (and so its learning-rate schedule) advances once per window;
    the window length itself is a schedule of the optimizer step (k=1, then k=2)."""
    every_k = lambda step: jnp.where(step < 1, 1, 2)  # noqa: E731
    lr = lambda count: 0.1 * (count + 1)  # noqa: E731
    tx = accumulate_gradients(inject_hyperparams(optax.sgd)(learning_rate=lr), every_k)
    params = {"w": jnp.zeros(2)}
    history, state = run(tx, [{"w": jnp.ones(2)}] * 5, params=params)
    emitted = [float(u["w"][0]) for u in history]
    np.testing.assert_allclose(emitted, [-0.1, 0.0, -0.2, 0.0, -0.3], rtol=1e-6)
    values = jax.jit(read_state)(state)
    assert int(values["optimizer_step"]) == 3 and int(values["micro_step"]) == 0
    np.testing.assert_allclose(values["learning_rate"], 0.3, rtol=1e-6)


def test_nonfinite_micro_batches_are_dropped_and_counted():
    params = make_params()
    grads = micro_batches(params, 2 * K)
    grads[1] = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads[1])
    weights = [2, 5, 3, 1, 1, 1]
    tx = accumulate_gradients(optax.adam(1e-2), K, skip_nonfinite=True)
    state, update = tx.init(params), jax.jit(tx.update)
    history = []
    for i, g in enumerate(grads):
        before = state
        updates, state = update(g, state, params, weight=weights[i])
        history.append(updates)
        if i == 1:  # dropped: accumulator and window weight bit-identical, position advances
            assert_trees_close(state.acc_grads, before.acc_grads, rtol=0, atol=0)
            assert float(state.window_weight) == float(before.window_weight) == 2.0
            assert int(state.micro_step) == 2 and int(state.skipped_micro_batches) == 1
            assert_zero(updates)
    oracle = optax.adam(1e-2)
    expected, _ = jax.jit(oracle.update)(weighted_mean([grads[0], grads[2]], [2, 3]),
                                         oracle.init(params), params)
    assert_trees_close(history[K - 1], expected, what="window with a dropped micro-batch")
    assert int(state.optimizer_step) == 2 and int(read_state(state)["skipped_micro_batches"]) == 1


def test_window_of_only_dropped_micro_batches_takes_no_step():
    params = {"w": jnp.ones(2)}
    tx = accumulate_gradients(optax.adam(1e-2), 2, skip_nonfinite=True)
    state, update = tx.init(params), jax.jit(tx.update)
    _, state = update({"w": jnp.ones(2)}, state, params)
    _, state = update({"w": jnp.ones(2)}, state, params)  # one real step
    before = state
    for bad in ({"w": jnp.array([jnp.inf, 1.0])}, {"w": jnp.array([jnp.nan, 1.0])}):
        updates, state = update(bad, state, params)
        assert_zero(updates)
    assert_trees_close(state.inner_state, before.inner_state, rtol=0, atol=0)
    assert int(state.optimizer_step) == 1 and int(state.skipped_micro_batches) == 2
    assert int(state.micro_step) == 0 and float(state.window_weight) == 0.0


def nbytes(tree):
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def test_accumulator_is_the_only_full_size_extra_buffer():
    params = make_params(jnp.bfloat16)
    inner = optax.adam(1e-2)
    state = accumulate_gradients(inner, 4).init(params)
    inner_leaves = jax.tree.leaves(inner.init(params))
    extra = len(jax.tree.leaves(state)) - len(inner_leaves)
    n_params = len(jax.tree.leaves(params))
    assert extra == n_params + 4  # acc_grads, and four scalars
    numel = sum(p.size for p in jax.tree.leaves(params))
    assert nbytes(state) - nbytes(inner_leaves) == 4 * numel + 4 * 4  # float32 acc + scalars
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state.acc_grads))


def test_bf16_gradients_reach_the_inner_optimizer_in_float32():
    seen = []

    def record(updates, params):
        seen.append(jax.tree.leaves(updates)[0].dtype)
        return updates

    params = {"w": jnp.ones(2, jnp.bfloat16)}
    tx = accumulate_gradients(optax.stateless(record), 2)
    # 1 + 2⁻⁸ is the mean of two bf16 numbers (1 and 1 + 2⁻⁷) but not itself a bf16 number.
    grads = [{"w": jnp.full(2, v, jnp.bfloat16)} for v in (1.0, 1.0 + 2 ** -7)]
    history, _ = run(tx, grads, params=params)
    assert set(seen) == {jnp.dtype(jnp.float32)} and history[-1]["w"].dtype == jnp.bfloat16
    # The inner rule g - 1 sees the float32 mean: 2⁻⁸ (a bf16 number) comes out. MultiSteps,
    # as Optax, rounds the mean to bf16 first (to 1.0, ties to even), which gives 0.
    minus_one = optax.stateless(lambda u, p: jax.tree.map(lambda x: x - 1, u))
    ours, _ = run(accumulate_gradients(minus_one, 2), grads, params=params)
    theirs, _ = run(MultiSteps(minus_one, 2).gradient_transformation(), grads, params=params)
    np.testing.assert_array_equal(np.asarray(ours[-1]["w"], np.float32), np.full(2, 2 ** -8))
    np.testing.assert_array_equal(np.asarray(theirs[-1]["w"], np.float32), np.zeros(2))


def test_every_k_must_be_positive():
    with pytest.raises(ValueError, match=r"every_k_schedule must be > 0, got every_k_schedule=0\."):
        accumulate_gradients(optax.sgd(1.0), 0)
