"""Defects that Optax's own tests, real programs written for Optax and the differential runs
found in gradx: each case against optax 0.2.8 or a value worked out by hand."""

import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from support import assert_trees_close


# -- None updates pass through (Optax's update_test / _adding_test) ----------------------------

def test_incremental_update_keeps_none():
    x = jnp.array([1.0, 2.0, 3.0])
    assert gradx.incremental_update(None, x, 1) is None
    new, old = {"a": None, "b": jnp.ones(2)}, {"a": jnp.ones(2), "b": jnp.zeros(2)}
    ours = gradx.incremental_update(new, old, 0.25)
    assert ours["a"] is None
    assert_trees_close(ours, optax.incremental_update(new, old, 0.25))


@pytest.mark.parametrize("lib", [gradx, optax], ids=["gradx", "optax"])
def test_add_decayed_weights_passes_none_updates(lib):
    params = (jnp.ones(2), {"a": jnp.ones(2), "b": jnp.full(2, 2.0)})
    tx = lib.add_decayed_weights(0.1)
    assert tx.update(None, tx.init(params), params)[0] is None
    updates, _ = jax.jit(tx.update)((None, {"a": None, "b": jnp.ones(2)}), tx.init(params), params)
    assert updates[0] is None and updates[1]["a"] is None
    np.testing.assert_allclose(updates[1]["b"], [1.2, 1.2])


def test_none_updates_keep_the_state_of_their_leaf():
    params = {"a": jnp.ones(2), "b": jnp.full(2, 2.0)}
    tx = gradx.adam(0.1)
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)({"a": None, "b": jnp.ones(2)}, state, params)
    assert updates["a"] is None
    np.testing.assert_array_equal(new_state[0].mu["a"], state[0].mu["a"])
    np.testing.assert_allclose(new_state[0].mu["b"], [0.1, 0.1], rtol=1e-6)


# -- lookahead's reset on states holding Python scalars or typed PRNG keys ----------------------

class _FlagAndKeyState(NamedTuple):
    flag: Any
    key: Any


def _flag_and_key():
    """A fast optimizer whose state holds a Python bool and a typed PRNG key."""

    def init(params):
        del params
        return _FlagAndKeyState(True, jax.random.key(0))

    def update(updates, state, params=None):
        del params
        return updates, _FlagAndKeyState(False, jax.random.split(state.key)[0])

    return gradx.GradientTransformation(init, update)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_lookahead_reset_with_python_scalars_and_typed_keys(jit):
    tx = gradx.lookahead(_flag_and_key(), sync_period=2, slow_step_size=0.5, reset_state=True)
    params = gradx.LookaheadParams.init_synced(jnp.ones(2))
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params)
    _, state = update(jnp.ones(2), state, params)  # no sync: the fast state moves on
    assert not bool(state.fast_state.flag)
    np.testing.assert_array_equal(jax.random.key_data(state.fast_state.key),
                                  jax.random.key_data(jax.random.split(jax.random.key(0))[0]))
    _, state = update(jnp.ones(2), state, params)  # sync: the fast state is initialised again
    assert bool(state.fast_state.flag)
    np.testing.assert_array_equal(jax.random.key_data(state.fast_state.key),
                                  jax.random.key_data(jax.random.key(0)))


# -- line searches keep their carry's dtypes whatever dtype the hyperparameters have ------------

@pytest.mark.parametrize("search, dtype", [("backtracking", jnp.float32),
                                           ("zoom", jnp.bfloat16)])
def test_linesearch_with_float64_hyperparameters_under_x64(search, dtype):
    with jax.enable_x64(True):
        def make(lib):
            if search == "backtracking":
                return lib.scale_by_backtracking_linesearch(
                    max_backtracking_steps=10, slope_rtol=jnp.array(1e-4, jnp.float64),
                    decrease_factor=jnp.array(0.5, jnp.float64), rtol=jnp.array(0.0, jnp.float64))
            return lib.scale_by_zoom_linesearch(
                max_linesearch_steps=10, slope_rtol=jnp.array(1e-4, jnp.float64),
                curv_rtol=jnp.array(0.9, jnp.float64), tol=jnp.array(0.0, jnp.float64))

        value_fn = lambda x: jnp.sum((x - 0.5) ** 2)  # noqa: E731
        x = jnp.array([1.0, 2.0], dtype)
        results = []
        for lib in (gradx, optax):
            tx = make(lib)
            value, grad = jax.value_and_grad(value_fn)(x)
            updates, state = jax.jit(
                lambda g, s, p, tx=tx: tx.update(jax.tree.map(jnp.negative, g), s, p, value=value,
                                                 grad=g, value_fn=value_fn))(grad, tx.init(x), x)
            results.append((updates, state.learning_rate))
        (ours, our_lr), (theirs, their_lr) = results
        assert ours.dtype == dtype and our_lr.dtype == their_lr.dtype
        np.testing.assert_allclose(np.float64(our_lr), np.float64(their_lr), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(ours, np.float64), np.asarray(theirs, np.float64),
                                   rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6)


def test_zoom_linesearch_accepts_any_positive_increase_factor():
    """Optax's own dtype test builds the zoom search with ``increase_factor=1e-5``: a factor
    below 1 shrinks the trial steps, odd but not impossible; only ``<= 0`` is rejected."""
    value_fn = lambda x: jnp.sum(x ** 2)  # noqa: E731
    x = jnp.array([1.0, 2.0])
    for lib in (gradx, optax):
        tx = lib.scale_by_zoom_linesearch(5, increase_factor=0.5)
        _, state = tx.update(-x, tx.init(x), x, value=value_fn(x), grad=2 * x, value_fn=value_fn)
        assert float(state.learning_rate) == 1.0  # the first guess, 1, is the exact minimum
    with pytest.raises(ValueError, match="increase_factor must be > 0"):
        gradx.scale_by_zoom_linesearch(5, increase_factor=0.0)


# -- hyperparameters in low-precision dtypes are validated too ----------------------------------

@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float8_e4m3fn, jnp.float16])
def test_low_precision_hyperparameters_are_validated(dtype):
    with pytest.raises(ValueError, match=r"b1 must be in \[0.0, 1.0\), got b1=Array\(1.5"):
        gradx.adam(0.1, b1=jnp.array(1.5, dtype))
    gradx.adam(0.1, b1=jnp.array(0.875, dtype))  # exact in every one of these dtypes


# -- masked (and everything built on it) takes optax.tree.map_params's placeholder -------------

def test_map_params_through_masked_states():
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    decay_w = lambda p: {"w": True, "b": False}  # noqa: E731  (a mask function)
    for make in (lambda lib: lib.adamw(0.1, mask=decay_w),
                 lambda lib: lib.masked(lib.adam(0.1), decay_w),
                 lambda lib: lib.partition({"a": lib.adam(0.1), "s": lib.sgd(0.1, 0.9)},
                                           {"w": "a", "b": "s"})):
        results = []
        for lib in (gradx, optax):
            tx = make(lib)
            state = tx.init(params)
            results.append(optax.tree.map_params(tx, lambda p: p.astype(jnp.bfloat16), state))
        ours, theirs = results
        assert ([(x.shape, x.dtype) for x in jax.tree.leaves(ours)]
                == [(x.shape, x.dtype) for x in jax.tree.leaves(theirs)])
        assert any(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(ours))


# -- wrappers hand extra arguments to an inner transformation built by Optax ---------------------

_WRAPPERS = {
    "chain": lambda inner: gradx.chain(gradx.identity(), inner),
    "named_chain": lambda inner: gradx.named_chain(("id", gradx.identity()), ("inner", inner)),
    "masked": lambda inner: gradx.masked(inner, {"w": True}),
    "partition": lambda inner: gradx.partition({"a": inner}, {"w": "a"}),
    "MultiSteps": lambda inner: gradx.MultiSteps(inner, 1).gradient_transformation(),
    "apply_if_finite": lambda inner: gradx.apply_if_finite(inner, 2),
    "skip_bad_steps": lambda inner: gradx.skip_bad_steps(inner),
    "flatten": lambda inner: gradx.flatten(inner),
    "conditionally_transform": lambda inner: gradx.conditionally_transform(inner, lambda s: True),
    "with_telemetry": lambda inner: gradx.with_telemetry(inner),
    "inject_hyperparams": lambda inner: gradx.inject_hyperparams(
        lambda learning_rate: gradx.chain(inner, gradx.scale(learning_rate)))(learning_rate=1.0),
}


@pytest.mark.parametrize("wrapper", sorted(_WRAPPERS))
def test_wrappers_forward_extra_args_to_optax_objects(wrapper):
    """optax.scale_by_polyak needs ``value=``: a wrapper that dropped it would raise."""
    params, grads = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 4.0])}
    tx = _WRAPPERS[wrapper](optax.scale_by_polyak(max_learning_rate=10.0))
    updates, _ = tx.update(grads, tx.init(params), params, value=jnp.array(5.0))
    np.testing.assert_allclose(updates["w"], [0.6, 0.8], rtol=1e-6)  # (5 / 25) · g


# -- the line searches print Optax's flags --------------------------------------------------------

_FLAGS = ("FLAG_INTERVAL_NOT_FOUND", "FLAG_INTERVAL_TOO_SMALL",
          "FLAG_CURVATURE_COND_NOT_SATISFIED", "FLAG_NO_STEPSIZE_FOUND",
          "FLAG_NOT_A_DESCENT_DIRECTION")


def _zoom_output(lib, capsys, start, **kwargs):
    """What a verbose zoom search from ``start`` along ``[1, 0]`` on ``‖x‖²`` prints."""
    fn = lambda x: jnp.dot(x, x)  # noqa: E731
    opt = lib.scale_by_zoom_linesearch(curv_rtol=0.5, verbose=True, **kwargs)
    w, u = start * jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0])
    value, grad = jax.value_and_grad(fn)(w)
    opt.update(u, opt.init(w), w, value=value, grad=grad, value_fn=fn)
    jax.effects_barrier()
    return capsys.readouterr().out


@pytest.mark.parametrize("start,kwargs", [
    (60.0, {"max_linesearch_steps": 18}),                            # not a descent direction
    (-60.0, {"max_linesearch_steps": 10, "max_learning_rate": 10.0}),  # max step too small
], ids=["not_descent", "max_too_small"])
def test_zoom_linesearch_prints_optax_flags(capsys, start, kwargs):
    from gradx import linesearch as ours
    from optax._src import linesearch as theirs
    assert [getattr(ours, f) for f in _FLAGS] == [getattr(theirs, f) for f in _FLAGS]
    printed = {lib.__name__: _zoom_output(lib, capsys, start, **kwargs) for lib in (gradx, optax)}
    flags = {name: [f for f in _FLAGS if getattr(theirs, f) in out] for name, out in printed.items()}
    assert flags["gradx"] == flags["optax"] and flags["gradx"]


# -- outside jit, the Adam family compiles a bounded number of programs and gives jit's numbers ---

def _compiles_during(fn, caplog):
    """How many XLA programs ``fn()`` compiles (JAX logs each compilation)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
        fn()
    return sum("Compiling" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("make", [lambda: gradx.adam(1e-3), lambda: gradx.radam(1e-3)],
                         ids=["adam", "radam"])
def test_eager_updates_compile_once_and_match_jit(make, caplog):
    tx = make()
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(3, 2), "b": jnp.zeros(2)}
    grads = [jax.tree.map(lambda p, i=i: jnp.cos(p * (i + 1)) + 0.1, params) for i in range(23)]
    eager, jitted = [], []
    state = jstate = tx.init(params)
    update = jax.jit(tx.update)

    def steps(first, last):
        nonlocal state
        for g in grads[first:last]:
            u, state = tx.update(g, state, params)
            eager.append(u)

    steps(0, 3)  # the first steps compile each primitive once
    assert _compiles_during(lambda: steps(3, 23), caplog) == 0  # was one program per step
    for g in grads:
        u, jstate = update(g, jstate, params)
        jitted.append(u)
    # 1 - 0.999**t evaluated eagerly rounded differently (up to 1e-5 relative)
    assert_trees_close(eager, jitted, rtol=1e-6, atol=1e-9)  # updates are ~1e-3


# -- schedules are weakly typed, as Optax's ---------------------------------------------------------

_SCHEDULES = {
    "constant": lambda lib: lib.constant_schedule(5),
    "polynomial": lambda lib: lib.polynomial_schedule(1.0, 0.1, 2, 10),
    "linear": lambda lib: lib.linear_schedule(1.0, 0.1, 10),
    "piecewise_constant": lambda lib: lib.piecewise_constant_schedule(1.0, {3: 0.5}),
    "exponential_decay": lambda lib: lib.exponential_decay(1.0, 5, 0.5),
    "cosine_decay": lambda lib: lib.cosine_decay_schedule(1.0, 10),
    "warmup_cosine_decay": lambda lib: lib.warmup_cosine_decay_schedule(0.0, 1.0, 5, 10),
    "join": lambda lib: lib.join_schedules([lib.constant_schedule(1.0),
                                            lib.linear_schedule(1.0, 0.0, 5)], [3]),
}


@pytest.mark.parametrize("name", sorted(_SCHEDULES))
def test_schedules_are_weakly_typed(name):
    ours, theirs = _SCHEDULES[name](gradx), _SCHEDULES[name](optax)
    for count in (7, jnp.int32(7)):
        a, b = ours(count), theirs(count)
        if name == "constant":  # the value itself
            assert a == b == 5 and type(a) is type(b) is int
            continue
        if b.weak_type:
            assert a.weak_type, (name, count)
        np.testing.assert_allclose(np.float64(a), np.float64(b), rtol=1e-6)


def test_schedule_values_keep_bfloat16_params_bfloat16_in_fori_loop():
    sched = gradx.warmup_cosine_decay_schedule(0.0, 0.5, 2, 10)
    g = jnp.full(3, 0.25, jnp.bfloat16)
    p = jax.lax.fori_loop(0, 6, lambda i, p: p - sched(i) * g, jnp.ones(3, jnp.bfloat16))
    assert p.dtype == jnp.bfloat16  # a float32 value made the carry float32: a TypeError
    expected = jnp.ones(3, jnp.bfloat16)
    for i in range(6):
        expected = expected - jnp.asarray(float(sched(i)), jnp.bfloat16) * g
    np.testing.assert_array_equal(np.asarray(p, np.float32), np.asarray(expected, np.float32))


def test_linear_schedules_are_exact_where_optax_cancels():
    """Documented difference (README): gradx's linear pieces are within 2e-7 of the exact
    value; Optax's ``1 - k/T`` cancels near the end (7e-5 here), and the two differ by that."""
    counts = jnp.arange(0, 1005, dtype=jnp.int32)
    k = np.clip(np.arange(0, 1005), 0, 1000)
    exact = 1e-3 * (1000 - k) / 1000
    for lib_schedule, tolerance in ((gradx.linear_schedule(1e-3, 0.0, 1000), 2.5e-7),
                                    (optax.linear_schedule(1e-3, 0.0, 1000), 7.5e-5)):
        values = np.asarray(jax.vmap(lib_schedule)(counts), np.float64)
        error = np.abs(values - exact)[k < 1000] / exact[k < 1000]
        assert error.max() < tolerance
        assert np.all(values[k == 1000] == 0.0)
    joined = gradx.join_schedules([gradx.constant_schedule(0.0),
                                   gradx.linear_schedule(1e-3, 0.0, 1000)], [5])
    np.testing.assert_allclose(np.asarray(jax.vmap(joined)(counts + 5), np.float64)[k < 1000],
                               exact[k < 1000], rtol=2.5e-7)


# -- messages and logging ---------------------------------------------------------------------

def test_torch_state_in_another_leaf_order_suggests_names():
    """torch numbers parameters in module order; a Flax dict sorts its keys: the shape error
    says to pass names=, not convert=."""
    torch = pytest.importorskip("torch")
    from gradx import torch_compat as tc
    w1, w0 = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.Adam([w1, w0], lr=0.1)  # torch's order: w1 then w0
    w1.grad, w0.grad = torch.ones(3, 2), torch.ones(4)
    opt.step()
    params = {"w0": jnp.ones(4), "w1": jnp.ones((3, 2))}  # leaves: w0 then w1
    with pytest.raises(ValueError, match=r"torch parameter\(s\) \[1\] have that shape.*names="):
        tc.from_torch_state_dict(tc.adam(0.1), params, opt.state_dict())
    state = tc.from_torch_state_dict(tc.adam(0.1), params, opt.state_dict(),
                                     names={"w0": 1, "w1": 0})
    np.testing.assert_allclose(state.exp_avg["w1"], np.full((3, 2), 0.1), rtol=1e-6)


def test_lookahead_warns_through_a_named_logger(caplog):
    with caplog.at_level(logging.WARNING):
        gradx.lookahead(gradx.sgd(0.1), 2, 0.5).init(jnp.ones(2))
    assert [r.name for r in caplog.records] == ["gradx.wrappers"]
    assert "no `fast` attribute" in caplog.records[0].getMessage()


@pytest.mark.parametrize("debias", [False, True])
def test_ema_accepts_decay_one(debias):
    """As Optax, ``decay=1`` is accepted (the EMA stays at its initial 0). With ``debias``
    Optax divides that 0 by ``1 - 1^t = 0`` and emits NaN; gradx emits the 0 (README)."""
    grads = {"w": jnp.array([1.0, -2.0])}
    ours, theirs = gradx.ema(1.0, debias=debias), optax.ema(1.0, debias=debias)
    u, s = jax.jit(ours.update)(grads, ours.init(grads))
    v, t = jax.jit(theirs.update)(grads, theirs.init(grads))
    assert_trees_close(s, t)
    np.testing.assert_array_equal(u["w"], [0.0, 0.0])
    assert np.all(np.isnan(v["w"])) if debias else np.array_equal(v["w"], [0.0, 0.0])


# -- norms and RMS of leaves whose squares overflow or underflow ----------------------------------

def test_trust_ratio_norms_scale_their_squares():
    """The trust ratio of a leaf equal to ``v`` everywhere against a gradient of ones is
    ``‖p‖/‖g‖ = v``: Optax's is right on one-element leaves only (``jnp.linalg.norm``
    special-cases them), and 1 or inf on larger ones."""
    for size in (1, 4):
        g = {"w": jnp.ones(size)}
        for tx in (gradx.scale_by_trust_ratio(), gradx.lamb(1.0, b1=0.0, b2=0.0, eps=0.0)):
            update = jax.jit(tx.update)  # one program for every value
            for value in (1e-30, 1e-25, 1e20, 3e37):
                p = {"w": jnp.full(size, value)}
                updates, _ = update(g, tx.init(p), p)
                np.testing.assert_allclose(np.abs(np.asarray(updates["w"], np.float64)), value,
                                           rtol=1e-6)
    tx, p = optax.scale_by_trust_ratio(), {"w": jnp.full(1, 1e-30)}
    np.testing.assert_allclose(tx.update({"w": jnp.ones(1)}, tx.init(p), p)[0]["w"], 1e-30,
                               rtol=1e-6)


def test_clip_by_block_rms_of_huge_and_tiny_gradients():
    tx = gradx.clip_by_block_rms(1.0)
    update = jax.jit(tx.update)
    for size in (1, 4):
        for value, expected in ((1e21, 1.0), (-3e30, -1.0), (1e-30, 1e-30)):
            g = {"w": jnp.full(size, value)}
            np.testing.assert_allclose(update(g, tx.init(g))[0]["w"], expected, rtol=1e-6)


def test_scaled_norms_keep_gradients_and_the_floor():
    from gradx.plumbing import leaf_norm, leaf_rms
    x = jnp.array([3e20, 4e20, 0.0])
    np.testing.assert_allclose(leaf_norm(x), 5e20, rtol=1e-6)
    np.testing.assert_allclose(leaf_rms(jnp.array([3e-20, 4e-20, 0.0])), 5e-20 / np.sqrt(3),
                               rtol=1e-6)
    np.testing.assert_allclose(jax.grad(leaf_norm)(x), [0.6, 0.8, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(jax.grad(lambda x: leaf_norm(x, 1.0))(jnp.zeros(3)), 0.0)
    assert float(leaf_norm(jnp.zeros((0, 3)))) == 0.0  # size 0: no maximum to scale by
    np.testing.assert_allclose(leaf_norm(jnp.array([3e20 + 4e20j], jnp.complex64)), 5e20,
                               rtol=1e-6)


# -- a NaN gradient in MultiSteps and lookahead (documented differences) ---------------------------

def test_multi_steps_keeps_a_nan_in_its_window():
    grads = [jnp.array([jnp.nan, 1.0])] + [jnp.ones(2)] * 5
    history = {}
    for lib in (gradx, optax):
        tx = lib.MultiSteps(lib.sgd(1.0), 2)
        state, out = tx.init(jnp.zeros(2)), []
        for g in grads:
            u, state = jax.jit(tx.update)(g, state, jnp.zeros(2))
            out.append(np.asarray(u))
        history[lib.__name__] = (np.array(out), state)
    ours, our_state = history["gradx"]
    theirs, their_state = history["optax"]
    np.testing.assert_array_equal(ours[1], theirs[1])  # the emitted update: [nan, -1] in both
    assert np.isnan(ours[1, 0])
    np.testing.assert_array_equal(ours[[0, 2, 4]], 0.0)  # mini-steps: zeros
    np.testing.assert_array_equal(ours[[3, 5]], -1.0)  # later windows: the mean, -g
    assert np.all(np.isnan(theirs[2:, 0]))  # Optax: NaN for good
    np.testing.assert_array_equal(our_state.acc_grads, 0.0)
    assert np.isnan(their_state.acc_grads[0])


def test_lookahead_reset_clears_a_nan_fast_state():
    states = {}
    for lib in (gradx, optax):
        tx = lib.lookahead(lib.adam(0.1), 2, 0.5, reset_state=True)
        params = lib.LookaheadParams.init_synced(jnp.zeros(2))
        state = tx.init(params)
        for g in (jnp.array([jnp.nan, 1.0]), jnp.ones(2)):  # the second step syncs
            _, state = jax.jit(tx.update)(g, state, params)
        states[lib.__name__] = state.fast_state[0]
    np.testing.assert_array_equal(states["gradx"].mu, 0.0)  # a fresh state
    np.testing.assert_array_equal(states["gradx"].count, 0)
    assert np.isnan(states["optax"].mu[0]) and states["optax"].mu[1] == 0.0


def test_lookahead_reset_of_a_state_holding_a_typed_key():
    """noisy_sgd's typed PRNG key: gradx's reset restores the fresh key; Optax's blend,
    computed at every step, multiplies the key and raises at the first update."""
    for lib in (gradx, optax):
        tx = lib.lookahead(lib.noisy_sgd(0.1, key=jax.random.key(3)), 2, 0.5, reset_state=True)
        params = lib.LookaheadParams.init_synced(jnp.zeros(2))
        update = jax.jit(tx.update)
        if lib is optax:
            with pytest.raises(TypeError, match=r"multiply does not accept dtypes .*key"):
                update(jnp.ones(2), tx.init(params), params)
            continue
        _, state = update(jnp.ones(2), tx.init(params), params)
        fresh_key = jax.tree.leaves(tx.init(params).fast_state)[-1]
        moved_key = jax.tree.leaves(state.fast_state)[-1]
        assert not np.array_equal(jax.random.key_data(moved_key), jax.random.key_data(fresh_key))
        _, state = update(jnp.ones(2), state, params)  # sync: a fresh fast state
        np.testing.assert_array_equal(jax.random.key_data(jax.tree.leaves(state.fast_state)[-1]),
                                      jax.random.key_data(fresh_key))


# -- counters and sums under x64 have Optax's dtypes ---------------------------------------------

def test_x64_dtypes_of_skip_counts_and_dog_sums():
    with jax.enable_x64(True):
        params = {"w": jnp.ones(3), "b": jnp.ones((2, 2))}
        grads = {"w": jnp.array([1.0, jnp.nan, jnp.inf]), "b": jnp.ones((2, 2))}
        for lib in (gradx, optax):
            skip, info = lib.skip_not_finite(grads, jnp.zeros([], jnp.int32), params)
            assert bool(skip) and int(info["num_not_finite"]) == 2
            assert info["num_not_finite"].dtype == jnp.int64, lib.__name__
            tx = lib.MultiSteps(lib.sgd(0.1), 2, should_skip_update_fn=lib.skip_not_finite)
            _, state = jax.jit(tx.update)(grads, tx.init(params), params)  # a fixed carry type
            assert state.skip_state["num_not_finite"].dtype == jnp.int64
        ours = gradx.scale_by_distance_over_gradients()
        theirs = optax.scale_by_distance_over_gradients()
        g = jax.tree.map(lambda p: 0.5 * p, params)
        a, s = jax.jit(ours.update)(g, ours.init(params), params)
        b, t = jax.jit(theirs.update)(g, theirs.init(params), params)
        assert [x.dtype for x in jax.tree.leaves(s)] == [x.dtype for x in jax.tree.leaves(t)]
        assert s.grad_sum_of_squares["w"].dtype == jnp.float64
        assert_trees_close(a, b, rtol=1e-12, atol=0)


def test_dog_gives_a_0d_parameter_a_0d_update():
    """Documented difference: Optax returns shape (1,), which apply_updates turns into a (1,)
    parameter."""
    params = {"s": jnp.array(2.0), "v": jnp.ones(2)}
    grads = {"s": jnp.array(0.5), "v": jnp.ones(2)}
    ours, theirs = gradx.scale_by_distance_over_gradients(), optax.scale_by_distance_over_gradients()
    a, _ = jax.jit(ours.update)(grads, ours.init(params), params)
    b, _ = jax.jit(theirs.update)(grads, theirs.init(params), params)
    assert a["s"].shape == () and b["s"].shape == (1,)
    np.testing.assert_allclose(a["s"], b["s"][0], rtol=1e-6)
    assert_trees_close(a["v"], b["v"])
    assert gradx.apply_updates(params, a)["s"].shape == ()


@pytest.mark.parametrize("make", [
    lambda: gradx.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=-5, decay_steps=10),
    lambda: gradx.warmup_exponential_decay_schedule(0.0, 1.0, -5, 10, 0.5),
], ids=["cosine", "exponential"])
def test_negative_warmup_steps_raise(make):
    with pytest.raises(ValueError, match=r"warmup_steps must be >= 0, got warmup_steps=-5"):
        make()


def test_complex_amsgrad_overflow_is_the_same_with_and_without_jit():
    """|g|² overflows beyond 1.8e19 in complex64: the complex division by an infinite modulus
    gives NaN, as in Optax, with and without jit (the real case gives 0, also as Optax)."""
    params = {"w": jnp.array([1 + 1j, 2 - 1j], jnp.complex64)}
    grads = {"w": jnp.array([1e20 + 1e20j, 1.0], jnp.complex64)}
    results = []
    for lib in (gradx, optax):
        tx = lib.amsgrad(0.1)
        for update in (tx.update, jax.jit(tx.update)):
            results.append(np.asarray(update(grads, tx.init(params), params)[0]["w"]))
    for r in results:
        assert np.isnan(r[0]) and np.isfinite(r[1])
        np.testing.assert_allclose(r[1], results[0][1], rtol=1e-6)


# -- safe_increment on every counter dtype ------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["uint32", "int8", "bfloat16"])
def test_safe_increment_saturates_in_unsigned_and_small_dtypes(dtype):
    """uint32's maximum does not fit a weakly typed int: gradx compared with it and overflowed
    under jit (Optax's numerics_test)."""
    increment = jax.jit(gradx.safe_increment)
    top = jnp.asarray(jnp.iinfo(dtype).max if "int" in dtype else jnp.finfo(dtype).max, dtype)
    np.testing.assert_array_equal(increment(top), top)
    np.testing.assert_array_equal(increment(jnp.asarray(3, dtype)), jnp.asarray(4, dtype))
    for bad in (jnp.asarray(True), jnp.asarray(1 + 0j, jnp.complex64)):
        with pytest.raises(ValueError, match="integer or floating dtype, got a count of dtype"):
            gradx.safe_increment(bad)


@pytest.mark.parametrize("x64", [False, True])
def test_lookahead_reset_keeps_a_boolean_state_field_boolean(x64):
    """optimistic_adam_v2's is_initial_step (bool): Optax's reset blend (1 - c)·old + c·fresh
    turns it int32 (int64 under x64, found by make fuzz) at the first update; gradx's fresh
    state keeps it bool (and True after the sync, as a fresh state has it)."""
    flags = {}
    with jax.enable_x64(x64):
        for lib in (gradx, optax):
            tx = lib.lookahead(lib.optimistic_adam_v2(0.1), 2, 0.5, reset_state=True)
            params = lib.LookaheadParams.init_synced(jnp.zeros(2))
            state = tx.init(params)
            update = jax.jit(tx.update)
            _, first = update(jnp.ones(2), state, params)
            _, synced = update(jnp.ones(2), first, params)
            flags[lib.__name__] = [s.fast_state[1].is_initial_step for s in (state, first, synced)]
    assert [f.dtype for f in flags["gradx"]] == [jnp.bool_] * 3
    assert [bool(f) for f in flags["gradx"]] == [True, False, True]
    assert flags["optax"][0].dtype == jnp.bool_
    assert flags["optax"][1].dtype == (jnp.int64 if x64 else jnp.int32)
