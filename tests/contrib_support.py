"""Runs of a gradx transformation and of an authors' PyTorch optimizer on the same fixed gradients
(the multi-leaf tree of ``support.make_params``), compared by each step's displacement from the
initial params."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

import gradx
from support import make_grads, make_params

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
