"""gradx.tree / gradx.tree_utils against optax 0.2.8 on odd trees (None leaves, empty
containers, 0-d and empty leaves, mixed dtypes), under jit; state search and map_params on the
states of gradx's optimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from support import assert_trees_close


X = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array([1.5, -1.0], jnp.bfloat16),
     "s": jnp.asarray(-0.75), "none": None, "empty": {}, "list": [jnp.zeros((0,))]}
Y = jax.tree.map(lambda leaf: 0.5 - leaf, X)
Z = {"z": jnp.array([1 + 2j, -3j], jnp.complex64)}
W = {"z": jnp.array([0.5 - 1j, 2 + 1j], jnp.complex64)}


def _array_ops(lib, x, y, z, w, key):
    """Every array-valued function of ``lib.tree`` on the odd real trees ``x``, ``y`` (a f32
    vector, a bf16 vector, a 0-d leaf, a None leaf, an empty dict, an empty leaf in a list) and,
    where it handles complex numbers, on ``z``, ``w``."""
    t = lib.tree
    ops = {
        "add": t.add(x, y, x), "sub": t.sub(x, y), "mul": t.mul(x, y),
        "div": t.div(x, t.add(t.mul(y, y), t.ones_like(y))), "scale": t.scale(2.0, x),
        "add_scale": t.add_scale(x, 0.5, y), "vdot": t.vdot(x, y), "sum": t.sum(x),
        "sum_assoc": t.sum(x, associative_reduction=True), "max": t.max(x), "min": t.min(x),
        "clip": t.clip(x, -0.5, 0.5), "clip_low": t.clip(x, min_value=0.0),
        "batch_shape": t.batch_shape(x, (2,)), "zeros_like": t.zeros_like(x),
        "zeros_like_f32": t.zeros_like(x, jnp.float32), "ones_like": t.ones_like(x),
        "full_like": t.full_like(x, 3.0), "full_like_i": t.full_like(x, 2, jnp.int32),
        "cast": t.cast(x, jnp.bfloat16), "cast_none": t.cast(x, None), "cast_like": t.cast_like(y, x),
        "where_t": t.where(True, x, y), "where_f": t.where(jnp.array(False), x, y),
        "update_moment": t.update_moment(x, y, 0.9, 2),
        "update_infinity_moment": t.update_infinity_moment(x, y, 0.9, 1e-3),
        "bias_correction": t.bias_correction(x, 0.9, 3),
        "split_key_like": lib.tree.unwrap_random_key_data(t.split_key_like(key, x)),
        "random_like": t.random_like(key, x),
        "uniform_like": t.random_like(key, x, jax.random.uniform, jnp.float32),
        "allclose": t.allclose(x, x), "not_allclose": t.allclose(x, y),
        "complex_vdot": t.vdot(z, w), "conj": t.conj(z), "real": t.real(z),
        "add_scale_complex": t.add_scale(z, 0.5j, w),
        "update_moment_per_elem_norm": t.update_moment_per_elem_norm(z, t.real(w), 0.9, 2),
        "update_moment_per_elem_norm_real": t.update_moment_per_elem_norm(x, y, 0.9, 1),
    }
    for ord_ in (None, 1, "inf"):
        for tree, label in ((x, ""), (z, "complex_")):
            ops[f"{label}norm_{ord_}"] = t.norm(tree, ord=ord_)
            ops[f"{label}norm_{ord_}_sq"] = t.norm(tree, ord=ord_, squared=True)
    return ops


def test_tree_functions_match_optax_under_jit():
    key = jax.random.key(3)
    # one compiled function for both libraries (XLA merges the identical computations)
    actual, expected = jax.jit(lambda *a: (_array_ops(gradx, *a), _array_ops(optax, *a)))(
        X, Y, Z, W, key)
    assert actual.keys() == expected.keys()
    for name in actual:
        got, want = actual[name], expected[name]
        assert jax.tree.structure(got) == jax.tree.structure(want), name
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype)
            np.testing.assert_allclose(np.asarray(g, np.complex128), np.asarray(w, np.complex128),
                                       rtol=1e-6, atol=0, err_msg=name)
    assert actual["add_scale"]["none"] is None and float(actual["max"]) == 3.0


def test_python_valued_functions_dtypes_and_edges():
    for lib in (gradx, optax):
        assert lib.tree.size(X) == 3 + 2 + 1 + 0
    assert gradx.tree.size({}) == optax.tree.size({}) == 0
    assert gradx.tree.max({}) == optax.tree.max({}) == -np.inf
    assert gradx.tree.min({"e": jnp.zeros(0)}) == np.inf
    assert gradx.tree.sum({}) == gradx.tree.vdot({}, {}) == 0
    assert float(gradx.tree.norm({})) == 0.0
    sq = gradx.tree.norm({}, squared=True)  # Optax: int32 0 (see tree_norm's docstring)
    assert float(sq) == 0.0 and sq.dtype == jnp.float32
    scalar = jnp.asarray(-2.0)  # a bare array is a tree too
    for ord_ in (2, jnp.inf, "infinity"):
        assert float(gradx.tree.norm(scalar, ord=ord_)) == float(optax.tree.norm(scalar, ord=ord_)) == 2.0
    same = {"a": jnp.zeros(2), "b": [jnp.ones(()), None]}
    mixed = {"a": jnp.zeros(1, jnp.bfloat16), "b": jnp.zeros(1), "i": jnp.int8(1)}
    for tree, handler in [(same, None), (X, "promote"), (X, "highest"), (X, "lowest"),
                          ({}, None), (mixed, "promote"), ({"i": jnp.int8(1), "f": jnp.float16(1)},
                                                           "highest")]:
        assert gradx.tree.dtype(tree, handler) == optax.tree.dtype(tree, handler), (tree, handler)
    with pytest.raises(ValueError, match="for b but got bfloat16"):
        gradx.tree.dtype({"a": jnp.zeros(1), "b": jnp.zeros(1, jnp.bfloat16)})
    mixed_16 = {"a": jnp.zeros(1, jnp.float16), "b": jnp.zeros(1, jnp.bfloat16)}
    for lib in (gradx, optax):  # neither of bfloat16 and float16 promotes to the other
        with pytest.raises(ValueError, match="Cannot compare"):
            lib.tree.dtype(mixed_16, "highest")
    with pytest.raises(ValueError, match="mixed_dtype_handler"):
        gradx.tree.dtype(same, "largest")
    with pytest.raises(ValueError, match="Unsupported ord"):
        gradx.tree.norm(same, ord=3)
    assert gradx.tree.unwrap_random_key_data({"k": jax.random.key(0), "a": 1})["a"] == 1
    with pytest.raises(ValueError, match="same shape"):
        gradx.tree.vdot({"a": jnp.ones(2)}, {"a": jnp.ones(3)})


def _noisy_adam(lib):
    return lib.chain(lib.add_noise(1.0, 0.9, key=0), lib.scale_by_adam())


def _paths(found):
    return [(jax.tree_util.keystr(p), gradx.tree.unwrap_random_key_data(v)) for p, v in found]


def test_get_set_and_paths_match_optax():
    params = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.zeros(())}
    states = {lib: _noisy_adam(lib).init(params) for lib in (gradx, optax)}
    for key in ("count", "mu", "AddNoiseState", "ScaleByAdamState", "nothing"):
        got = _paths(gradx.tree.get_all_with_path(states[gradx], key))
        want = _paths(optax.tree.get_all_with_path(states[optax], key))
        assert [p for p, _ in got] == [p for p, _ in want], key
        assert_trees_close([v for _, v in got], [v for _, v in want], what=key)
    in_adam = lambda path, _: isinstance(path[-1], gradx.tree_utils.NamedTupleKey) and \
        path[-1].tuple_name == "ScaleByAdamState"  # noqa: E731
    assert int(gradx.tree.get(states[gradx], "count", filtering=in_adam)) == 0
    assert gradx.tree.get(states[gradx], "missing", default=7) == 7
    with pytest.raises(KeyError, match="multiple values for 'count'"):
        gradx.tree.get(states[gradx], "count")
    new = {lib: lib.tree.set(lib.tree.set(states[lib], in_adam if lib is gradx else
                                          (lambda p, _: "ScaleByAdamState" in str(p)), count=5),
                             AddNoiseState=lib.EmptyState())
           for lib in (gradx, optax)}
    assert str(new[gradx]).replace("gradx", "optax") == str(new[optax])
    with pytest.raises(KeyError, match="no values matching 'nope'"):
        gradx.tree.set(states[gradx], nope=1)
    with pytest.raises(KeyError, match="given the filtering"):
        gradx.tree.set(states[gradx], lambda p, v: False, count=1)
    # dict keys, nested dicts and a state that is a plain dict
    tree = {"a": {"lr": 1.0, "b": {"lr": 2.0}}, "c": [jnp.ones(1)]}
    for lib in (gradx, optax):
        assert [jax.tree_util.keystr(p) for p, _ in lib.tree.get_all_with_path(tree, "lr")] == \
            ["['a']['lr']", "['a']['b']['lr']"]
    assert gradx.tree.set(tree, lr=0.0) == {"a": {"lr": 0.0, "b": {"lr": 0.0}}, "c": tree["c"]}
    assert str(gradx.tree_utils.NamedTupleKey("S", "mu")) == "S.mu"


OPTIMIZERS = [("sgd", (0.1, 0.9)), ("adam", (0.1,)), ("adamw", (0.1,)), ("lion", (0.1,)),
              ("adafactor", (0.1,)), ("sm3", (0.1,)), ("novograd", (0.1,)), ("rprop", (0.1,)),
              ("lars", (0.1,)), ("noisy_sgd", (0.1, 0.01, 0.55, 0)), ("adadelta", (0.1,)),
              ("optimistic_adam_v2", (0.1,)), ("signum", (0.1,)), ("amsgrad", (0.1,)),
              ("rmsprop", (0.1,)), ("adan", (0.1,)), ("polyak_sgd", ()), ("fromage", (0.1,))]


def _wrapped(lib, params):
    """Wrappers whose state mixes params-shaped and other subtrees."""
    mask = jax.tree.map(lambda p: p.ndim > 1, params)
    return {
        "adamw_mask": lib.adamw(0.1, mask=mask),
        "masked": lib.masked(lib.adam(0.1), mask),
        "inject": lib.inject_hyperparams(lib.adam)(learning_rate=0.1),
        "multi_steps": lib.MultiSteps(lib.adam(0.1), 2),
        "partition": lib.partition({"a": lib.adam(0.1), "s": lib.sgd(0.1)},
                                   {"w": "a", "b": "s", "n": {"k": "a"}}),
        "apply_if_finite": lib.apply_if_finite(lib.sgd(0.1, 0.9), 2),
    }


def test_map_params_finds_the_same_param_copies_as_optax():
    """Each param copy in the state becomes ``f(p, spec)``; every other leaf becomes -1. gradx's
    states have Optax's structure, so the results must be equal leaf for leaf."""
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2), "n": {"k": jnp.ones((2, 2, 2))}}
    specs = jax.tree.map(lambda p: jnp.full(p.shape, 7.0), params)

    def mark(p, spec):
        return p if isinstance(p, (gradx.MaskedNode, optax.MaskedNode)) else jnp.zeros_like(p) + spec

    txs = {lib: {**{name: getattr(lib, name)(*args) for name, args in OPTIMIZERS},
                 **_wrapped(lib, params)} for lib in (gradx, optax)}
    for name in txs[gradx]:
        results = {}
        for lib in (gradx, optax):
            tx = txs[lib][name]
            state = tx.init(params)
            same = lib.tree.map_params(tx, lambda p: p, state)
            assert jax.tree.structure(same) == jax.tree.structure(state), name
            if name == "sm3":  # its per-axis statistics are not shaped like the params
                with pytest.raises(ValueError, match="pytree structure"):
                    lib.tree.map_params(tx, mark, state, specs)
                results[lib] = lib.tree.map_params(tx, lambda p: p * 0 + 7, state,
                                                   transform_non_params=lambda _: -1)
                continue
            results[lib] = lib.tree.map_params(tx.init, mark, state, specs,
                                               transform_non_params=lambda _: -1,
                                               is_leaf=lambda v: isinstance(v, lib.MaskedNode))
        leaves = [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
            jnp.result_type(x), jax.dtypes.prng_key) else x) for x in jax.tree.leaves(results[gradx])]
        expected = [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
            jnp.result_type(x), jax.dtypes.prng_key) else x) for x in jax.tree.leaves(results[optax])]
        assert len(leaves) == len(expected), name
        for a, b in zip(leaves, expected):
            np.testing.assert_array_equal(a, b, err_msg=name)
        has_moments = name not in ("polyak_sgd", "fromage", "noisy_sgd")
        assert any(np.all(leaf == 7.0) for leaf in leaves) == has_moments, name


def test_map_params_docstring_example():
    params, specs = jnp.array(0.), jnp.array(0.)
    opt = gradx.sgd(1e-3)
    state = opt.init(params)
    opt_specs = gradx.tree_map_params(opt, lambda _, spec: spec, state, specs,
                                      transform_non_params=lambda _: None)
    assert opt_specs == (gradx.EmptyState(), gradx.EmptyState())
    assert gradx.tree_map_params is gradx.tree.map_params is gradx.tree_utils.tree_map_params
