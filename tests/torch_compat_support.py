"""Side-by-side runs of gradx.torch_compat against torch 2.13 (CPU, float32) on the same gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

import gradx

RTOL = 5e-5   # the loosest relative tolerance the issue allows against torch
ATOL = 1e-7
SHAPES = {"w": (4, 3), "b": (3,), "s": (), "k": (2, 3, 2)}


def make_params(seed=0, scale=0.5):
    """A matrix, a vector, a scalar and a 3-D leaf (Adafactor factors its last two dims)."""
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}


def make_grads(n_steps, seed=1, zero_frac=0.1):
    """Step-dependent gradients with mixed signs and magnitudes, and a few exact zeros."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n_steps):
        g = {k: (rng.normal(size=s) * (1 + 0.3 * t) + 0.2).astype(np.float32) for k, s in SHAPES.items()}
        out.append({k: np.where(rng.random(v.shape) < zero_frac, 0, v).astype(np.float32)
                    for k, v in g.items()})
    return out


def leaves(tree):
    return jax.tree.leaves(tree)


def run_gradx(tx, params, grads, extra_args=None, state=None):
    """Every step's params (numpy) and the final state; one jit per transformation."""
    update = jax.jit(tx.update)
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params) if state is None else state
    history = []
    for t, g in enumerate(grads):
        kwargs = extra_args(t) if extra_args else {}
        updates, state = update(jax.tree.map(jnp.asarray, g), state, params, **kwargs)
        params = gradx.apply_updates(params, updates)
        history.append(jax.tree.map(np.asarray, params))
    return history, state, params


class TorchRun:
    """A torch optimizer over the leaves of a params tree (torch index i = leaf i)."""

    def __init__(self, name, kwargs, params, groups=None, scheduler=None):
        self.treedef = jax.tree.structure(params)
        self.tensors = [torch.nn.Parameter(torch.tensor(np.array(p))) for p in leaves(params)]
        spec = self.tensors if groups is None else groups(self.tensors)
        self.opt = getattr(torch.optim, name)(spec, **kwargs)
        self.scheduler = scheduler(self.opt) if scheduler else None

    def step(self, grads, metric=None):
        for p, g in zip(self.tensors, leaves(grads)):
            p.grad = torch.tensor(np.array(g))
        self.opt.step()
        if self.scheduler is not None:
            self.scheduler.step() if metric is None else self.scheduler.step(metric)
        return self.params()

    def run(self, grads, metrics=None):
        return [self.step(g, None if metrics is None else metrics[t]) for t, g in enumerate(grads)]

    def params(self):
        return self.treedef.unflatten([p.detach().numpy().copy() for p in self.tensors])

    def state_tree(self, field):
        return self.treedef.unflatten([self.opt.state[p][field].detach().numpy().copy()
                                       for p in self.tensors])


def assert_close(actual, expected, what="", rtol=RTOL, atol=ATOL):
    a_leaves, e_leaves = leaves(actual), leaves(expected)
    assert len(a_leaves) == len(e_leaves), what
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        assert np.shape(a) == np.shape(e), f"{what} leaf {i}: {np.shape(a)} vs {np.shape(e)}"
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64),
                                   rtol=rtol, atol=atol, err_msg=f"{what} leaf {i}")


def assert_trajectories(ours, theirs, what=""):
    assert len(ours) == len(theirs)
    for t, (a, e) in enumerate(zip(ours, theirs)):
        assert_close(a, e, f"{what} params after step {t + 1}")
