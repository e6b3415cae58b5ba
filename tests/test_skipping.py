"""skip_bad_steps: a skipped step leaves the inner state bit-identical (alone, inside and
around gradient accumulation), counts itself, and the good steps equal the oracle run on the
good gradients only."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradx.hyperparams import read_state, register_readable_state, with_telemetry
from gradx.multi_steps import MultiSteps, accumulate_gradients
from gradx.skipping import SkipBadStepsState, skip_bad_steps
from support import assert_trees_close, make_grads, make_params

MAX_NORM = 100.0  # make_grads norms grow from 8 (step 0) to 37 (step 5); the spike is ~1000


def bad_grads(params, step):
    """make_grads, with a NaN at step 1 and a spike (norm far above MAX_NORM) at step 3."""
    g = make_grads(params, step)
    if step == 1:
        g["head"] = g["head"].at[0, 0].set(jnp.nan)
    if step == 3:
        g["conv"] = g["conv"] * 100.0
    return g


def inner():
    return optax.adam(optax.linear_schedule(1e-2, 1e-3, 10))  # its count drives the schedule


def assert_bit_identical(a, b):
    assert_trees_close(a, b, rtol=0, atol=0)


def test_skipped_steps_leave_the_state_bit_identical():
    params = make_params()
    tx = skip_bad_steps(inner(), max_grad_norm=MAX_NORM)
    state, update = tx.init(params), jax.jit(tx.update)
    oracle_update, oracle_state = jax.jit(inner().update), inner().init(params)
    for step in range(5):
        g = bad_grads(params, step)
        before = state
        updates, state = update(g, state, params)
        assert isinstance(state, SkipBadStepsState)
        if step in (1, 3):
            assert_bit_identical(state.inner_state, before.inner_state)
            for u in jax.tree.leaves(updates):
                np.testing.assert_array_equal(u, np.zeros_like(u))
            assert bool(state.last_skipped)
        else:  # the good steps are the oracle's steps on the good gradients
            expected, oracle_state = oracle_update(g, oracle_state, params)
            assert_trees_close(updates, expected, what=f"step {step}")
            assert not bool(state.last_skipped)
    assert_trees_close(state.inner_state, oracle_state)
    assert int(state.inner_state[0].count) == 3  # count advanced on the 3 good steps only
    assert int(jax.jit(read_state)(state)["skipped_steps"]) == 2
    observed = with_telemetry(tx)  # readable beside telemetry
    _, observed_state = jax.jit(observed.update)(
        bad_grads(params, 3), observed.init(params), params)
    values = read_state(observed_state)
    assert int(values["skipped_steps"]) == 1 and "grad_norm" in values


def test_each_test_alone():
    """The norm test alone lets a NaN through (NaN > x is False) but stops an Inf; the
    non-finite test alone lets a spike through."""
    params = {"w": jnp.ones(2)}
    g_nan, g_inf, g_big = ({"w": jnp.array([v, 1.0])} for v in (jnp.nan, jnp.inf, 1e3))
    norm_only = skip_bad_steps(optax.sgd(1.0), max_grad_norm=10.0, skip_nonfinite=False)
    finite_only = skip_bad_steps(optax.sgd(1.0))
    for tx, expected in ((norm_only, [False, True, True]), (finite_only, [True, True, False])):
        update = jax.jit(tx.update)
        skipped = [bool(update(g, tx.init(params), params)[1].last_skipped)
                   for g in (g_nan, g_inf, g_big)]
        assert skipped == expected


def test_skipping_inside_accumulation_judges_each_accumulated_gradient():
    """A window whose mean gradient is a spike is skipped by the inner wrapper: the inner
    optimizer's state (moments, count) is bit-identical; the next window steps normally."""
    params = make_params()
    k = 2
    tx = accumulate_gradients(skip_bad_steps(inner(), max_grad_norm=MAX_NORM), k)
    state, update = tx.init(params), jax.jit(tx.update)
    for step in range(3 * k):
        g = bad_grads(params, step) if step != 1 else make_grads(params, step)  # spike at 3
        if step == k:
            before = state.inner_state.inner_state
        _, state = update(g, state, params)
        if step == 2 * k - 1:
            assert_bit_identical(state.inner_state.inner_state, before)
    values = read_state(state)
    assert int(values["skipped_steps"]) == 1 and int(values["optimizer_step"]) == 3
    assert int(state.inner_state.inner_state[0].count) == 2


@pytest.mark.parametrize("accumulate", [
    lambda opt: accumulate_gradients(opt, 3),
    lambda opt: MultiSteps(opt, 3).gradient_transformation()], ids=["accumulate", "MultiSteps"])
def test_skipping_around_accumulation_drops_micro_batches(accumulate):
    """Around accumulation, a bad micro-batch leaves the whole accumulation state (accumulator,
    position, inner state) bit-identical; the window completes on the next good ones."""
    params = make_params()
    tx = skip_bad_steps(accumulate(inner()), max_grad_norm=MAX_NORM)
    state, update = tx.init(params), jax.jit(tx.update)
    good = []
    for step in range(5):  # good micro-batches 0, 2, 4; bad 1 and 3
        g = bad_grads(params, step)
        before = state.inner_state
        updates, state = update(g, state, params)
        if step in (1, 3):
            assert_bit_identical(state.inner_state, before)
        else:
            good.append(g)
    mean = jax.tree.map(lambda *gs: sum(gs) / 3, *good)
    expected, _ = jax.jit(inner().update)(mean, inner().init(params), params)
    assert_trees_close(updates, expected, what="window completed after two bad micro-batches")
    assert int(read_state(state)["skipped_steps"]) == 2


def test_validation():
    with pytest.raises(ValueError, match=r"max_grad_norm must be > 0, got max_grad_norm=0\.0\."):
        skip_bad_steps(optax.sgd(1.0), max_grad_norm=0.0)
    with pytest.raises(ValueError, match=r"skip_bad_steps checks nothing: pass max_grad_norm or "
                                         r"skip_nonfinite=True\."):
        skip_bad_steps(optax.sgd(1.0), skip_nonfinite=False)


def test_readable_states_need_an_inner_state():
    class Counter(NamedTuple):
        count: jax.Array

    with pytest.raises(ValueError, match=r"Counter has no inner_state field\."):
        register_readable_state(Counter, ("count",))
