"""partition / multi_transform, freeze, selective_transform against optax 0.2.8, and frozen
parameters costing no state and no compute."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from gradx.partition import (MultiTransformState, PartitionState, freeze, multi_transform,
                             partition, selective_transform)
from support import compare, make_params

LABELS = {"dense": {"kernel": "adam", "bias": "sgd"}, "scale": "sgd", "conv": "adam",
          "head": "adam"}


def transforms(lib):
    """The same inner optimizers on both sides: the tests exercise the combinator."""
    del lib
    return {"adam": optax.adam(1e-2), "sgd": optax.sgd(0.1, momentum=0.9)}


def test_partition_matches_optax_with_label_tree():
    ours = partition(transforms(gradx), LABELS)
    theirs = optax.partition(transforms(optax), LABELS)
    _, state = compare(ours, theirs)
    assert isinstance(state, PartitionState) and list(state.inner_states) == ["adam", "sgd"]
    assert isinstance(state.inner_states["adam"], gradx.MaskedState)


def test_partition_label_function_and_prefix_tree_match_optax():
    def label_fn(params):
        return jax.tree.map(lambda p: "adam" if p.ndim >= 2 else "sgd", params)

    compare(partition(transforms(gradx), label_fn), optax.partition(transforms(optax), label_fn))
    prefix = {"dense": "sgd", "scale": "sgd", "conv": "adam", "head": "adam"}
    compare(multi_transform(transforms(gradx), prefix),
            optax.multi_transform(transforms(optax), prefix))
    assert MultiTransformState is PartitionState


def test_partition_forwards_masked_extra_args():
    def add_extra(lib):  # adds the extra argument `shift`, shaped like the updates
        def update(updates, state, params=None, *, shift, **_):
            return jax.tree.map(jnp.add, updates, shift), state
        return lib.GradientTransformationExtraArgs(lambda p: lib.EmptyState(), update)

    labels = {"a": "add", "b": "keep"}
    grads = {"a": jnp.ones(2), "b": jnp.ones(3)}
    shift = {"a": jnp.full(2, 5.0), "b": jnp.full(3, 7.0)}
    for lib in (gradx, optax):
        tx = (partition if lib is gradx else optax.partition)(
            {"add": add_extra(lib), "keep": optax.identity()}, labels, mask_compatible_extra_args=True)
        u, _ = jax.jit(tx.update)(grads, tx.init(grads), None, shift=shift)
        np.testing.assert_array_equal(u["a"], np.full(2, 6.0))
        np.testing.assert_array_equal(u["b"], np.ones(3))


def test_partition_unknown_label_names_the_paths():
    labels = dict(LABELS, scale="lion")
    tx = partition(transforms(gradx), labels)
    with pytest.raises(ValueError, match=r"no corresponding transformation: 'scale' -> 'lion'"):
        tx.init(make_params())
    good = partition(transforms(gradx), LABELS)
    state = good.init(make_params())
    with pytest.raises(ValueError, match=r"'scale' -> 'lion'"):
        tx.update(make_params(), state)


def test_freeze_and_selective_transform_match_optax():
    mask = {"dense": {"kernel": False, "bias": True}, "scale": True, "conv": False, "head": False}
    compare(freeze(mask), optax.freeze(mask))
    compare(selective_transform(optax.adam(1e-2), freeze_mask=mask),
            optax.selective_transform(optax.adam(1e-2), freeze_mask=mask))
    compare(freeze(True), optax.freeze(True))


def _state_bytes(state):
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))


def test_frozen_parameters_hold_no_state_and_compute_nothing():
    params = make_params()
    mask = {"dense": {"kernel": False, "bias": True}, "scale": True, "conv": True, "head": False}
    trainable = {"dense": {"kernel": params["dense"]["kernel"]}, "head": params["head"]}
    tx = selective_transform(optax.adam(1e-2), freeze_mask=mask)
    state = tx.init(params)
    # exactly Adam's state on the trainable leaves: mu, nu for kernel and head, and the count
    assert _state_bytes(state) == _state_bytes(optax.adam(1e-2).init(trainable))
    assert _state_bytes(state) == 2 * 4 * (15 + 6) + 4
    assert _state_bytes(state) < _state_bytes(optax.adam(1e-2).init(params))
    # Adam takes one sqrt per leaf it updates: only the two trainable leaves are computed
    jaxpr = jax.make_jaxpr(tx.update)(params, state, params)
    assert str(jaxpr).count("sqrt") == 2
    updates, _ = jax.jit(tx.update)(params, state, params)
    for frozen in (updates["dense"]["bias"], updates["scale"], updates["conv"]):
        assert float(jnp.abs(frozen).max()) == 0.0
