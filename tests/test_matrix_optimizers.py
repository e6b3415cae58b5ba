"""gradx.matrix's optimizers against their references, several jitted steps including at least
two preconditioner refreshes: ``distributed_shampoo`` against Google's ``precondition-opt``
0.3.0 (float32), ``shampoo`` against a float64 numpy transcription of Meta's
``DistributedShampoo`` update, ``soap`` against ``pytorch_optimizer.SOAP`` 4.1.0 (float64 on
both sides), ``muon`` against ``optax.contrib.muon`` and Keller Jordan's ``SingleDeviceMuon``
(Newton-Schulz in float64)."""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import gradx
from support import assert_trees_close, make_params, run

# Shapes that exercise the engine: a matrix cut into blocks of two shapes (block size 4), a
# vector, a 3-D tensor and a scalar.
SHAPES = {"w": (6, 3), "v": (3,), "k": (2, 3, 4), "s": ()}
GOOGLE_SHAPES = {"w": (6, 4), "v": (4,), "s": ()}


def tree(seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape) for name, shape in shapes.items()}


def gradient_sequence(n, shapes=SHAPES, seed=1):
    return [tree(seed + 100 * t, shapes) for t in range(n)]


def run_arrays(tx, params, grads, dtype):
    """Jitted steps of ``tx`` from numpy trees; the params after each step, as numpy."""
    update = jax.jit(tx.update)
    p = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    state, out = tx.init(p), []
    for g in grads:
        updates, state = update(jax.tree.map(lambda x: jnp.asarray(x, dtype), g), state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
        out.append(jax.tree.map(np.asarray, p))
    return out, state


# ---------------------------------------------------------------------------------------------
# Google's distributed Shampoo

@pytest.fixture(scope="module")
def google():
    """``precondition.distributed_shampoo`` on current JAX: the aliases it needs (not in gradx)."""
    jax.tree_map, jax.tree_flatten, jax.tree_unflatten = (
        jax.tree.map, jax.tree.flatten, jax.tree.unflatten)
    if "chex" not in sys.modules:  # only chex.Array is used, as an annotation
        sys.modules["chex"] = types.SimpleNamespace(Array=jax.Array)
    from precondition import distributed_shampoo as module
    return module


def test_distributed_shampoo_matches_google(google):
    """Blocks of two shapes, a vector, a skipped scalar; AdaGrad grafting, coupled weight
    decay, Nesterov; roots every 2 steps (0-based steps 0, 2, 4), Shampoo from step 1."""
    kw = dict(block_size=4, merge_small_dims_block_size=4, preconditioning_compute_steps=2,
              start_preconditioning_step=1, graft_type=2, weight_decay=1e-3, beta2=0.99)
    params, grads = tree(shapes=GOOGLE_SHAPES), gradient_sequence(5, GOOGLE_SHAPES)
    ours, state = run_arrays(gradx.distributed_shampoo(0.1, **kw), params, grads, jnp.float32)
    theirs, _ = run_arrays(google.distributed_shampoo(0.1, **kw), params, grads, jnp.float32)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert_trees_close(a, b, rtol=2e-5, atol=2e-6, what=f"params after step {step}")
    assert int(state.count) == 5
    assert jax.tree.leaves(state.preconditioners["s"]) == []  # rank 0: the graft's step
    assert not any(np.any(np.asarray(f)) for f in jax.tree.leaves(state.failures))


def test_distributed_shampoo_signature_and_defaults(google):
    import inspect
    ours = inspect.signature(gradx.distributed_shampoo).parameters
    theirs = inspect.signature(google.distributed_shampoo).parameters
    assert list(ours) == list(theirs)
    for name in theirs:  # enums compare by value (GraftingType.SGD == 1)
        assert ours[name].default == theirs[name].default, name
    assert ours["block_size"].default is inspect.Parameter.empty
    assert [(t.name, int(t)) for t in gradx.GraftingType] == [
        (t.name, int(t)) for t in google.GraftingType]


# ---------------------------------------------------------------------------------------------
# Meta's Distributed Shampoo: a float64 numpy transcription of its update

def meta_merge(shape, threshold):
    """Meta's ``merge_small_dims`` (target dimensionality 1): squeeze 1s, merge from the end."""
    dims = [d for d in reversed(shape) if d != 1] or [1]
    merged = [dims[0]]
    for d in dims[1:]:
        if merged[-1] * d <= threshold:
            merged[-1] *= d
        else:
            merged.append(d)
    return tuple(reversed(merged))


def meta_blocks(x, size):
    """Meta's ``multi_dim_split``: every dim cut into chunks of ``size``, blocks row-major."""
    cuts = [list(range(size, d, size)) for d in x.shape]
    blocks = [x]
    for axis, points in enumerate(cuts):
        blocks = [piece for b in blocks for piece in np.split(b, points, axis=axis)]
    return blocks, cuts


def meta_unblock(blocks, shape, cuts):
    grids = [len(c) + 1 for c in cuts]
    for axis in reversed(range(len(shape))):
        n = grids[axis]
        blocks = [np.concatenate(blocks[i:i + n], axis=axis) for i in range(0, len(blocks), n)]
    return blocks[0]


def meta_inverse_root(a, epsilon, root):
    values, vectors = np.linalg.eigh(a + epsilon * np.eye(len(a)))
    low = values.min()
    if low < epsilon:
        values = values - low + epsilon
    return (vectors * values ** (-1.0 / root)) @ vectors.T


def meta_shampoo(params, grads, lr, betas, epsilon, weight_decay, max_dim, frequency,
                 graft_beta2=0.999, graft_epsilon=1e-10):
    """Meta's ``DistributedShampoo`` (RootInv eigh config, Adam grafting, decoupled weight
    decay, bias correction) step by step, per block, in float64; the params after each step."""
    beta1, beta2 = betas
    start = frequency
    state = {}
    for name, p in params.items():
        blocks, _ = meta_blocks(p.reshape(meta_merge(p.shape, max_dim)), max_dim)
        state[name] = [{"F": [np.zeros((d, d)) for d in b.shape],
                        "P": [np.eye(d) for d in b.shape], "m": np.zeros(b.shape),
                        "V": np.zeros(b.shape)} for b in blocks]
    params = {k: v.copy() for k, v in params.items()}
    out = []
    for t, g in enumerate(grads, start=1):
        refresh = (t % frequency == 0 and t > start) or t == start
        for name, p in params.items():
            merged = meta_merge(p.shape, max_dim)
            g_blocks, cuts = meta_blocks(g[name].reshape(merged), max_dim)
            w_blocks, _ = meta_blocks(p.reshape(merged), max_dim)
            steps = []
            for st, gb, wb in zip(state[name], g_blocks, w_blocks):
                order = gb.ndim
                for k in range(order):
                    others = [i for i in range(order) if i != k]
                    gram = np.tensordot(gb, gb, axes=(others, others))
                    st["F"][k] = (st["F"][k] if beta2 == 1 else beta2 * st["F"][k]) + (
                        1.0 if beta2 == 1 else 1 - beta2) * gram
                    if refresh:
                        corrected = st["F"][k] / (1 - beta2 ** t if beta2 < 1 else 1)
                        st["P"][k] = meta_inverse_root(corrected, epsilon, 2 * order)
                st["V"] = graft_beta2 * st["V"] + (1 - graft_beta2) * gb * gb
                st["m"] = st["m"] + (1 - beta1) * (gb - st["m"])
                filtered = st["m"] / (1 - beta1 ** t)
                graft = filtered / (np.sqrt(st["V"] / (1 - graft_beta2 ** t)) + graft_epsilon)
                direction = filtered
                for k in range(order):
                    direction = np.tensordot(direction, st["P"][k], axes=([0], [0]))
                direction = direction * np.linalg.norm(graft) / (np.linalg.norm(direction) + 1e-16)
                if t < start:
                    direction = graft
                steps.append(wb - lr * (direction + weight_decay * wb))
            params[name] = meta_unblock(steps, merged, cuts).reshape(p.shape)
        out.append({k: v.copy() for k, v in params.items()})
    return out


def test_shampoo_matches_meta_transcription():
    """EMA statistics with bias correction, roots at steps 2 and 4 (start = frequency = 2),
    Adam grafting per block (its step alone on step 1), decoupled weight decay; float64."""
    params, grads = tree(), gradient_sequence(5)
    kw = dict(betas=(0.9, 0.99), epsilon=1e-6, weight_decay=0.01, max_dim=4, frequency=2)
    expected = meta_shampoo(params, grads, 0.05, **kw)
    with jax.enable_x64(True):
        tx = gradx.shampoo(0.05, betas=kw["betas"], epsilon=kw["epsilon"],
                           weight_decay=kw["weight_decay"], max_preconditioner_dim=4,
                           precondition_frequency=2, grafting="adam")
        ours, state = run_arrays(tx, params, grads, jnp.float64)
    for step, (a, b) in enumerate(zip(ours, expected)):
        assert_trees_close(a, b, rtol=1e-10, atol=1e-12, what=f"params after step {step}")
    assert state.statistics["s"][0][0].shape == (1, 1, 1)  # a scalar is a (1,) block
    assert [s.shape for s in state.statistics["w"][0]] == [(1, 4, 4), (1, 3, 3)]


def test_shampoo_defaults_are_metas():
    import inspect
    defaults = {k: v.default for k, v in inspect.signature(gradx.shampoo).parameters.items()}
    assert defaults["learning_rate"] == 1e-2 and defaults["betas"] == (0.9, 1.0)
    assert defaults["epsilon"] == 1e-12 and defaults["max_preconditioner_dim"] == 1024
    assert defaults["precondition_frequency"] == 1 and defaults["grafting"] is None
    assert defaults["root"] == "eigh" and defaults["use_bias_correction"]


# ---------------------------------------------------------------------------------------------
# SOAP

SOAP_SHAPES = {"a": (4, 4), "b": (3,), "c": (2, 3, 3, 4), "d": (5, 3), "s": ()}


def test_soap_matches_pytorch_optimizer(monkeypatch):
    """float64 on both sides (the reference's QR is made float64 too: its ``torch.float32`` is
    float64 here); set-up step, then refreshes at steps 3 and 5; ``d``'s first axis is longer
    than ``max_precond_dim`` (not rotated); vector and scalar run plain Adam. Square blocks
    keep the first eigenbases unique (rank-deficient statistics have no unique eigenbasis)."""
    from pytorch_optimizer.optimizer import soap as reference

    class Float64Torch:
        float32 = torch.float64

        def __getattr__(self, name):
            return getattr(torch, name)

    monkeypatch.setattr(reference, "torch", Float64Torch())
    params, grads = tree(shapes=SOAP_SHAPES), gradient_sequence(6, SOAP_SHAPES)
    tp = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    opt = reference.SOAP(list(tp.values()), lr=0.01, precondition_frequency=2,
                         max_precondition_dim=4)
    expected = []
    for g in grads:
        for k, p in tp.items():
            p.grad = torch.tensor(g[k])
        opt.step()
        expected.append({k: p.detach().numpy().copy() for k, p in tp.items()})
    with jax.enable_x64(True):
        ours, state = run_arrays(gradx.soap(0.01, precondition_frequency=2, max_precond_dim=4),
                                 params, grads, jnp.float64)
    for step, (a, b) in enumerate(zip(ours, expected)):
        assert_trees_close(a, b, rtol=1e-10, atol=1e-12, what=f"params after step {step}")
    assert int(state.count) == 6 and [q.shape for q in state.bases["d"][0]] == [(1, 3, 3)]


def test_soap_defaults_are_official():
    import inspect
    defaults = {k: v.default for k, v in inspect.signature(gradx.soap).parameters.items()}
    assert defaults == dict(learning_rate=3e-3, betas=(0.95, 0.95), shampoo_beta=-1.0, eps=1e-8,
                            weight_decay=0.01, precondition_frequency=10, max_precond_dim=10000,
                            merge_dims=False, precondition_1d=False, normalize_grads=False,
                            correct_bias=True)


# ---------------------------------------------------------------------------------------------
# Muon

def conv_as_matrices(lib):
    """Dimension numbers for ``make_params``: the conv kernel as two (H·W, in)-by-out
    matrices (its first axis a batch axis), the bias and scale to AdamW."""
    dims = lib.MuonDimensionNumbers
    return lambda params: {"conv": dims((1, 2), 3), "dense": {"kernel": dims(), "bias": None},
                           "head": dims(0, 1), "scale": None}


@pytest.mark.parametrize("variant", ["defaults", "options"])
def test_muon_matches_optax(variant):
    def kwargs(lib):
        if variant == "defaults":
            return {}
        return dict(ns_coeffs="dion", weight_decay=0.1, nesterov=False, adaptive=True,
                    consistent_rms=0.2, preconditioning="schatten", adam_weight_decay=0.05,
                    muon_weight_dimension_numbers=conv_as_matrices(lib))

    params = make_params()
    ours, _, our_state = run(gradx.muon(0.02, **kwargs(gradx)), params, n_steps=4)
    theirs, _, their_state = run(optax.contrib.muon(0.02, **kwargs(optax.contrib)), params,
                                 n_steps=4)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert_trees_close(a, b, what=f"updates at step {step}")
    assert_trees_close(our_state, their_state, what="state")
    inner = our_state.inner_states["muon"].inner_state[0]
    assert type(inner).__name__ == "MuonState" and inner._fields == ("count", "mu", "ns_coeffs")


def test_scale_by_muon_default_dimension_numbers_cover_a_tree():
    """Optax's ``scale_by_muon()`` raises on a tree of several leaves although its docstring
    says None means every leaf is a matrix; gradx does what the docstring says."""
    params = {"a": jnp.ones((3, 4)), "b": jnp.eye(2)}
    with pytest.raises(ValueError):
        optax.contrib.scale_by_muon().update(params, optax.contrib.scale_by_muon().init(params))
    tx = jax.jit(gradx.scale_by_muon().update)
    ours, _ = tx(params, gradx.scale_by_muon().init(params))
    single = optax.contrib.scale_by_muon()
    for name, x in params.items():
        expected, _ = jax.jit(single.update)(x, single.init(x))
        np.testing.assert_allclose(ours[name], expected, rtol=1e-6)


def test_muon_keller_jordan_form_matches_single_device_muon(monkeypatch):
    """``form='keller_jordan'`` with ``ns_dtype=float64`` against ``SingleDeviceMuon`` with its
    Newton-Schulz made float64 (``Tensor.bfloat16`` → ``double``); torch weights are (out, in)."""
    import muon as reference
    monkeypatch.setattr(torch.Tensor, "bfloat16", torch.Tensor.double)
    shapes = {"wide": (3, 5), "tall": (6, 2)}
    params, grads = tree(shapes=shapes), gradient_sequence(4, shapes)
    tp = {k: torch.nn.Parameter(torch.tensor(v.T.copy())) for k, v in params.items()}
    opt = reference.SingleDeviceMuon(list(tp.values()), lr=0.02, weight_decay=0.1, momentum=0.95)
    expected = []
    for g in grads:
        for k, p in tp.items():
            p.grad = torch.tensor(g[k].T.copy())
        opt.step()
        expected.append({k: p.detach().numpy().T.copy() for k, p in tp.items()})
    with jax.enable_x64(True):
        tx = gradx.muon(0.02, weight_decay=0.1, form="keller_jordan", ns_dtype=jnp.float64)
        ours, _ = run_arrays(tx, params, grads, jnp.float64)
    for step, (a, b) in enumerate(zip(ours, expected)):
        assert_trees_close(a, b, rtol=1e-10, atol=1e-12, what=f"params after step {step}")


def test_muon_signature_is_optaxs():
    import inspect
    ours = inspect.signature(gradx.muon).parameters
    theirs = inspect.signature(optax.contrib.muon).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    assert all(ours[k].default == theirs[k].default for k in theirs)
    assert set(ours) - set(theirs) == {"form", "ns_dtype"}
    assert gradx.MuonDimensionNumbers()._asdict() == optax.contrib.MuonDimensionNumbers()._asdict()


