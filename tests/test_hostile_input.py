"""Non-finite and hostile input: NaN/Inf gradients propagate as in Optax, NaN hyperparameters and
impossible dtypes raise errors naming the argument or the leaf, a schedule that returns NaN
never touches the state, and every skipping wrapper keeps the state bit-identical on a bad step
(the fast path ``gradx.fused`` included, through its public API)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from gradx import fused as fx
from support import assert_trees_close

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.5, -0.25, 2.0])}
NAN = {"w": jnp.array([[1.0, jnp.nan, -1.0], [0.5, 0.2, jnp.inf]]), "b": jnp.array([1.0, -2.0, 0.5])}
GOOD = jax.tree.map(lambda p: jnp.cos(3 * p), PARAMS)


def _steps(tx, grads_list, params=PARAMS, **extra):
    update = jax.jit(tx.update)
    state = tx.init(params)
    out = []
    for grads in grads_list:
        updates, state = update(grads, state, params, **extra)
        out.append(updates)
    return out, state


# -- NaN and Inf gradients: propagated exactly as Optax propagates them ---------------------------

@pytest.mark.parametrize("make", [
    lambda lib: lib.adam(0.1), lambda lib: lib.sgd(0.1, momentum=0.9), lambda lib: lib.lion(0.1),
    lambda lib: lib.rmsprop(0.1, centered=True), lambda lib: lib.adafactor(0.1),
    lambda lib: lib.chain(lib.clip_by_global_norm(1.0), lib.adamw(0.1)),
], ids=["adam", "sgd", "lion", "rmsprop", "adafactor", "clip_adamw"])
def test_nonfinite_gradients_propagate_like_optax(make):
    ours, our_state = _steps(make(gradx), [GOOD, NAN, GOOD])
    theirs, their_state = _steps(make(optax), [GOOD, NAN, GOOD])
    assert_trees_close(ours, theirs)  # NaN where Optax has NaN, the same numbers elsewhere
    assert_trees_close(jax.tree.leaves(our_state), jax.tree.leaves(their_state))
    assert np.isnan(np.asarray(ours[1]["w"])).any()


# -- NaN hyperparameters --------------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: gradx.adam(0.1, b1=float("nan")), r"b1 must be in \[0.0, 1.0\), got b1=nan"),
    (lambda: gradx.adam(0.1, eps=float("nan")), r"eps must be >= 0, got eps=nan"),
    (lambda: gradx.sgd(0.1, momentum=float("nan")), r"momentum must be in \[0.0, 1.0\], got "
                                                    r"momentum=nan"),
    (lambda: gradx.clip_by_global_norm(float("nan")), r"max_norm must be >= 0, got max_norm=nan"),
    (lambda: gradx.adam(float("nan")), r"learning_rate must be finite, got learning_rate=nan"),
    (lambda: gradx.sgd(jnp.array(float("inf"))), r"learning_rate must be finite, got "
                                                 r"learning_rate=Array\(inf"),
    (lambda: gradx.scale(float("nan")), r"step_size must be finite, got step_size=nan"),
    (lambda: gradx.add_decayed_weights(float("nan")), r"weight_decay must be finite, got "
                                                      r"weight_decay=nan"),
])
def test_nan_hyperparameters_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_schedule_returning_nan_leaves_the_state_alone():
    """A NaN value of a schedule gives NaN updates at that step (as Optax); the moments, the
    count and the next steps are those of a run whose schedule is finite there."""
    nan_at_1 = lambda count: jnp.where(count == 1, jnp.nan, 0.1)  # noqa: E731
    ours, state = _steps(gradx.adam(nan_at_1), [GOOD] * 3)
    theirs, _ = _steps(optax.adam(nan_at_1), [GOOD] * 3)
    finite, finite_state = _steps(gradx.adam(0.1), [GOOD] * 3)
    assert_trees_close(ours, theirs)
    assert np.isnan(np.asarray(ours[1]["w"])).all()
    assert_trees_close([ours[0], ours[2]], [finite[0], finite[2]], rtol=0, atol=0)
    assert_trees_close(state[0], finite_state[0], rtol=0, atol=0)  # the moments and count
    injected = gradx.inject_hyperparams(gradx.adam)(learning_rate=nan_at_1)
    _, state = _steps(injected, [GOOD] * 2)
    assert np.isnan(float(state.hyperparams["learning_rate"]))  # what the last step used
    reference = _steps(gradx.inject_hyperparams(gradx.adam)(learning_rate=0.1), [GOOD] * 2)[1]
    assert_trees_close(state.inner_state[0], reference.inner_state[0], rtol=0, atol=0)


# -- integer params and gradients; dtypes that cannot hold the values -----------------------------

def test_integer_params_get_a_float_state_from_init():
    """As Optax, integer params and gradients give float updates (and apply_updates casts back
    to the params' dtype); the state is float from init, where Optax's starts int32, turns mu
    float at the first step (a jit carry error) and truncates nu back to int32 (README)."""
    params = {"a": 1, "b": jnp.array([2, -3], jnp.int32)}
    grads = {"a": 1, "b": jnp.array([1, 2], jnp.int32)}
    tx, oracle = gradx.adam(0.1), optax.adam(0.1)
    state = tx.init(params)
    assert [x.dtype for x in jax.tree.leaves(state)][1:] == [jnp.float32] * 4
    (ours,), new_state = _steps(tx, [grads], params)
    (theirs,), their_state = _steps(oracle, [grads], params)
    assert_trees_close(ours, theirs)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert their_state[0].nu["b"].dtype == jnp.int32  # Optax's truncated second moment
    assert gradx.apply_updates(params, ours)["b"].dtype == jnp.int32


def test_complex_gradients_on_real_params_raise_naming_the_leaf():
    params, grads = {"w": jnp.ones(2), "c": jnp.ones(2)}, {"w": jnp.ones(2),
                                                          "c": jnp.array([1 + 1j, 2j], jnp.complex64)}
    tx = gradx.adam(0.1)
    with pytest.raises(TypeError, match=r"state.mu at 'c' is float32 \(init built it from the "
                                        r"params\) and this update gives it complex64 values: its "
                                        r"imaginary parts would be dropped"):
        jax.jit(tx.update)(grads, tx.init(params), params)


def test_mixed_precision_gradients_are_documented_behaviour():
    """bf16 gradients on float32 params: the updates keep the gradients' dtype and the state
    the params' (README: updates keep the gradients' dtype), the numbers Optax's in float32."""
    grads = jax.tree.map(lambda g: g.astype(jnp.bfloat16), GOOD)
    (ours,), state = _steps(gradx.adam(0.1), [grads])
    (theirs,), _ = _steps(optax.adam(0.1), [grads])
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(ours))
    assert state[0].mu["w"].dtype == jnp.float32
    assert_trees_close(ours, jax.tree.map(lambda t: t.astype(jnp.bfloat16), theirs), rtol=1e-2)


# -- a bad step leaves the state bit-identical, in every skipping wrapper ----------------------------

INNER = {
    "adam": lambda: gradx.adam(0.1),
    "chain_clip_adamw_schedule": lambda: gradx.chain(
        gradx.clip_by_global_norm(1.0),
        gradx.adamw(gradx.warmup_cosine_decay_schedule(0.0, 0.1, 2, 10), weight_decay=0.1)),
    "masked_lion": lambda: gradx.masked(gradx.lion(0.1), {"w": True, "b": False}),
    "partition": lambda: gradx.partition({"a": gradx.adam(0.1), "s": gradx.sgd(0.1, 0.9)},
                                         {"w": "a", "b": "s"}),
    "inject_hyperparams": lambda: gradx.inject_hyperparams(gradx.adamw)(
        learning_rate=gradx.linear_schedule(0.1, 0.0, 5)),
    "multi_steps": lambda: gradx.MultiSteps(gradx.adam(0.1), 2),
    "noisy_sgd": lambda: gradx.noisy_sgd(0.1, key=jax.random.key(0)),
    "fused_adamw": lambda: fx.fused(gradx.adamw(0.1)),
}
WRAPPERS = {
    "apply_if_finite": lambda inner: gradx.apply_if_finite(inner, 5),
    "skip_bad_steps": lambda inner: gradx.skip_bad_steps(inner, max_grad_norm=100.0),
}


def _inner_state(state):
    return state.inner_state


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_bad_steps_leave_every_inner_state_bit_identical(wrapper):
    for name, make in INNER.items():
        tx = WRAPPERS[wrapper](make())
        update = jax.jit(tx.update)
        state = tx.init(PARAMS)
        _, state = update(GOOD, state, PARAMS)
        for bad in (NAN, jax.tree.map(lambda g: g * 1e6, GOOD)):  # non-finite, then too large
            if wrapper == "apply_if_finite" and bad is not NAN:
                continue
            updates, new_state = update(bad, state, PARAMS)
            assert_trees_close(_inner_state(new_state), _inner_state(state), rtol=0, atol=0,
                               what=name)
            assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates)), name
        _, after = update(GOOD, new_state, PARAMS)  # and the run goes on
        assert all(np.isfinite(np.asarray(x, np.float64)).all() for x in jax.tree.leaves(after)
                   if jnp.issubdtype(jnp.result_type(x), jnp.inexact)), name


def test_fused_flat_params_skip_a_bad_step():
    """The fast path with the params kept flat (public API: flatten_params, fused)."""
    flat = fx.flatten_params(PARAMS)
    tx = gradx.skip_bad_steps(fx.fused(gradx.adamw(0.1)))
    update = jax.jit(tx.update)
    state = tx.init(flat)
    _, state = update(fx.flatten_params(GOOD), state, flat)
    updates, new_state = update(fx.flatten_params(NAN), state, flat)
    assert int(new_state.skipped_steps) == 1
    assert_trees_close(new_state.inner_state, state.inner_state, rtol=0, atol=0)
    assert not any(np.any(np.asarray(u)) for u in jax.tree.leaves(updates))


def test_accumulation_and_multi_steps_skip_a_bad_micro_batch():
    """MultiSteps(skip_not_finite) and accumulate_gradients(skip_nonfinite=True): the accumulator
    and the inner state are bit-identical after a non-finite micro-batch."""
    for tx in (gradx.MultiSteps(gradx.adam(0.1), 3, should_skip_update_fn=gradx.skip_not_finite),
               gradx.accumulate_gradients(gradx.adam(0.1), 3, skip_nonfinite=True)):
        update = jax.jit(tx.update)
        state = tx.init(PARAMS)
        _, state = update(GOOD, state, PARAMS)
        _, new_state = update(NAN, state, PARAMS)
        assert_trees_close(new_state.acc_grads, state.acc_grads, rtol=0, atol=0)
        inner = getattr(new_state, "inner_opt_state", getattr(new_state, "inner_state", None))
        old = getattr(state, "inner_opt_state", getattr(state, "inner_state", None))
        assert_trees_close(inner, old, rtol=0, atol=0)
