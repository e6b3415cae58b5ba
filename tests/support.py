"""Shared test harness: a multi-leaf parameter tree, deterministic gradients, and side-by-side
runs of a gradx transformation against its oracle (optax or a hand-written reference)."""

import jax
import jax.numpy as jnp
import numpy as np

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
            compare_state=True):
    """Runs both transformations on the same gradients and asserts equal updates (every step)
    and equal state leaves (at the end)."""
    params = make_params() if params is None else params
    ours, our_params, our_state = run(gradx_tx, params, n_steps, extra_args)
    theirs, their_params, their_state = run(oracle_tx, params, n_steps, extra_args)
    for step, (a, e) in enumerate(zip(ours, theirs)):
        assert_trees_close(a, e, rtol, atol, what=f"updates at step {step}")
    assert_trees_close(our_params, their_params, rtol, atol, what="final params")
    if compare_state:
        assert_trees_close(our_state, their_state, rtol, atol, what="final state")
    return ours, our_state
