"""snapshot, monitor and measure_with_ema against optax 0.2.8."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx.monitoring
from gradx.combine import chain
from gradx.monitoring import MonitorState, SnapshotState, measure_with_ema, monitor, snapshot
from support import assert_trees_close, compare, make_grads, make_params

CLIP = 4.0


def norm(tree):
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(tree)))


def test_snapshot_matches_optax():
    ours = chain(optax.sgd(0.1, momentum=0.9), snapshot("norm", norm), optax.clip_by_global_norm(1.0))
    theirs = optax.chain(optax.sgd(0.1, momentum=0.9), optax.snapshot("norm", norm),
                         optax.clip_by_global_norm(1.0))
    _, state = compare(ours, theirs)
    assert isinstance(state[1], SnapshotState) and state[1].measurement["norm"].shape == ()


def measures(lib):
    return {"norm": norm,
            "clipped_ema": lib.measure_with_ema(lambda u: norm(u) > CLIP, decay=0.9),
            "norm_ema": lib.measure_with_ema(norm, decay=0.5, debias=False)}


def test_monitor_and_measure_with_ema_match_optax():
    ours = chain(monitor(measures(gradx.monitoring)), optax.clip_by_global_norm(CLIP))
    theirs = optax.chain(optax.monitor(measures(optax)), optax.clip_by_global_norm(CLIP))
    history, state = compare(ours, theirs, n_steps=5)
    assert isinstance(state[0], MonitorState)
    ema = float(state[0].measurements["clipped_ema"])
    assert 0.0 < ema < 1.0  # some steps were clipped, some not


def test_monitor_state_keeps_its_structure_from_init():
    tx = monitor(measures(gradx.monitoring))
    params = make_params()
    state = tx.init(params)
    assert list(state.measurements) == ["norm", "clipped_ema", "norm_ema"]
    assert state.measurements["clipped_ema"].dtype == jnp.float32
    _, new_state = jax.jit(tx.update)(params, state, params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert all(a.dtype == b.dtype for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)))
    # the whole point: a training loop carrying the state through lax.fori_loop works
    step = lambda i, s: tx.update(params, s, params)[1]  # noqa: E731
    looped = jax.jit(lambda s: jax.lax.fori_loop(0, 3, step, s))(state)
    np.testing.assert_allclose(looped.measurements["norm"], norm(params), rtol=1e-6)
    theirs = optax.monitor(measures(optax))
    their_state = theirs.init(params)
    assert their_state.measurements == {}  # optax: the structure changes at the first update
    with pytest.raises(TypeError):
        jax.lax.fori_loop(0, 3, lambda i, s: theirs.update(params, s, params)[1], their_state)


def test_measure_with_ema_on_its_own_matches_optax():
    ours = measure_with_ema(norm, decay=0.8)
    theirs = optax.measure_with_ema(norm, decay=0.8)
    params = make_params()
    so, st = ours.init(params), theirs.init(params)
    for step in range(4):
        grads = make_grads(params, step)
        mo, so = jax.jit(ours.update)(grads, so, params)
        mt, st = jax.jit(theirs.update)(grads, st, params)
        assert_trees_close(mo, mt, what=f"measurement {step}")
    assert_trees_close(so, st, what="state")
