"""The state of every Optax name that gradx also has has Optax's layout: tree structure, state
classes, field names, shapes and dtypes (README: "same state layout"); wrappers and injected
schedules included. An Orbax checkpoint of an Optax state restores into gradx's and back."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from gradx.checkpoint import leaf_records
from support import assert_trees_close

PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.full(3, 0.5), "s": jnp.ones((), jnp.bfloat16)}
# Values for the required arguments of Optax's factories, by argument name.
REQUIRED = dict(learning_rate=0.1, step_size=0.1, decay=0.9, max_norm=1.0, max_delta=1.0,
                threshold=1.0, clipping=0.1, eta=0.1, gamma=0.5, key=0, weight_decay=0.1,
                max_backtracking_steps=5, max_linesearch_steps=5, l2_norm_clip=1.0,
                noise_multiplier=0.1, scale_factor=1.0, f_min=0.0, every_k_schedule=2)
# Documented differences in the layout (README's table), compared on the params they allow.
WITHOUT_0D = {
    "sm3": "gradx keeps a per-axis accumulator for 0-d leaves too (Optax's sm3 cannot update "
           "them: README row 'sm3 raises on 0-d leaves')",
    "scale_by_sm3": "as sm3",
}


def records(state):
    """Every leaf's path, shape, dtype and the state classes on the way (checkpoint's record)."""
    return leaf_records(state)


def optax_factories():
    """``{name: kwargs}``: every function of ``optax`` that gradx also has and that builds a
    transformation from the arguments in ``REQUIRED``."""
    found = {}
    for name in sorted(dir(optax)):
        theirs = getattr(optax, name)
        if name.startswith("_") or not hasattr(gradx, name) or inspect.isclass(theirs) \
                or not callable(theirs):
            continue
        try:
            parameters = inspect.signature(theirs).parameters.values()
        except (TypeError, ValueError):
            continue
        required = [p.name for p in parameters if p.default is inspect.Parameter.empty
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not required or all(r in REQUIRED for r in required):
            kwargs = {r: REQUIRED[r] for r in required}
            try:
                built = theirs(**kwargs)
            except Exception:  # noqa: BLE001 - a factory needing other arguments (chain())
                continue
            if isinstance(built, optax.GradientTransformation):
                found[name] = kwargs
    return found


FACTORIES = optax_factories()


def test_every_factory_is_covered():
    """Discovery found the building blocks and optimizers (a guard against a silent skip)."""
    assert len(FACTORIES) >= 70, sorted(FACTORIES)
    for name in ("adam", "adamw", "lion", "lbfgs", "scale_by_adam", "clip_by_global_norm",
                 "add_noise", "scale_by_zoom_linesearch", "identity", "apply_every"):
        assert name in FACTORIES


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factory_state_layout(name):
    params = PARAMS
    if name in WITHOUT_0D:
        params = {k: v for k, v in PARAMS.items() if jnp.ndim(v)}
    ours = getattr(gradx, name)(**FACTORIES[name]).init(params)
    theirs = getattr(optax, name)(**FACTORIES[name]).init(params)
    assert records(ours) == records(theirs)


def _schedule(lib):
    return lib.warmup_cosine_decay_schedule(0.01, 0.1, 2, 10)  # rprop needs a step size > 0


# Wrappers, and factories with non-default arguments that change the state.
WRAPPED = {
    "inject_hyperparams(adam, schedule)": lambda lib: lib.inject_hyperparams(lib.adam)(
        learning_rate=_schedule(lib)),
    "inject_hyperparams(adamw, two schedules)": lambda lib: lib.inject_hyperparams(lib.adamw)(
        learning_rate=_schedule(lib), weight_decay=lib.linear_schedule(0.1, 0.0, 5)),
    "inject_hyperparams(sgd, static momentum)": lambda lib: lib.inject_hyperparams(
        lib.sgd, static_args="momentum")(learning_rate=0.1, momentum=0.9),
    "adam(schedule)": lambda lib: lib.adam(_schedule(lib)),
    "adamw(mask)": lambda lib: lib.adamw(0.1, mask={"w": True, "b": False, "s": False}),
    "add_decayed_weights(schedule)": lambda lib: lib.add_decayed_weights(_schedule(lib)),
    "masked": lambda lib: lib.masked(lib.sgd(0.1, 0.9), {"w": True, "b": False, "s": True}),
    "partition": lambda lib: lib.partition(
        {"a": lib.adam(0.1), "z": lib.set_to_zero()}, {"w": "a", "b": "z", "s": "a"}),
    "multi_transform": lambda lib: lib.multi_transform(
        {"a": lib.lion(0.1), "s": lib.sgd(0.1)}, lambda p: {"w": "a", "b": "s", "s": "s"}),
    "freeze": lambda lib: lib.freeze({"w": False, "b": True, "s": False}),
    "selective_transform": lambda lib: lib.selective_transform(
        lib.adam(0.1), freeze_mask={"w": False, "b": True, "s": False}),
    "named_chain": lambda lib: lib.named_chain(("clip", lib.clip(1.0)), ("opt", lib.adam(0.1))),
    "MultiSteps": lambda lib: lib.MultiSteps(lib.adam(0.1), 3),
    "MultiSteps(skip_not_finite)": lambda lib: lib.MultiSteps(
        lib.adam(0.1), 3, should_skip_update_fn=lib.skip_not_finite),
    "MultiSteps(skip_large_updates)": lambda lib: lib.MultiSteps(
        lib.sgd(0.1), 2, should_skip_update_fn=lambda u, s, p: lib.skip_large_updates(
            u, s, p, 10.0)),
    "apply_if_finite": lambda lib: lib.apply_if_finite(lib.adam(0.1), 3),
    "lookahead": lambda lib: lib.lookahead(lib.adam(0.1), 3, 0.5),
    "flatten": lambda lib: lib.flatten(lib.adam(0.1)),
    "conditionally_mask": lambda lib: lib.conditionally_mask(lib.sgd(0.1), lambda s: s > 1),
    "conditionally_transform": lambda lib: lib.conditionally_transform(
        lib.adam(0.1), lambda s: s > 1),
    "snapshot": lambda lib: lib.snapshot("norm", lib.global_norm),
    "reduce_on_plateau": lambda lib: lib.contrib.reduce_on_plateau(),
    "sgd(momentum, nesterov)": lambda lib: lib.sgd(0.1, 0.9, nesterov=True),
    "rmsprop(centered, momentum, bias_correction)": lambda lib: lib.rmsprop(
        0.1, centered=True, momentum=0.9, bias_correction=True),
    "adam(mu_dtype)": lambda lib: lib.adam(0.1, mu_dtype=jnp.bfloat16),
    "lbfgs(memory)": lambda lib: lib.lbfgs(memory_size=3),
    "scale_by_backtracking_linesearch(store_grad)": lambda lib:
        lib.scale_by_backtracking_linesearch(5, store_grad=True),
}


def _lookahead_params(name, params):
    return optax.LookaheadParams.init_synced(params) if name == "lookahead" else params


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_wrapper_state_layout(name):
    ours = WRAPPED[name](gradx).init(_lookahead_params(name, PARAMS))
    theirs = WRAPPED[name](optax).init(_lookahead_params(name, PARAMS))
    assert records(ours) == records(theirs)


OPTIMIZERS = sorted(name for name, kwargs in FACTORIES.items() if list(kwargs) == ["learning_rate"]
                    and name not in WITHOUT_0D)


def test_every_optimizer_injected_with_a_schedule():
    """``inject_hyperparams(opt)(learning_rate=schedule)``: ``WrappedScheduleState(count)`` per
    schedule, as Optax's, for every optimizer taking a learning rate."""
    assert len(OPTIMIZERS) >= 25
    for name in OPTIMIZERS:
        ours = gradx.inject_hyperparams(getattr(gradx, name))(learning_rate=_schedule(gradx))
        theirs = optax.inject_hyperparams(getattr(optax, name))(learning_rate=_schedule(optax))
        a, b = ours.init(PARAMS), theirs.init(PARAMS)
        assert records(a) == records(b), name
        assert type(a.hyperparams_states["learning_rate"]).__name__ == "WrappedScheduleState"


def test_monitor_layout_is_optaxs_after_the_first_update():
    """Documented difference: gradx's monitor has its final structure from ``init`` (Optax's
    gains its measurements at the first update)."""
    make = lambda lib: lib.monitor({"norm": lib.global_norm,  # noqa: E731
                                    "ema": lib.measure_with_ema(lib.global_norm, 0.9)})
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    ours = make(gradx).init(PARAMS)
    tx = make(optax)
    _, theirs = tx.update(grads, tx.init(PARAMS))
    assert records(ours) == records(theirs)


# -- Orbax: a checkpoint of one library's state restores into the other's ---------------------

def _orbax_roundtrip(state, target, path):
    ocp = pytest.importorskip("orbax.checkpoint")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, state)
        checkpointer.wait_until_finished()
        return checkpointer.restore(path, jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), target))


@pytest.mark.parametrize("name", ["inject_hyperparams(adamw, two schedules)", "partition"])
def test_orbax_checkpoints_restore_across_libraries(name, tmp_path):
    """Two steps with Optax, saved with Orbax, restored into gradx's state, two more steps: the
    same as four steps with Optax; then back the other way. (float32 params: with bfloat16
    ones Optax's injected hyperparameters compute in bfloat16, a documented difference.)"""
    params = {k: v.astype(jnp.float32) for k, v in PARAMS.items()}
    ours, theirs = WRAPPED[name](gradx), WRAPPED[name](optax)
    grads = [jax.tree.map(lambda p, i=i: jnp.cos(p + i), params) for i in range(4)]

    def steps(tx, state, gs):
        for g in gs:
            _, state = jax.jit(tx.update)(g, state, params)
        return state

    half = steps(theirs, theirs.init(params), grads[:2])
    restored = _orbax_roundtrip(half, ours.init(params), tmp_path / "optax")
    assert jax.tree.structure(restored) == jax.tree.structure(ours.init(params))
    finished = steps(ours, restored, grads[2:])
    reference = steps(theirs, half, grads[2:])
    assert_trees_close(jax.tree.leaves(finished), jax.tree.leaves(reference), rtol=1e-6)
    back = _orbax_roundtrip(finished, theirs.init(params), tmp_path / "gradx")
    assert jax.tree.structure(back) == jax.tree.structure(theirs.init(params))
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(finished)):
        np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))
