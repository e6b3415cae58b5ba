"""gradx inside Flax: real jitted training loops with ``flax.nnx.Optimizer`` and Linen's
``TrainState``, gradx against optax step by step (losses and final params, rtol 2e-5),
including masks and labels given as functions of ``nnx.State`` / ``FrozenDict`` params and the
``value=`` extra argument through ``nnx.Optimizer.update``."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import FrozenDict, freeze
from flax.training import train_state

import gradx
from support import RTOL, ATOL, assert_trees_close
from test_optimizers import SAME_AS_OPTAX

STEPS, BATCH, D_IN, HIDDEN, D_OUT = 20, 32, 8, 16, 4


def _batches():
    """A fixed teacher network plus noise: a regression task the MLP can learn."""
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(D_IN, D_OUT))
    xs = rng.normal(size=(STEPS, BATCH, D_IN))
    ys = np.tanh(xs @ teacher) + 0.1 * rng.normal(size=(STEPS, BATCH, D_OUT))
    return [(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)) for x, y in zip(xs, ys)]


BATCHES = _batches()


def mse(pred, y):
    return jnp.mean((pred - y) ** 2)


# --- Flax NNX -----------------------------------------------------------------------------------

class MLP(nnx.Module):
    def __init__(self, rngs):
        self.layers_0 = nnx.Linear(D_IN, HIDDEN, rngs=rngs)
        self.norm = nnx.LayerNorm(HIDDEN, rngs=rngs)
        self.head = nnx.Linear(HIDDEN, D_OUT, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.norm(self.layers_0(x))))


@nnx.jit
def nnx_step(models, optimizers, x, y):
    """One training step of several (model, optimizer) pairs at once: one compilation for
    many optimizers keeps the test fast."""
    losses = []
    for model, optimizer in zip(models, optimizers):
        loss, grads = nnx.value_and_grad(lambda m: mse(m(x), y))(model)
        optimizer.update(model, grads)
        losses.append(loss)
    return jnp.stack(losses)


@nnx.jit
def nnx_step_with_value(models, optimizers, x, y):
    losses = []
    for model, optimizer in zip(models, optimizers):
        loss, grads = nnx.value_and_grad(lambda m: mse(m(x), y))(model)
        optimizer.update(model, grads, value=loss)
        losses.append(loss)
    return jnp.stack(losses)


def nnx_run(txs, with_value=False):
    """A 20-step jitted nnx.Optimizer training loop for each transformation (same init, same
    batches): a list of (losses, final params)."""
    models = [MLP(nnx.Rngs(0)) for _ in txs]
    optimizers = [nnx.Optimizer(model, tx, wrt=nnx.Param) for model, tx in zip(models, txs)]
    step = nnx_step_with_value if with_value else nnx_step
    losses = np.stack([np.asarray(step(models, optimizers, x, y)) for x, y in BATCHES], axis=1)
    assert all(int(optimizer.step[...]) == STEPS for optimizer in optimizers)
    return [(loss, nnx.state(model, nnx.Param)) for loss, model in zip(losses, models)]


def assert_same_training(names, ours, theirs):
    """Per name: finite losses equal step by step, and equal final params (rtol 2e-5)."""
    failures = []
    for name, (our_losses, our_params), (their_losses, their_params) in zip(names, ours, theirs):
        try:
            assert np.all(np.isfinite(our_losses))
            np.testing.assert_allclose(our_losses, their_losses, rtol=RTOL, atol=ATOL)
            assert_trees_close(our_params, their_params, what="final params")
        except AssertionError as error:
            failures.append(f"{name}: {error}")
    assert not failures, "\n".join(failures)


def _build(lib, name):
    args, kwargs = SAME_AS_OPTAX[name]
    if "key" in kwargs:
        kwargs = dict(kwargs, key=jax.random.key(kwargs["key"]))
    return getattr(lib, name if hasattr(lib, name) else name.split("_")[0])(*args, **kwargs)


def _one_per_state_layout(names):
    """The first of ``names`` for each layout of gradx state (tree structure: classes, fields,
    containers) on the MLP's params: what nnx.Optimizer holds and splits into variables.
    test_optimizers checks every name's numbers against optax; here each layout runs once."""
    params = nnx.state(MLP(nnx.Rngs(0)), nnx.Param)
    layouts = {}
    for name in names:
        layouts.setdefault(str(jax.tree.structure(jax.eval_shape(_build(gradx, name).init,
                                                                 params))), name)
    return sorted(layouts.values())


NAMED = _one_per_state_layout(sorted(SAME_AS_OPTAX))


@pytest.mark.parametrize("half", [0, 1])
def test_every_state_layout_of_the_named_optimizers_in_nnx_optimizer(half):
    """One optimizer per state layout among those test_optimizers checks against optax, in
    nnx.Optimizer, trained as optax's in nnx.Optimizer (in two halves, one compilation each per
    library)."""
    names = NAMED[half::2]
    assert_same_training(names, nnx_run([_build(gradx, n) for n in names]),
                         nnx_run([_build(optax, n) for n in names]))


def test_fast_path_in_nnx_optimizer():
    """``gradx.fused`` in nnx.Optimizer (params held in nnx.Param variables, gradients as plain
    arrays): the same training as the reference path and as optax."""
    names = ["adamw", "lion", "sgd_nesterov"]
    fast = [gradx.fused.fused(_build(gradx, n), inplace_min_size=64) for n in names]
    ours = nnx_run(fast)
    assert_same_training(names, ours, nnx_run([_build(optax, n) for n in names]))
    model = MLP(nnx.Rngs(0))
    state = nnx.Optimizer(model, fast[0], wrt=nnx.Param).opt_state
    assert "FusedState" in repr(jax.tree.structure(state))  # the fast path was taken


def matrices(params):
    """A mask function of the params: True on leaves with 2 or more axes."""
    return jax.tree.map(lambda x: x.ndim > 1, params)


def by_rank(params):
    """A label function of the params: 'adam' for matrices, 'sgd' for vectors."""
    return jax.tree.map(lambda x: "adam" if x.ndim > 1 else "sgd", params)


PATH_LABELS = gradx.label_by_path({"layers_0/*": "adam", "norm/*": "frozen"}, default="sgd")


def wrapped(lib):
    """Wrappers, masks and labels (functions of the params), built the same way in both."""
    schedule = lib.warmup_cosine_decay_schedule(0.0, 1e-2, 5, STEPS, end_value=1e-3)
    return {
        "adamw_mask_fn": lib.adamw(1e-2, weight_decay=0.1, mask=matrices),
        "adamw_weight_decay_mask": lib.adamw(1e-2, weight_decay=0.1,
                                             mask=gradx.weight_decay_mask()),
        "masked_fn": lib.chain(lib.masked(lib.scale_by_adam(), matrices), lib.scale(-1e-2)),
        "partition_fn": lib.partition({"adam": lib.adam(1e-2), "sgd": lib.sgd(1e-2, 0.9)},
                                      by_rank),
        "partition_label_by_path": lib.partition(
            {"adam": lib.adam(1e-2), "sgd": lib.sgd(1e-2, 0.9), "frozen": lib.set_to_zero()},
            PATH_LABELS),
        "freeze_fn": lib.chain(lib.freeze(matrices), lib.sgd(1e-1)),
        "clip_schedule_chain": lib.chain(lib.clip_by_global_norm(1.0),
                                         lib.adamw(schedule, b2=0.95, weight_decay=0.1)),
        "multi_steps": lib.MultiSteps(lib.adam(1e-2), every_k_schedule=3),
        "inject_hyperparams": lib.inject_hyperparams(lib.adamw)(learning_rate=schedule,
                                                               weight_decay=0.1),
        "apply_if_finite": lib.apply_if_finite(lib.lion(1e-3), max_consecutive_errors=2),
        "flatten": lib.flatten(lib.adam(1e-2)),
        "named_chain": lib.named_chain(("clip", lib.clip(0.1)), ("adam", lib.adam(1e-2))),
    }


def gradx_only():
    """gradx's own wrappers, each with an optax construction that computes the same thing on
    this model (finite gradients, no block but ``layers_0``)."""
    ours = {
        "with_telemetry": gradx.with_telemetry(gradx.adam(1e-2)),
        "skip_bad_steps": gradx.skip_bad_steps(gradx.adam(1e-2), max_grad_norm=1e3),
        "accumulate_gradients": gradx.accumulate_gradients(gradx.adam(1e-2), 3),
        # layers_0 is block 0 (layer 1) of 2: its updates are scaled by 0.5 ** (2 - 1).
        "layerwise_lr_decay": gradx.chain(gradx.adamw(1e-2, weight_decay=0.1),
                                          gradx.layerwise_lr_decay(0.5)),
    }
    block = gradx.label_by_path({"layers_0/*": "block"}, default="top")
    theirs = {
        "with_telemetry": optax.adam(1e-2),
        "skip_bad_steps": optax.adam(1e-2),
        "accumulate_gradients": optax.MultiSteps(optax.adam(1e-2), 3),
        "layerwise_lr_decay": optax.partition(
            {"block": optax.adamw(0.5e-2, weight_decay=0.1),
             "top": optax.adamw(1e-2, weight_decay=0.1)}, block),
    }
    return ours, theirs


GX, OX = wrapped(gradx), wrapped(optax)
GX_ONLY, OX_SAME = gradx_only()


def test_wrappers_masks_and_labels_in_nnx_optimizer():
    names = sorted(GX)
    assert_same_training(names, nnx_run([GX[n] for n in names]),
                         nnx_run([OX[n] for n in names]))


def test_gradx_only_wrappers_in_nnx_optimizer():
    names = sorted(GX_ONLY)
    assert_same_training(names, nnx_run([GX_ONLY[n] for n in names]),
                         nnx_run([OX_SAME[n] for n in names]))


def test_label_and_mask_functions_see_nnx_state():
    """On nnx.State params the path labels and the weight-decay mask read plain paths (no
    ``.value``), with the State's structure, so the groups above are what they claim."""
    params = nnx.state(MLP(nnx.Rngs(0)), nnx.Param)
    labels = {gradx.leaf_path(p): label
              for p, label in jax.tree_util.tree_flatten_with_path(PATH_LABELS(params))[0]}
    assert labels == {"layers_0/bias": "adam", "layers_0/kernel": "adam", "norm/bias": "frozen",
                      "norm/scale": "frozen", "head/bias": "sgd", "head/kernel": "sgd"}
    decay = {path: flag for path, flag in zip(labels, jax.tree.leaves(
        gradx.weight_decay_mask()(params)))}
    assert decay == {"head/bias": False, "head/kernel": True, "layers_0/bias": False,
                     "layers_0/kernel": True, "norm/bias": False, "norm/scale": False}
    assert jax.tree.structure(PATH_LABELS(params)) == jax.tree.structure(params)
    # nnx.Optimizer.update passes the pure State (arrays, no Variables): same labels.
    pure = nnx.as_pure(params)
    assert jax.tree.leaves(PATH_LABELS(pure)) == jax.tree.leaves(PATH_LABELS(params))
    assert jax.tree.leaves(gradx.weight_decay_mask()(pure)) == list(decay.values())


def test_frozen_group_does_not_move_and_keeps_no_state():
    model = MLP(nnx.Rngs(0))
    before = nnx.state(model.norm, nnx.Param)
    optimizer = nnx.Optimizer(model, GX["partition_label_by_path"], wrt=nnx.Param)
    for x, y in BATCHES[:3]:
        nnx_step([model], [optimizer], x, y)
    assert_trees_close(nnx.state(model.norm, nnx.Param), before, rtol=0, atol=0)
    assert not jax.tree.leaves(optimizer.opt_state.inner_states["frozen"])
    assert jax.tree.leaves(optimizer.opt_state.inner_states["adam"])


def test_value_extra_argument_through_nnx_optimizer_update():
    """``optimizer.update(model, grads, value=loss)`` reaches the transformation: Polyak's step
    size uses it, and the plateau scale (patience 1, factor 0.5) is cut when the loss stalls."""
    names = ["polyak_sgd", "reduce_on_plateau"]
    ours = [gradx.polyak_sgd(max_learning_rate=0.5),
            gradx.chain(gradx.sgd(0.5), gradx.reduce_on_plateau(patience=1, factor=0.5))]
    theirs = [optax.polyak_sgd(max_learning_rate=0.5),
              optax.chain(optax.sgd(0.5), optax.contrib.reduce_on_plateau(patience=1,
                                                                          factor=0.5))]
    assert_same_training(names, nnx_run(ours, with_value=True), nnx_run(theirs, with_value=True))
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, ours[1], wrt=nnx.Param)
    for x, y in BATCHES:
        nnx_step_with_value([model], [optimizer], x, y)
    assert float(optimizer.opt_state[1].scale[...]) < 1.0


# --- Linen TrainState -------------------------------------------------------------------------

class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.LayerNorm(name="norm")(nn.Dense(HIDDEN, name="layers_0")(x)))
        return nn.Dense(D_OUT, name="head")(x)


LINEN = LinenMLP()


@jax.jit
def linen_step(states, x, y):
    """One ``apply_gradients`` step of several TrainStates (one compilation for all)."""
    new_states, losses = [], []
    for state in states:
        loss, grads = jax.value_and_grad(
            lambda p: mse(state.apply_fn({"params": p}, x), y))(state.params)
        new_states.append(state.apply_gradients(grads=grads))
        losses.append(loss)
    return new_states, jnp.stack(losses)


def linen_run(txs):
    """A 20-step jitted TrainState loop on FrozenDict params for each transformation: a list
    of (losses, final params)."""
    params = freeze(LINEN.init(jax.random.key(0), BATCHES[0][0])["params"])
    states = [train_state.TrainState.create(apply_fn=LINEN.apply, params=params, tx=tx)
              for tx in txs]
    losses = []
    for x, y in BATCHES:
        states, loss = linen_step(states, x, y)
        losses.append(np.asarray(loss))
    assert all(isinstance(s.params, FrozenDict) and int(s.step) == STEPS for s in states)
    return [(loss, state.params) for loss, state in zip(np.stack(losses, axis=1), states)]


LINEN_NAMES = ["adafactor", "lamb", "sgd_nesterov"]
LINEN_WRAPPERS = ["adamw_mask_fn", "adamw_weight_decay_mask", "masked_fn", "partition_fn",
                  "partition_label_by_path", "freeze_fn", "multi_steps", "inject_hyperparams"]


def test_optimizers_wrappers_masks_and_labels_in_linen_train_state():
    ours = [_build(gradx, n) for n in LINEN_NAMES] + [GX[n] for n in LINEN_WRAPPERS]
    theirs = [_build(optax, n) for n in LINEN_NAMES] + [OX[n] for n in LINEN_WRAPPERS]
    assert_same_training(LINEN_NAMES + LINEN_WRAPPERS, linen_run(ours), linen_run(theirs))


def test_label_functions_see_frozen_dict():
    params = freeze(LINEN.init(jax.random.key(0), BATCHES[0][0])["params"])
    labels = PATH_LABELS(params)
    assert isinstance(labels, FrozenDict)
    assert dict(labels["norm"]) == {"bias": "frozen", "scale": "frozen"}
    assert labels["layers_0"]["kernel"] == "adam" and labels["head"]["bias"] == "sgd"
    assert jax.tree.leaves(gradx.weight_decay_mask()(params)) == jax.tree.leaves(matrices(params))
