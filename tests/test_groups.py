"""Groups by path on every container type, the weight-decay mask preset, and layer-wise LR decay
against PyTorch parameter groups."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from flax.core import FrozenDict

import gradx
from gradx.groups import (group_report, label_by_path, layer_ids, layer_lr_scales, leaf_path,
                          layerwise_lr_decay, weight_decay_mask)
from gradx.partition import partition
from support import assert_trees_close, compare, make_params

RULES = {"*/bias": "sgd", "scale": "sgd", "*": "adam"}
EXPLICIT = {"dense": {"kernel": "adam", "bias": "sgd"}, "scale": "sgd", "conv": "adam",
            "head": "adam"}


def transforms():
    return {"adam": optax.adam(1e-2), "sgd": optax.sgd(0.1, momentum=0.9)}


def by_path(tree):
    return {leaf_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_glob_rules_first_match_wins_and_drive_partition():
    labels = label_by_path(RULES)
    assert labels(make_params()) == EXPLICIT
    compare(partition(transforms(), labels), optax.partition(transforms(), EXPLICIT))


def test_regex_and_predicate_rules():
    labels = label_by_path([(re.compile(r"^dense/"), "dense"),
                            (lambda path, leaf: leaf.ndim == 4, "conv"),
                            ("head", "head")], default="other")
    assert labels(make_params()) == {"dense": {"kernel": "dense", "bias": "dense"},
                                     "scale": "other", "conv": "conv", "head": "head"}


def test_unmatched_leaves_raise_listing_their_paths():
    labels = label_by_path({"dense/*": "a"})
    with pytest.raises(ValueError, match=r"3 parameter\(s\) match no rule and no default label "
                                         r"was given: 'conv', 'head', 'scale'\."):
        labels(make_params())
    tx = partition(transforms(), labels)
    with pytest.raises(ValueError, match="match no rule"):
        tx.init(make_params())


def test_report_lists_each_leaf_and_group_totals():
    report = label_by_path(RULES).report(make_params())
    lines = report.splitlines()
    assert lines[0].split() == ["group", "path", "shape", "dtype", "size"]
    assert "adam   dense/kernel  (5, 3)        float32  15" in report
    assert "sgd    dense/bias    (3,)          float32  3" in report
    assert "adam: 3 leaves, 93 parameters" in report and "sgd: 2 leaves, 4 parameters" in report
    prefix = group_report(make_params(), {"dense": "a", "scale": "b", "conv": "a", "head": "b"})
    assert "a      dense/kernel" in prefix and "a: 3 leaves, 90 parameters" in prefix


@dataclasses.dataclass
class Custom:
    dense: dict
    scale: jax.Array
    conv: jax.Array
    head: jax.Array


jax.tree_util.register_dataclass(Custom, data_fields=["dense", "scale", "conv", "head"],
                                 meta_fields=[])


class Model(nnx.Module):
    def __init__(self, params):
        self.dense = nnx.Dict(kernel=nnx.Param(params["dense"]["kernel"]),
                              bias=nnx.Param(params["dense"]["bias"]))
        self.scale = nnx.Param(params["scale"])
        self.conv = nnx.Param(params["conv"])
        self.head = nnx.Param(params["head"])


def containers():
    p = make_params()
    return {"dict": p, "frozen_dict": FrozenDict(p), "custom": Custom(**p),
            "nnx_state": nnx.state(Model(p), nnx.Param)}


@pytest.mark.parametrize("kind", ["dict", "frozen_dict", "custom", "nnx_state"])
def test_groups_and_masks_work_on_every_container(kind):
    params = containers()[kind]
    reference = make_params()
    labels = label_by_path(RULES)
    assert by_path(labels(params)) == by_path(EXPLICIT)
    assert jax.tree.structure(labels(params)) == jax.tree.structure(
        jax.tree.map(lambda _: "x", params))
    tx = gradx.chain(partition(transforms(), labels),
                     gradx.add_decayed_weights(0.1, mask=weight_decay_mask()))
    oracle = optax.chain(optax.partition(transforms(), EXPLICIT),
                         optax.add_decayed_weights(0.1, mask={"dense": {"kernel": True, "bias": False},
                                                             "scale": False, "conv": True,
                                                             "head": True}))
    grads = jax.tree.map(lambda x: 0.5 * x + 1.0, params)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    expected, _ = oracle.update(jax.tree.map(lambda x: 0.5 * x + 1.0, reference),
                                oracle.init(reference), reference)
    assert type(updates) is type(params)
    ours, theirs = by_path(updates), by_path(expected)
    assert ours.keys() == theirs.keys()
    for path in ours:
        np.testing.assert_allclose(ours[path], theirs[path], rtol=2e-5, err_msg=path)
    assert "sgd    dense/bias" in labels.report(params)


def transformer(stacked=False):
    rng = np.random.default_rng(0)
    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)
    def block():
        return {"attn": {"kernel": normal(4, 4), "bias": normal(4)},
                "ln_1": {"scale": normal(4), "bias": normal(4)}}
    blocks = [block() for _ in range(3)]
    params = {"embed": {"embedding": normal(6, 4)}, "final_norm": {"scale": normal(4)},
              "head": {"kernel": normal(4, 2), "bias": normal(2)}}
    if stacked:
        params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    else:
        params.update({f"layers_{i}": b for i, b in enumerate(blocks)})
    return params


def test_weight_decay_mask_preset_by_path_and_shape():
    params = transformer()
    mask = by_path(weight_decay_mask()(params))
    decayed = sorted(path for path, decay in mask.items() if decay)
    assert decayed == ["embed/embedding", "head/kernel", "layers_0/attn/kernel",
                       "layers_1/attn/kernel", "layers_2/attn/kernel"]
    mask = by_path(weight_decay_mask(exclude_embeddings=True, no_decay=["head/*"])(params))
    assert sorted(p for p, d in mask.items() if d) == [f"layers_{i}/attn/kernel" for i in range(3)]
    # stacked layers: the leading layer axis is not a matrix dimension
    stacked = transformer(stacked=True)
    assert stacked["layers"]["ln_1"]["scale"].shape == (3, 4)
    mask = by_path(weight_decay_mask(stacked="layers/*")(stacked))
    assert sorted(p for p, d in mask.items() if d) == ["embed/embedding", "head/kernel",
                                                       "layers/attn/kernel"]
    odd = {"layers": {"w": jnp.ones((3, 4))}}  # a stacked vector not named like a bias
    assert not weight_decay_mask(stacked="layers/*")(odd)["layers"]["w"]
    assert weight_decay_mask()(odd)["layers"]["w"]


def test_weight_decay_mask_in_optax_and_gradx_adamw():
    params = transformer()
    mask = weight_decay_mask()
    explicit = jax.tree.map(bool, mask(params))
    compare(gradx.adamw(1e-2, weight_decay=0.1, mask=mask),
            optax.adamw(1e-2, weight_decay=0.1, mask=explicit), params=params, n_steps=3)
    compare(optax.adamw(1e-2, weight_decay=0.1, mask=mask),
            optax.adamw(1e-2, weight_decay=0.1, mask=explicit), params=params, n_steps=2)


def test_layer_ids_from_paths_and_stacked_layers():
    ids, top = layer_ids(transformer())
    assert top == 4
    ids = by_path(ids)
    assert ids["embed/embedding"] == 0 and ids["layers_0/attn/kernel"] == 1
    assert ids["layers_2/ln_1/scale"] == 3 and ids["head/kernel"] == 4 and ids["final_norm/scale"] == 4
    stacked_ids, stacked_top = layer_ids(transformer(stacked=True), stacked="layers/*")
    assert stacked_top == 4
    np.testing.assert_array_equal(by_path(stacked_ids)["layers/attn/kernel"], [1, 2, 3])
    scales = by_path(layer_lr_scales(transformer(stacked=True), 0.5, stacked="layers/*"))
    assert scales["layers/attn/kernel"].shape == (3, 1, 1)
    np.testing.assert_allclose(scales["layers/attn/kernel"].ravel(), [0.125, 0.25, 0.5])
    assert scales["embed/embedding"] == 0.0625 and scales["head/bias"] == 1.0
    with pytest.raises(ValueError, match=r"num_layers=2 is below the layer of layers_2/attn/bias"):
        layer_ids(transformer(), num_layers=2)
    with pytest.raises(ValueError, match=r"decay must be in \(0.0, 1.0\], got decay=1.5"):
        layerwise_lr_decay(1.5)


def test_stacked_layerwise_decay_equals_unstacked():
    flat_tx = gradx.chain(optax.adam(1e-2), layerwise_lr_decay(0.6))
    stacked_tx = gradx.chain(optax.adam(1e-2), layerwise_lr_decay(0.6, stacked="layers/*"))
    flat, stacked = transformer(), transformer(stacked=True)
    uf, _ = jax.jit(flat_tx.update)(flat, flat_tx.init(flat), flat)
    us, _ = jax.jit(stacked_tx.update)(stacked, stacked_tx.init(stacked), stacked)
    for i in range(3):
        assert_trees_close(jax.tree.map(lambda x: x[i], us["layers"]), uf[f"layers_{i}"], rtol=0)
    assert_trees_close(us["head"], uf["head"], rtol=0)


def test_layerwise_decay_with_decay_mask_equals_torch_param_groups():
    """AdamW + layer-wise LR decay 0.7 + no decay on biases/norms vs torch.optim.AdamW with one
    parameter group per (layer, decay) pair: lr = 1e-2 * 0.7 ** (4 - layer)."""
    params = transformer()
    base_lr, decay, wd = 1e-2, 0.7, 0.05
    tx = gradx.chain(gradx.adamw(base_lr, weight_decay=wd, mask=weight_decay_mask()),
                     layerwise_lr_decay(decay))
    ids, top = layer_ids(params)
    ids, masks = by_path(ids), by_path(weight_decay_mask()(params))
    tensors = {p: torch.tensor(np.asarray(x), requires_grad=True) for p, x in by_path(params).items()}
    groups = {}
    for path, t in tensors.items():
        groups.setdefault((ids[path], masks[path]), []).append(t)
    torch_opt = torch.optim.AdamW(
        [{"params": ts, "lr": base_lr * decay ** (top - layer), "weight_decay": wd if m else 0.0}
         for (layer, m), ts in groups.items()], lr=base_lr, betas=(0.9, 0.999), eps=1e-8)
    state, update = tx.init(params), jax.jit(tx.update)
    for step in range(5):
        grads = jax.tree.map(lambda x: jnp.sin(x * (step + 1)) + 0.1 * x, params)
        updates, state = update(grads, state, params)
        params = gradx.apply_updates(params, updates)
        for path, g in by_path(grads).items():
            tensors[path].grad = torch.tensor(np.asarray(g))
        torch_opt.step()
        for path, x in by_path(params).items():
            np.testing.assert_allclose(x, tensors[path].detach().numpy(), rtol=2e-5, atol=1e-7,
                                       err_msg=f"{path} at step {step}")
