"""Helpers for the contrib tests: runs of a gradx transformation and of an authors' PyTorch
optimizer on the same fixed gradients (the multi-leaf tree of ``support.make_params``), compared
by each step's displacement from the initial params; and ``compare``, ``support.compare``'s check
against Optax with both updates compiled in one jitted function (half the compilation time,
which dominates these tests)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import gradx
import support
from support import assert_trees_close, make_grads, make_params

RTOL = 5e-5   # the loosest relative tolerance allowed against torch (float32)
ATOL = 1e-6


def fixed_grads(params, n_steps):
    """``n_steps`` gradients, independent of the trajectory (so both sides see the same ones)."""
    return [make_grads(params, step) for step in range(n_steps)]


def gradx_trajectory(tx, params, grads):
    """The params after each step (one jit), and the final state."""
    update = jax.jit(tx.update)
    state = tx.init(params)
    out = []
    for g in grads:
        updates, state = update(g, state, params)
        params = gradx.apply_updates(params, updates)
        out.append(params)
    return out, state


def torch_trajectory(make_optimizer, params, grads, dtype=torch.float32):
    """The params after each step of ``make_optimizer(tensors)`` (leaf ``i`` is tensor ``i``).
    Schedule-Free optimizers are put in train mode first (the params then hold ``y``)."""
    treedef = jax.tree.structure(params)
    tensors = [torch.nn.Parameter(torch.tensor(np.asarray(p), dtype=dtype))
               for p in jax.tree.leaves(params)]
    optimizer = make_optimizer(tensors)
    if hasattr(optimizer, "train"):
        optimizer.train()
    out = []
    for g in grads:
        for tensor, leaf in zip(tensors, jax.tree.leaves(g)):
            tensor.grad = torch.tensor(np.asarray(leaf), dtype=dtype)
        optimizer.step()
        out.append(treedef.unflatten([t.detach().numpy().copy() for t in tensors]))
    return out


def assert_same_trajectory(ours, theirs, params, rtol=RTOL, atol=ATOL):
    """Equal displacement ``p_t - p_0`` at every step, leaf by leaf."""
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for path, x, y, p0 in zip(gradx.plumbing.leaf_paths(a), jax.tree.leaves(a),
                                  jax.tree.leaves(b), jax.tree.leaves(params)):
            start = np.asarray(p0, np.float64)
            np.testing.assert_allclose(np.asarray(x, np.float64) - start,
                                       np.asarray(y, np.float64) - start, rtol=rtol, atol=atol,
                                       err_msg=f"step {step}, leaf '{path}'")


def compare_with_torch(tx, make_optimizer, n_steps=5, dtype=jnp.float32, **tolerances):
    """``tx`` and the torch optimizer over ``n_steps`` steps from ``make_params()``; returns
    the gradx trajectory and state."""
    params = jax.tree.map(lambda p: p.astype(dtype), make_params())
    grads = fixed_grads(params, n_steps)
    ours, state = gradx_trajectory(tx, params, grads)
    theirs = torch_trajectory(make_optimizer, params, grads,
                              torch.float64 if dtype == jnp.float64 else torch.float32)
    assert_same_trajectory(ours, theirs, params, **tolerances)
    return ours, state


def compare(ours, theirs, params=None, n_steps=6, extra_args=None, grads_fn=make_grads,
            rtol=support.RTOL, atol=support.ATOL):
    """gradx's ``ours`` and Optax's ``theirs`` from ``params`` (``make_params()``), each on its own
    trajectory, for ``n_steps`` jitted steps; ``extra_args(step, params) -> dict`` gives the
    update's extra keyword arguments. Returns gradx's updates of every step and final state."""
    params = make_params() if params is None else params

    @jax.jit
    def step(grads, states, params, kwargs):
        return tuple(tx.update(g, s, p, **k) for tx, g, s, p, k in
                     zip((ours, theirs), grads, states, params, kwargs))

    params, states, history = (params, params), (ours.init(params), theirs.init(params)), []
    for i in range(n_steps):
        grads = tuple(grads_fn(p, i) for p in params)
        kwargs = tuple(extra_args(i, p) if extra_args else {} for p in params)
        (ua, sa), (ub, sb) = step(grads, states, params, kwargs)
        assert_trees_close(ua, ub, rtol, atol, what=f"updates at step {i}")
        history.append(ua)
        params = tuple(jax.tree.map(lambda p, u: (p + u).astype(p.dtype), p, u)
                       for p, u in zip(params, (ua, ub)))
        states = (sa, sb)
    assert_trees_close(params[0], params[1], rtol, atol, what="final params")
    assert_trees_close(states[0], states[1], rtol, atol, what="final state")
    return history, states[0]


def compare_by_name(name, kwargs, dtype, **options):
    """``compare`` of ``gradx.contrib.<name>(**kwargs)`` and ``optax.contrib.<name>(**kwargs)``
    from ``make_params(dtype)``, 6 steps in float32 and 3 in bf16; also checks that the states
    have the same class and that the updates keep ``dtype``."""
    ours, theirs = getattr(gradx.contrib, name)(**kwargs), getattr(optax.contrib, name)(**kwargs)
    updates, state = compare(ours, theirs, params=make_params(dtype),
                             n_steps=6 if dtype == jnp.float32 else 3, **options)
    assert type(state).__name__ == type(theirs.init(make_params())).__name__
    assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    return updates, state
