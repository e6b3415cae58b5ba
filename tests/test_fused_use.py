"""The flat path in use: checkpoints in the reference layout (round trips both ways),
``read_state`` / ``set_hyperparams`` and ``memory_report`` through the flat state, and the
documented patterns for keeping params flat inside a Flax Linen and a Flax NNX train step, step
for step against the reference path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.training import train_state

import gradx
from gradx import checkpoint
from gradx.fused import flatten_params, fused, to_reference_state, unflatten_params
from support import make_grads, make_params
from test_fused import assert_trees_equal, assert_updates_close, mixed_params

INPLACE = 32


def clip_adamw():
    schedule = gradx.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10)
    return gradx.chain(gradx.clip_by_global_norm(0.5),
                       gradx.adamw(schedule, weight_decay=0.1, mask=gradx.weight_decay_mask()))


def test_checkpoint_saves_the_reference_layout_and_restores_into_either(tmp_path):
    """A checkpoint written from flat params and a FusedState holds the reference layout (the
    same leaf records as the reference path's), and restores exactly into flat likes and into
    the reference path's trees."""
    params = mixed_params()
    tx, fast = clip_adamw(), fused(clip_adamw(), INPLACE)
    flat = flatten_params(params, INPLACE, tx=tx)
    state = fast.init(flat)
    update = jax.jit(fast.update)
    for step in range(2):
        updates, state = update(flatten_params(make_grads(params, step), INPLACE, tx=tx), state,
                                flat)
        flat = gradx.apply_updates(flat, updates)
    checkpoint.save(tmp_path, flat, state, step=2)
    metadata = checkpoint.read_metadata(tmp_path)
    assert metadata["params"] == checkpoint.leaf_records(params)
    assert metadata["opt_state"] == checkpoint.leaf_records(jax.eval_shape(tx.init, params))

    restored = checkpoint.restore(tmp_path, flat, jax.eval_shape(fast.init, flat))
    assert_trees_equal(restored.params, flat, "flat params")
    assert_trees_equal(restored.opt_state, state, "flat state")
    assert restored.step == 2
    reference = checkpoint.restore(tmp_path, params, tx.init(params))
    assert_trees_equal(reference.params, unflatten_params(flat), "params")
    assert_trees_equal(reference.opt_state, to_reference_state(state), "state")


def test_read_set_hyperparams_and_memory_report_through_the_flat_state():
    """With flat params: read_state finds the injected learning rate and the telemetry, a value
    set with set_hyperparams drives the next step as on the reference path, and memory_report
    gives the reference path's figures, per parameter and per buffer."""
    params = make_params()
    make = lambda: gradx.with_telemetry(gradx.inject_hyperparams(gradx.sgd)(  # noqa: E731
        learning_rate=0.1, momentum=0.9))
    tx, fast = make(), fused(make(), INPLACE)
    flat = flatten_params(params, INPLACE)
    states = {"reference": tx.init(params), "flat": fast.init(flat)}
    steps = {"reference": jax.jit(tx.update), "flat": jax.jit(fast.update)}
    grads = {"reference": make_grads(params, 0), "flat": flatten_params(make_grads(params, 0),
                                                                       INPLACE)}
    updates = {}
    for path in states:
        state = gradx.set_hyperparams(states[path], learning_rate=0.25)
        assert isinstance(state, gradx.fused.FusedState) == (path == "flat")
        updates[path], state = steps[path](grads[path], state, params if path == "reference" else flat)
        values = gradx.read_state(state)
        assert float(values["learning_rate"]) == 0.25
        states[path] = values
    assert_trees_equal(unflatten_params(updates["flat"]), updates["reference"], "updates")
    np.testing.assert_allclose(states["flat"]["grad_norm"], states["reference"]["grad_norm"],
                               rtol=2e-7)  # a sum over buckets: rounding only

    reference = gradx.memory_report(tx, params)
    for report in (gradx.memory_report(fast, params), gradx.memory_report(fast, flat)):
        assert report.params == reference.params
        assert report.buffers == reference.buffers
        assert report.total_bytes == reference.total_bytes


# --- Flax ---------------------------------------------------------------------------------------

class Linen(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm()(nn.relu(nn.Dense(8)(x)))
        return nn.Dense(2)(nn.relu(nn.Dense(8)(x)))


class NNX(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(self.norm(nnx.relu(self.hidden(x))))


def _batches(n=3):
    rng = np.random.default_rng(0)
    return [(jnp.asarray(rng.normal(size=(16, 4)), jnp.float32),
             jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)) for _ in range(n)]


def test_linen_train_state_with_flat_params():
    """Linen: TrainState holds flat params and ``fused(tx)``; ``apply_fn`` unflattens them. The
    losses and params equal the reference TrainState's step for step."""
    model = Linen()
    params = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    tx = clip_adamw()
    flat = flatten_params(params, INPLACE, tx=tx)
    states = {
        "reference": train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx),
        "flat": train_state.TrainState.create(
            apply_fn=lambda v, x: model.apply({"params": unflatten_params(v["params"])}, x),
            params=flat, tx=fused(tx, INPLACE))}

    @jax.jit
    def step(states, x, y):
        losses = {}
        for path, state in states.items():
            loss, grads = jax.value_and_grad(
                lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2))(state.params)
            states[path], losses[path] = state.apply_gradients(grads=grads), loss
        return states, losses

    for x, y in _batches():
        states, losses = step(states, x, y)
        np.testing.assert_allclose(losses["flat"], losses["reference"], rtol=2e-7)
    assert isinstance(states["flat"].opt_state, gradx.fused.FusedState)
    # the global norm sums over buckets; AdamW's division may round differently in a bucket's
    # fusion (tests/test_fused.py): params within 2 ulp of each leaf's scale, losses to 2e-7.
    assert_updates_close(unflatten_params(states["flat"].params), states["reference"].params, 2,
                         "params")


def test_nnx_train_step_with_flat_params():
    """NNX: split the model once, keep its params flat, merge inside the loss; the step equals
    nnx.Optimizer with the reference transformation, step for step."""
    tx = gradx.adamw(1e-2, weight_decay=0.1, mask=gradx.weight_decay_mask())
    graphdef, params, rest = nnx.split(NNX(nnx.Rngs(0)), nnx.Param, ...)
    fast = fused(tx, INPLACE)
    flat = flatten_params(params, INPLACE, tx=tx)
    state = fast.init(flat)

    @jax.jit
    def flat_step(flat, state, x, y):
        def loss(flat):
            model = nnx.merge(graphdef, unflatten_params(flat), rest)
            return jnp.mean((model(x) - y) ** 2)

        value, grads = jax.value_and_grad(loss)(flat)
        updates, state = fast.update(grads, state, flat)
        return gradx.apply_updates(flat, updates), state, value

    reference = NNX(nnx.Rngs(0))
    optimizer = nnx.Optimizer(reference, tx, wrt=nnx.Param)

    @nnx.jit
    def reference_step(model, optimizer, x, y):
        value, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return value

    for x, y in _batches():
        flat, state, value = flat_step(flat, state, x, y)
        np.testing.assert_allclose(value, reference_step(reference, optimizer, x, y), rtol=2e-7)
    # AdamW's division may round differently in the bucket's fusion (tests/test_fused.py)
    assert_updates_close(unflatten_params(flat), nnx.state(reference, nnx.Param), 2, "params")
