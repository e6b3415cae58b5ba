"""The smaller Optax modules against optax 0.2.8: numerics (safe norms, scale_gradient), nnls,
perturbations and multi_normal, second_order, assignment, microbatching,
experimental.aggregating and the deprecated optimistic_adam."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import gradx
from support import assert_trees_close, make_params, run

X = jnp.array([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0]])


def _numerics(lib):
    """Values and gradients of the safe norms and of scale_gradient."""
    def norm(x, ord_, axis, keepdims=False):
        return lib.safe_norm(x, 0.5, ord=ord_, axis=axis, keepdims=keepdims)

    out = {}
    for ord_, axis in [(None, None), (None, 1), (2, 1), (1, 1), (jnp.inf, 0), ("fro", (0, 1)),
                       (None, (0, 1)), (2, None), ("nuc", None)]:
        x = X[0] if (ord_ == 2 and axis is None) else X
        out[f"{ord_}_{axis}"] = jax.value_and_grad(lambda x: jnp.sum(norm(x, ord_, axis)))(x)  # noqa: B023
    out["keepdims"] = norm(X, None, 1, keepdims=True)
    out["rms"] = jax.vmap(jax.value_and_grad(lambda x: lib.safe_root_mean_squares(x, 0.5)))(X)
    out["scale_gradient"] = [jax.grad(lambda x: jnp.sum(lib.scale_gradient({"a": x}, s)["a"] ** 2))(
        X[0]) for s in (0.5, 1.0, 0.0)]
    out["nnls"] = [lib.nnls(jnp.array([[1., 2.], [3., 4.], [0.5, -1.]]), b, 200)
                   for b in (jnp.array([5., 6., 1.]), jnp.array([[5., -1.], [6., 0.], [1., 2.]]))]
    return out


def test_numerics_and_nnls_match_optax_under_jit():
    actual, expected = jax.jit(lambda: (_numerics(gradx), _numerics(optax)))()
    assert_trees_close(actual, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(actual["None_1"][1][1], 0.0)  # the zero row: floored, gradient 0
    assert float(actual["None_None"][0]) == 5.0


def test_perturbations_and_multi_normal_match_optax():
    key = jax.random.key(0)
    f = lambda x: {"relu": jnp.sum(jnp.maximum(x["a"], 0.0)), "max": jnp.max(x["a"])}  # noqa: E731
    x = {"a": jnp.array([0.0, 0.3, -0.2])}

    def run_lib(lib):
        out = {}
        for noise, baseline in ((lib.perturbations.Gumbel(), True),
                                (lib.perturbations.Normal(), False)):
            fn = lib.perturbations.make_perturbed_fun(f, 64, 0.5, noise, baseline)
            out[type(noise).__name__] = (fn(key, x), jax.jacobian(fn, argnums=1)(key, x))
        dist = lib.multi_normal(jnp.array([0.5, -1.0]), jnp.array([[0.1, -0.2]]))
        out["multi_normal"] = (dist.sample((3,), key), dist.log_prob(jnp.ones(2)), dist.params,
                               dist.log_scale)
        return out

    actual, expected = jax.jit(lambda: (run_lib(gradx), run_lib(optax)))()
    assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6)


def _loss(params, inputs, targets):
    return jnp.sum((jnp.tanh(inputs @ params["w"]) + params["b"] - targets) ** 2)


def test_second_order_matches_optax_and_warns():
    params = {"w": jnp.array([[0.3, -0.2], [0.1, 0.4]]), "b": jnp.array([0.5, -0.1])}
    inputs, targets = jnp.array([[1.0, 2.0], [-1.0, 0.5]]), jnp.array([[0.0, 1.0], [1.0, 0.0]])

    def run_lib(lib):
        so = lib.second_order
        return (so.hvp(_loss, jnp.arange(6.0), params, inputs, targets),
                so.hessian_diag(_loss, params, inputs, targets),
                so.fisher_diag(_loss, params, inputs, targets),
                jnp.diag(jax.hessian(lambda b: _loss({**params, "b": b}, inputs, targets))(
                    params["b"])))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jax.make_jaxpr(lambda: run_lib(gradx))()  # tracing runs each function once
    messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert messages == [f"The function {name} is deprecated. This function will be/was removed "
                        "in optax 0.2.9." for name in ("hvp", "hessian_diag", "fisher_diag")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        actual, expected = jax.jit(lambda: (run_lib(gradx), run_lib(optax)))()
    assert_trees_close(actual, expected, rtol=1e-5)
    np.testing.assert_allclose(actual[1][:2], actual[3], rtol=1e-5)  # b comes first when raveled


def test_assignment_matches_optax_and_scipy():
    """Optax's Scenic-style ``hungarian_algorithm`` runs alongside; ``base_hungarian_algorithm``
    is checked against scipy's optimum, its order and Optax's documented outputs."""
    rng = np.random.default_rng(0)
    costs = [jnp.asarray(rng.normal(size=(4, 4)), jnp.float32),
             jnp.array([[8, 4, 7], [5, 2, 3], [9, 6, 7], [9, 4, 8]]),  # Optax's examples
             jnp.array([[90, 80, 75, 70], [35, 85, 55, 65], [125, 95, 90, 95],
                        [45, 110, 95, 115], [50, 100, 90, 100]])]
    solve = jax.jit(lambda c: (gradx.assignment.base_hungarian_algorithm(c),
                               gradx.assignment.hungarian_algorithm(c),
                               optax.assignment.hungarian_algorithm(c)))
    results = [solve(cost) for cost in costs]
    for cost, (base, scenic, expected) in zip(costs, results):
        np.testing.assert_array_equal(scenic, expected, err_msg=str(cost.shape))
        rows, cols = scipy.optimize.linear_sum_assignment(np.asarray(cost))
        for i, j in (base, scenic):
            np.testing.assert_allclose(cost[i, j].sum(), np.asarray(cost)[rows, cols].sum(),
                                       rtol=1e-6)
        assert np.all(np.diff(base[0]) > 0)  # rows increasing
    np.testing.assert_array_equal(results[1][0], ([0, 1, 3], [0, 2, 1]))
    np.testing.assert_array_equal(results[2][0], ([0, 1, 2, 3], [3, 2, 1, 0]))
    for name in ("base_hungarian_algorithm", "hungarian_algorithm"):
        for empty in (jnp.zeros((0, 3)), jnp.zeros((2, 0))):
            assert [a.shape for a in getattr(gradx.assignment, name)(empty)] == [(0,), (0,)]


def _microbatched(lib):
    mb = lib.microbatching
    acc = mb.AccumulationType
    x = jnp.arange(12.0).reshape(6, 2)
    w = jnp.array([1.0, -2.0])
    fun = lambda x, w, *, scale: {"sum": x @ w * scale, "mean": jnp.mean(x) * scale,  # noqa: E731
                                  "running": jnp.sum(x), "cat": x}
    spec = {"sum": acc.SUM, "mean": acc.MEAN, "running": acc.RUNNING_MEAN, "cat": acc.CONCAT}
    out = {
        "microbatch": lib.microbatch(fun, 0, 2, spec, argnames="scale", in_axes=(0, 0))(
            x, w, scale=jnp.arange(6.0)),
        "early_stop": lib.microbatch(fun, 0, 3, spec, argnames=(),
                                     num_real_microbatches=1)(x, w, scale=2.0),
        "axis1": lib.microbatch(lambda y: jnp.sum(y, axis=1), 0, 3, acc.CONCAT, in_axes=1)(x.T),
        "custom": lib.microbatch(lambda y: jnp.max(y), 0, 2, mb.Accumulator(
            jnp.zeros_like, lambda c, v, i: jnp.maximum(c, v), lambda c: c, jnp.max))(x),
        "reshape": mb.reshape_batch_axis({"a": x}, 2, 0),
        "vmap": mb.micro_vmap(lambda a, b: a * b, in_axes=(0, None), microbatch_size=2)(x, w),
        "vmap_sum": mb.micro_vmap(lambda a: a ** 2, accumulator=acc.SUM, microbatch_size=3)(x),
        "vmap_plain": mb.micro_vmap(lambda a: a + 1)(x),
    }
    loss = lambda p, xs, ys: 0.5 * jnp.mean((xs @ p - ys) ** 2)  # noqa: E731
    ys = jnp.array([0.0, 2.0, 4.0, 6.0, 1.0, -1.0])
    for keep in (True, False):
        out[f"micro_grad_{keep}"] = mb.micro_grad(
            loss, argnums=0, batch_argnums=(1, 2), keep_batch_dim=keep, microbatch_size=3,
            accumulator=acc.MEAN, transform_fn=lambda g: (g, g ** 2),
            metrics_fn=jnp.linalg.norm)(w, x, ys)
    out["micro_grad_aux"] = mb.micro_grad(lambda p, xs: (jnp.sum(xs @ p), {"n": xs.shape[0]}),
                                          has_aux=True, batch_argnums=1)(w, x)
    return out


def test_microbatching_matches_optax_under_jit():
    actual, expected = jax.jit(lambda: (_microbatched(gradx), _microbatched(optax)))()
    assert_trees_close(jax.tree.leaves(actual), jax.tree.leaves(expected), rtol=1e-6)
    assert str(jax.tree.structure(actual)) == str(jax.tree.structure(expected))
    # against the unbatched function
    x = jnp.arange(12.0).reshape(6, 2)
    np.testing.assert_allclose(actual["microbatch"]["cat"], x)
    np.testing.assert_allclose(actual["vmap"], x * jnp.array([1.0, -2.0]))
    np.testing.assert_allclose(actual["early_stop"]["running"], jnp.sum(x[0::2]))  # rows 0, 2, 4
    assert gradx.microbatch is gradx.microbatching.microbatch


def test_microbatching_bad_inputs():
    mb = gradx.microbatching
    fun = lambda a, b: a + b  # noqa: E731
    with pytest.raises(ValueError, match="equal-size batch axes"):
        gradx.microbatch(fun, (0, 1), 2)(jnp.ones(4), jnp.ones(6))
    with pytest.raises(ValueError, match="divisible"):
        gradx.microbatch(fun, (0, 1), 4)(jnp.ones(6), jnp.ones(6))
    with pytest.raises(ValueError, match="floating-point"):
        gradx.microbatch(lambda a: a, 0, 2, mb.AccumulationType.MEAN)(jnp.arange(4))
    with pytest.raises(ValueError, match="Unknown accumulator"):
        gradx.microbatch(lambda a: a, 0, 2, "sum")(jnp.ones(4))
    with pytest.raises(NotImplementedError):
        mb.micro_vmap(lambda a: a, out_axes=1)
    assert gradx.microbatch(fun, 0, None) is fun


def _aggregated(lib):
    agg = lib.experimental.aggregating
    key = jax.random.key(0)
    xs = jax.random.normal(key, (2, 4, 2))
    ys = jax.random.normal(jax.random.key(1), (2, 4, 2))
    params = jnp.array([[0.5, -1.0], [1.5, 0.2]])
    fun = lambda w, x, y: jnp.sum((x @ w - y) ** 2)  # noqa: E731
    grads_of = jax.vmap(jax.grad(fun), (None, 0, 0))
    clip = jax.vmap(lib.projections.projection_l2_ball, 0)
    opts = {
        "process": agg.process(lib.stateless(lambda gs, _: clip(gs)),
                               agg.average_per_element_updates(), lib.adam(0.1)),
        "incremental": agg.process(lib.identity(), agg.average_incrementally_updates(0, 2),
                                   lib.sgd(0.1)),
        "accumulate": agg.process(lib.identity(), agg.average_incrementally_updates(None, 2),
                                  lib.sgd(0.1)),
        "mean_variance": agg.add_mean_variance_to_opt(lib.adam(0.01), 0.8, 0, 1),
        "mean_variance_acc": agg.add_mean_variance_to_opt(lib.sgd(0.1), 0.9, 0, 2),
    }
    out = {}
    for name, opt in opts.items():
        w, state, history = params, opt.init(params), []
        for x, y in zip(xs, ys):
            grads = jnp.mean(grads_of(w, x, y), 0) if name == "accumulate" else grads_of(w, x, y)
            updates, state = opt.update(grads, state, w)
            w = lib.apply_updates(w, updates)
            history.append(updates)
        out[name] = (history, state)
        if name.startswith("mean_variance"):
            out[name + "_ema"] = agg.get_unbiased_mean_and_variance_ema(state)
    out["batch_size"] = agg.get_batch_size_from_per_elt_updates({"a": xs, "b": ys}, [0, 1])
    return out


def test_aggregating_matches_optax():
    actual, expected = jax.jit(lambda: (_aggregated(gradx), _aggregated(optax)))()
    assert_trees_close(jax.tree.leaves(actual), jax.tree.leaves(expected), rtol=2e-5)
    agg = gradx.experimental.aggregating
    assert isinstance(agg.average_per_element_updates(), agg.Aggregator)
    with pytest.raises(ValueError, match="larger than or equal to 1"):
        agg.accumulate_avg_updates(0)
    with pytest.raises(ValueError, match="same batch size"):
        agg.get_batch_size_from_per_elt_updates({"a": jnp.ones((2, 1)), "b": jnp.ones((3, 1))}, 0)
    with pytest.raises(ValueError, match="PerElementMeanAndVarianceEMAState"):
        agg.get_unbiased_mean_and_variance_ema(gradx.adam(0.1).init(jnp.ones(2)))


def test_optimistic_adam_is_deprecated_and_matches_optax():
    params = make_params()
    with pytest.warns(DeprecationWarning, match="optimistic_adam_v2"):
        tx = gradx.optimistic_adam(0.01, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        reference = optax.optimistic_adam(0.01, 0.5)
    assert_trees_close(run(tx, params, 3)[0], run(reference, params, 3)[0])
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="schedules"):
        gradx.optimistic_adam(lambda count: 0.1)
