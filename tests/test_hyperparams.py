"""inject_hyperparams (against optax), float32 hyperparameters with bf16 params, changes without
retracing, reading hyperparameters and telemetry with read_state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from gradx.partition import partition
from support import assert_trees_close, compare, make_params


def test_inject_hyperparams_matches_optax():
    schedule = optax.linear_schedule(1e-2, 1e-3, 4)
    compare(gradx.inject_hyperparams(gradx.adamw)(schedule, b1=0.8, weight_decay=0.1),
            optax.inject_hyperparams(optax.adamw)(schedule, b1=0.8, weight_decay=0.1))


def test_bf16_params_keep_float32_hyperparameters():
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    state = gradx.inject_hyperparams(gradx.adam)(1e-3, b2=0.999).init(params)
    assert state.hyperparams["b2"].dtype == jnp.float32
    assert float(state.hyperparams["b2"]) == float(np.float32(0.999))
    theirs = optax.inject_hyperparams(optax.adam)(1e-3, b2=0.999).init(params)
    assert float(theirs.hyperparams["b2"]) == 1.0  # optax#1414: bf16 rounds 0.999 up to 1.0


def test_changing_hyperparameters_never_retraces():
    traces = []
    opt = gradx.inject_hyperparams(gradx.adamw)(1e-2, weight_decay=0.1)

    @jax.jit
    def step(grads, state, params):
        traces.append(1)
        return opt.update(grads, state, params)

    params = make_params()
    grads = jax.tree.map(jnp.ones_like, params)
    state = opt.init(params)
    first, state = step(grads, state, params)
    for name, value in [("learning_rate", 0.5), ("b1", 0.5), ("b2", 0.9), ("eps", 1e-3),
                        ("weight_decay", 0.0)]:
        state = gradx.set_hyperparams(state, **{name: value})
        _, state = step(grads, state, params)
        np.testing.assert_allclose(state.hyperparams[name], value, rtol=1e-7)
    assert len(traces) == 1
    # The changed values take effect: with lr 0.5, no decay, the step is -0.5 * m̂/(√v̂ + eps).
    reference = optax.adam(0.5, b1=0.5, b2=0.9, eps=1e-3)
    ref_state = reference.init(params)
    updates, _ = step(grads, gradx.set_hyperparams(opt.init(params), learning_rate=0.5, b1=0.5, b2=0.9,
                                                   eps=1e-3, weight_decay=0.0), params)
    assert_trees_close(updates, reference.update(grads, ref_state, params)[0])
    assert len(traces) == 1


def test_read_state_learning_rate_equals_schedule_at_count():
    schedule = gradx.cosine_decay_schedule(1.0, 10)
    opt = gradx.inject_hyperparams(gradx.sgd)(schedule, momentum=0.9)
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    update = jax.jit(opt.update)
    for used_count in range(4):
        _, state = update({"w": jnp.ones(2)}, state, params)
        lr = jax.jit(gradx.read_state)(state)["learning_rate"]
        np.testing.assert_allclose(lr, schedule(used_count), rtol=1e-7)
        assert int(state.count) == used_count + 1


def test_read_state_per_group_and_set_by_group():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    labels = {"dense": {"kernel": "decay", "bias": "no_decay"}}
    opt = partition({"decay": gradx.inject_hyperparams(gradx.adamw)(1e-2, weight_decay=0.1),
                     "no_decay": gradx.inject_hyperparams(gradx.adam)(2e-2)}, labels)
    state = opt.init(params)
    values = gradx.read_state(state)
    assert float(values["decay/learning_rate"]) == pytest.approx(1e-2)
    assert float(values["no_decay/learning_rate"]) == pytest.approx(2e-2)
    state = gradx.set_hyperparams(state, no_decay__learning_rate=0.5)
    assert float(gradx.read_state(state)["no_decay/learning_rate"]) == 0.5
    assert float(gradx.read_state(state)["decay/learning_rate"]) == pytest.approx(1e-2)


def test_read_and_set_through_the_fast_path_state():
    """``fused(inject_hyperparams(...))`` keeps its hyperparameters inside a ``FusedState``:
    read_state and set_hyperparams see through it, and a set value drives the next update."""
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    grads = jax.tree.map(lambda x: 0.5 * x, params)
    opt = gradx.fused.fused(gradx.inject_hyperparams(gradx.sgd)(0.1, momentum=0.9))
    state = opt.init(params)
    assert isinstance(state, gradx.fused.FusedState)
    assert float(jax.jit(gradx.read_state)(state)["learning_rate"]) == pytest.approx(0.1)
    state = gradx.set_hyperparams(state, learning_rate=0.25)
    assert isinstance(state, gradx.fused.FusedState)
    updates, state = jax.jit(opt.update)(grads, state, params)
    np.testing.assert_allclose(updates["w"], -0.25 * 0.5, rtol=1e-7)  # first step: -lr·g
    assert float(gradx.read_state(state)["learning_rate"]) == 0.25


def test_telemetry_norms_equal_independent_computation():
    opt = gradx.with_telemetry(gradx.chain(gradx.clip_by_global_norm(1.0), gradx.sgd(0.1)))
    params = make_params()
    grads = jax.tree.map(lambda x: 3.0 * x + 1.0, params)
    updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
    values = gradx.read_state(state)
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
    grad_norm = np.linalg.norm(flat(grads))
    update_norm = np.linalg.norm(flat(updates))
    param_norm = np.linalg.norm(flat(params))
    np.testing.assert_allclose(values["grad_norm"], grad_norm, rtol=1e-6)  # before clipping
    np.testing.assert_allclose(update_norm, 0.1, rtol=1e-5)  # clipped to 1, times lr
    np.testing.assert_allclose(values["update_norm"], update_norm, rtol=1e-6)
    np.testing.assert_allclose(values["param_norm"], param_norm, rtol=1e-6)
    np.testing.assert_allclose(values["update_to_param_ratio"], update_norm / param_norm, rtol=1e-6)
    assert int(values["nonfinite_steps"]) == 0 and int(values["steps"]) == 1
    bad = jax.tree.map(lambda x: x * jnp.nan, grads)
    _, state = jax.jit(opt.update)(bad, state, params)
    assert int(gradx.read_state(state)["nonfinite_steps"]) == 1


def test_telemetry_and_hyperparams_read_together():
    opt = gradx.with_telemetry(gradx.inject_hyperparams(gradx.adam)(1e-3))
    state = opt.init({"w": jnp.ones(2)})
    assert {"learning_rate", "b1", "grad_norm", "steps"} <= set(gradx.read_state(state))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"static_args \['nope'\] are not arguments of adam"):
        gradx.inject_hyperparams(gradx.adam, static_args=("nope",))
    with pytest.raises(ValueError, match="holds no hyperparameters or telemetry"):
        gradx.read_state(gradx.adam(1e-3).init({"w": jnp.ones(2)}))
    state = gradx.inject_hyperparams(gradx.adam)(lambda c: 1e-3).init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="'learning_rate' is driven by a schedule"):
        gradx.set_hyperparams(state, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['lr'\]"):
        gradx.set_hyperparams(state, lr=0.1)


def test_mask_functions_are_not_taken_for_schedules():
    mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
    params = make_params()
    compare(gradx.inject_hyperparams(gradx.adamw)(1e-2, weight_decay=0.1, mask=mask),
            optax.inject_hyperparams(optax.adamw, static_args=("mask",))(1e-2, weight_decay=0.1, mask=mask),
            params=params)
    # Without static_args optax takes the mask function for a schedule, evaluates it on the step
    # count (one False) and silently decays nothing: the matrices' updates differ.
    silent = optax.inject_hyperparams(optax.adamw)(1e-2, weight_decay=0.1, mask=mask)
    grads = jax.tree.map(jnp.ones_like, params)
    wrong, wrong_state = silent.update(grads, silent.init(params), params)
    right, _ = optax.adamw(1e-2, weight_decay=0.1, mask=mask).update(
        grads, optax.adamw(1e-2, weight_decay=0.1, mask=mask).init(params), params)
    assert "mask" in wrong_state.hyperparams
    assert float(jnp.max(jnp.abs(wrong["dense"]["kernel"] - right["dense"]["kernel"]))) > 1e-3
