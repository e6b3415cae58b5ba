"""Shared test harness: a multi-leaf parameter tree, deterministic gradients, and side-by-side
runs of a gradx transformation against its oracle (optax or a hand-written reference), also on
complex64 and bfloat16 parameters."""

import jax
import jax.numpy as jnp
import numpy as np

import gradx

RTOL = 2e-5   # the loosest relative tolerance allowed against optax (issue 2)
ATOL = 1e-7


def make_params(dtype=jnp.float32, seed=0):
    """Matrices, a vector, a scalar and a 4-D kernel."""
    rng = np.random.default_rng(seed)
    shapes = {"dense": {"kernel": (5, 3), "bias": (3,)}, "scale": (), "conv": (2, 3, 3, 4),
              "head": (3, 2)}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), dtype), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


def make_grads(params, step, seed=1):
    """Deterministic, step-dependent gradients with mixed signs and magnitudes."""
    rng = np.random.default_rng(seed + 1000 * step)
    return jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape) * (1.0 + 0.5 * step) + 0.1 * np.asarray(p, np.float64),
                              p.dtype), params)


def toward_target(params, step):
    """Gradients of a quadratic pulling every entry to 0.3, with step-dependent noise: for rules
    that learn their step size from progress (D-Adaptation, Prodigy, Mechanic)."""
    rng = np.random.default_rng(step)
    return jax.tree.map(lambda p: (p - 0.3 + 0.1 * rng.normal(size=np.shape(p))).astype(p.dtype),
                        params)


def run(tx, params, n_steps=6, extra_args=None, jit=True, grads_fn=make_grads):
    """Runs ``n_steps`` updates; returns the list of updates, the final params and state.

    ``extra_args(step, params) -> dict`` supplies extra keyword arguments per step.
    """
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params)
    history = []
    for step in range(n_steps):
        grads = grads_fn(params, step)
        kwargs = extra_args(step, params) if extra_args else {}
        updates, state = update(grads, state, params, **kwargs)
        history.append(updates)
        params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)
    return history, params, state


def assert_trees_close(actual, expected, rtol=RTOL, atol=ATOL, what=""):
    actual_leaves, actual_def = jax.tree.flatten(actual)
    expected_leaves, expected_def = jax.tree.flatten(expected)
    assert len(actual_leaves) == len(expected_leaves), (
        f"{what}: {len(actual_leaves)} leaves vs {len(expected_leaves)}\n{actual_def}\n{expected_def}")
    for i, (a, e) in enumerate(zip(actual_leaves, expected_leaves)):
        assert np.shape(a) == np.shape(e), f"{what} leaf {i}: shape {np.shape(a)} vs {np.shape(e)}"
        if jax.dtypes.issubdtype(jnp.result_type(a), jax.dtypes.prng_key):
            a, e = jax.random.key_data(a), jax.random.key_data(e)
        np.testing.assert_allclose(np.asarray(a, np.float64) if not np.iscomplexobj(a) else np.asarray(a),
                                   np.asarray(e, np.float64) if not np.iscomplexobj(e) else np.asarray(e),
                                   rtol=rtol, atol=atol, err_msg=f"{what} leaf {i}")


def compare(gradx_tx, oracle_tx, params=None, n_steps=6, extra_args=None, rtol=RTOL, atol=ATOL,
            compare_state=True, grads_fn=make_grads):
    """Runs both transformations on the same gradients and asserts equal updates (every step)
    and equal state leaves (at the end)."""
    params = make_params() if params is None else params
    ours, our_params, our_state = run(gradx_tx, params, n_steps, extra_args, grads_fn=grads_fn)
    theirs, their_params, their_state = run(oracle_tx, params, n_steps, extra_args,
                                            grads_fn=grads_fn)
    for step, (a, e) in enumerate(zip(ours, theirs)):
        assert_trees_close(a, e, rtol, atol, what=f"updates at step {step}")
    assert_trees_close(our_params, their_params, rtol, atol, what="final params")
    if compare_state:
        assert_trees_close(our_state, their_state, rtol, atol, what="final state")
    return ours, our_state


def complex_params():
    """``make_params`` as complex64: real and imaginary parts from two seeds."""
    real, imag = make_params(seed=0), make_params(seed=5)
    return jax.tree.map(lambda a, b: (a + 1j * b).astype(jnp.complex64), real, imag)


def complex_grads(params, step):
    real = make_grads(jax.tree.map(jnp.real, params), step)
    imag = make_grads(jax.tree.map(jnp.imag, params), step, seed=7)
    return jax.tree.map(lambda a, b: (a + 1j * b).astype(jnp.complex64), real, imag)


def compare_complex(ours, theirs):
    """Equal updates, params and state over 4 jitted steps on complex params; complex updates."""
    params = complex_params()
    a, a_params, a_state = run(ours, params, n_steps=4, grads_fn=complex_grads)
    b, b_params, b_state = run(theirs, params, n_steps=4, grads_fn=complex_grads)
    assert_trees_close(a, b, what="complex updates")
    assert_trees_close(a_params, b_params, what="complex params")
    assert_trees_close(a_state, b_state, what="complex state")
    assert all(jnp.iscomplexobj(u) for u in jax.tree.leaves(a[-1]))


def compare_bf16(ours, theirs):
    """bf16 params keep bf16 updates and moments; same numbers as optax's bf16 arithmetic."""
    params = make_params(jnp.bfloat16)
    a, _, a_state = run(ours, params, n_steps=3)
    b, _, b_state = run(theirs, params, n_steps=3)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(a[-1]))
    assert all(x.dtype == y.dtype for x, y in zip(jax.tree.leaves(a_state), jax.tree.leaves(b_state)))
    assert_trees_close(a, b, what="bf16 updates")


def assert_same_state_class(ours, theirs, name):
    """Both inits give a state class called ``name`` with the same fields, exported by gradx."""
    params = make_params()
    a, b = ours.init(params), theirs.init(params)
    assert type(a).__name__ == type(b).__name__ == name
    assert a._fields == b._fields
    assert getattr(gradx, name)._fields == a._fields


def donated_temporaries(make_tx, lib, shape=(512, 384)):
    """Bytes of temporaries XLA allocates for one donated step (``update`` and ``apply_updates``
    in one jit) of ``make_tx(lib)`` on a single float32 leaf of ``shape``; also that leaf's size.
    A rule whose reductions or in-place updates make XLA write a full-size intermediate shows it
    here (``compiled.memory_analysis()``)."""
    params = {"w": jnp.full(shape, 0.02, jnp.float32)}
    tx = make_tx(lib)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return lib.apply_updates(params, updates), state

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), params).compile()
    return compiled.memory_analysis().temp_size_in_bytes, 4 * int(np.prod(shape))
