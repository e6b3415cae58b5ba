"""The matrix-preconditioner engine (gradx.matrix): block partitioning and its exact inverse,
one batched call per shape, matrix functions against Optax and closed forms, failed roots kept
and counted, no retrace between refresh and non-refresh steps, bf16 params with float32
statistics, checkpoints, the memory report's fallback notes, and bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from gradx import checkpoint
from gradx.matrix import kronecker, map_stacked, merge_dims, plan_blocks
from gradx.matrix.functions import eigh_inverse_root

SHAPES = {"w": (6, 3), "v": (3,), "k": (2, 3, 4), "s": ()}


def tree(seed=0, dtype=jnp.float32, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}


def inner_jaxprs(eqn):
    """The jaxprs an equation holds (a ``jit``'s, a ``cond``'s branches, ...)."""
    for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else [value]:
            inner = getattr(sub, "jaxpr", sub)
            if hasattr(inner, "eqns"):
                yield inner


def primitive_count(fn, *args, name):
    """How many equations of primitive ``name`` the jaxpr of ``fn`` holds (sub-jaxprs too)."""
    def count(jaxpr):
        return sum((eqn.primitive.name == name) + sum(count(j) for j in inner_jaxprs(eqn))
                   for eqn in jaxpr.eqns)
    return count(jax.make_jaxpr(fn)(*args).jaxpr)


# ---------------------------------------------------------------------------------------------
# Blocks and stacking

def test_merge_dims_follows_google_and_meta():
    assert merge_dims((1, 2, 512, 1, 2048, 1, 3, 4), 1024) == (1024, 2048, 12)   # Google
    assert merge_dims((1, 2, 768, 1, 2048), 1024) == (2, 768, 2048)              # Google
    assert merge_dims((1, 2, 5, 1), 10, reverse=True) == (10,)                    # Meta
    assert merge_dims((1, 2, 5, 1), 1, reverse=True) == (2, 5)                    # Meta
    assert merge_dims((32, 3, 64, 64), 8192, reverse=True) == (96, 4096)          # Meta
    assert merge_dims((1, 1), 4) == (1,) and merge_dims((), 4) == ()


def test_blocks_of_mixed_shapes_split_and_merge_exactly():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 5, 3)), jnp.bfloat16)
    plan = plan_blocks(x.shape, block_size=2)
    stacks = jax.jit(plan.split)(x)
    assert [(s.shape, s.dtype) for s in stacks][:2] == [((6, 2, 2, 2), x.dtype),
                                                          ((6, 2, 2, 1), x.dtype)]
    assert sum(s.size for s in stacks) == x.size and len(stacks) == 8
    # Block (i, j, 0) of the (2, 2, 2) group is x[2i:2i+2, 2j:2j+2, 0:2], row-major.
    np.testing.assert_array_equal(stacks[0][1 * 2 + 1], x[2:4, 2:4, 0:2])
    np.testing.assert_array_equal(stacks[-1][0], x[6:7, 4:5, 2:3])
    np.testing.assert_array_equal(jax.jit(plan.merge)(stacks), x)
    merged = plan_blocks((2, 1, 6), block_size=4, merge_size=4)
    assert merged.merged == (2, 6) and [g.shape for g in merged.groups] == [(2, 4), (2, 2)]
    for shape in [(), (5,), (2, 1, 6)]:
        y = jnp.arange(int(np.prod(shape)), dtype=jnp.float32).reshape(shape)
        p = plan_blocks(shape, block_size=4, merge_size=4, promote_scalar=True)
        np.testing.assert_array_equal(jax.jit(lambda a, p=p: p.merge(p.split(a)))(y), y)


def test_map_stacked_calls_once_per_shape_and_static_value():
    calls = []

    def fn(a, b, p):
        calls.append((a.shape, p))
        return a * p + b

    rng = np.random.default_rng(0)
    items = [(jnp.asarray(rng.normal(size=(n, d, d))), jnp.ones((n, d, d)), p)
             for n, d, p in [(2, 3, 4), (1, 2, 4), (3, 3, 4), (1, 3, 2)]]
    out = map_stacked(fn, items)
    assert sorted(calls) == [((1, 2, 2), 4), ((1, 3, 3), 2), ((5, 3, 3), 4)]
    for (a, b, p), result in zip(items, out):
        np.testing.assert_allclose(result, a * p + b)


def test_map_stacked_runs_each_call_after_all_of_the_previous_one():
    """Two batched LAPACK calls at once deadlock a 2-thread CPU pool, so each call's input
    depends on every output of the previous call, also on the one computed last: here the QR,
    after a sort order (SOAP's refresh; a dependency on the first output only let the QRs
    overlap and hung a 2-core run)."""

    def fn(x):
        return jnp.argsort(jnp.sum(x, axis=-1), axis=-1), jnp.linalg.qr(x)[0]

    def qr_dependencies(jaxpr):
        """For each top-level equation holding a ``qr``, the earlier ones it depends on."""
        sources, found = {}, []
        for eqn in jaxpr.eqns:
            deps = set().union(*(sources.get(v, set()) for v in eqn.invars
                                 if not isinstance(v, jax.extend.core.Literal)))
            if any(e.primitive.name == "qr" for j in inner_jaxprs(eqn) for e in j.eqns):
                found.append(deps)
                deps = deps | {len(found) - 1}
            sources.update(dict.fromkeys(eqn.outvars, deps))
        return found

    items = [(jnp.ones((2, 3, 3)),), (jnp.ones((1, 4, 4)),), (jnp.ones((1, 2, 2)),)]
    jaxpr = jax.make_jaxpr(lambda *xs: map_stacked(fn, [(x,) for x in xs]))(
        *(x for x, in items)).jaxpr
    assert qr_dependencies(jaxpr) == [set(), {0}, {0, 1}]
    # A QR of the second input only (PSGD-Kron's solves read its noise, not its first input):
    # ordered too.
    second = lambda first, x: fn(x)  # noqa: E731
    jaxpr = jax.make_jaxpr(lambda *xs: map_stacked(second, [(x, x) for x in xs]))(
        *(x for x, in items)).jaxpr
    assert qr_dependencies(jaxpr) == [set(), {0}, {0, 1}]


# ---------------------------------------------------------------------------------------------
# Matrix functions

def spd(n, seed=0):
    a = np.random.default_rng(seed).normal(size=(n, n))
    return jnp.asarray(a @ a.T + 0.5 * np.eye(n), jnp.float32)


def test_matrix_inverse_pth_root_and_power_iteration_match_optax():
    m = spd(4)
    ours = jax.jit(gradx.matrix_inverse_pth_root, static_argnums=1)(m, 4)
    theirs = jax.jit(optax.matrix_inverse_pth_root, static_argnums=1)(m, 4)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-6, atol=1e-7)
    value, vector = jax.jit(gradx.power_iteration)(m)
    expected = optax.power_iteration(m)
    np.testing.assert_allclose(value, expected[0], rtol=1e-6)
    np.testing.assert_allclose(vector, expected[1], rtol=1e-5, atol=1e-6)
    tree_v0 = {"a": jnp.ones(2), "b": jnp.ones(2)}
    mvp = lambda v: {"a": 2 * v["a"], "b": 3 * v["b"]}  # noqa: E731
    assert abs(float(gradx.power_iteration(mvp, v0=tree_v0)[0]) - 3.0) < 1e-5


def test_inverse_roots_against_closed_form_in_float64():
    with jax.enable_x64(True):
        m = spd(5).astype(jnp.float64)
        values, vectors = np.linalg.eigh(np.asarray(m) + 1e-3 * np.eye(5))
        expected = (vectors * values ** -0.25) @ vectors.T
        root, _ = eigh_inverse_root(m, 4, 1e-3)
        np.testing.assert_allclose(root, expected, rtol=1e-10)
        newton, error = gradx.matrix.coupled_newton_inverse_root(
            m, 4, 1e-3, relative_epsilon=False, error_tolerance=1e-12)
        np.testing.assert_allclose(newton, expected, rtol=1e-8)
        assert float(error) < 1e-8


def test_orthogonalize_via_newton_schulz_matches_optax():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 6)), jnp.float32)
    dims = (gradx.matrix.MuonDimensionNumbers(1, 2), optax.contrib.MuonDimensionNumbers(1, 2))
    ours = jax.jit(lambda a: gradx.matrix.orthogonalize_via_newton_schulz(
        a, jnp.asarray(gradx.matrix.functions.NS_COEFFS), dimension_numbers=dims[0]))(x)
    from optax.contrib._muon import orthogonalize_via_newton_schulz
    theirs = orthogonalize_via_newton_schulz(x, jnp.asarray((3.4445, -4.7750, 2.0315)),
                                             dimension_numbers=dims[1])
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# One batched call per factor size

def test_refresh_is_one_batched_call_per_factor_size():
    """Meta's Shampoo with blocks of 4: factors of sizes 1 (the scalar), 2, 3 and 4 across four
    leaves and five block groups: 4 ``eigh`` calls. SOAP: one ``eigh`` (set-up) and one ``qr``
    (refresh) per size. Muon: 5 Newton-Schulz steps of 3 products for each of the 2 shapes."""
    params = tree()
    tx = gradx.shampoo(0.1, max_preconditioner_dim=4)
    assert primitive_count(tx.update, params, tx.init(params), params, name="eigh") == 4
    soap = gradx.soap(max_precond_dim=4)
    args = (params, soap.init(params), params)
    assert primitive_count(soap.update, *args, name="eigh") == 3     # sizes 2, 3, 4
    assert primitive_count(soap.update, *args, name="qr") == 3
    muon = gradx.scale_by_muon()
    matrices = {"a": jnp.ones((4, 6)), "b": jnp.ones((6, 4)), "c": jnp.ones((2, 3)),
                "d": jnp.ones((4, 6))}
    assert primitive_count(muon.update, matrices, muon.init(matrices),
                           name="dot_general") == 2 * 5 * 3


# ---------------------------------------------------------------------------------------------
# Failures, retracing, dtypes, checkpoints

@functools.lru_cache(maxsize=None)
def meta_step():
    """Meta's Shampoo with roots every 2 steps (steps 2, 4, ...), jitted once for the tests."""
    tx = gradx.shampoo(0.1, max_preconditioner_dim=4, precondition_frequency=2)
    return tx, jax.jit(tx.update)


def test_nan_statistic_keeps_the_old_root_and_is_counted():
    tx, update = meta_step()
    params = tree()
    state = tx.init(params)
    _, state = update(tree(1), state, params)
    _, state = update(tree(2), state, params)            # step 2 refreshes every root
    roots = state.preconditioners
    poisoned = state._replace(statistics={**state.statistics, "v": jax.tree.map(
        lambda s: jnp.full_like(s, jnp.nan), state.statistics["v"])})
    grads = {**tree(3), "k": jnp.zeros(SHAPES["k"])}     # a singular statistic does not fail
    _, state = update(grads, poisoned, params)           # step 3: no refresh
    updates, state = update(grads, state, params)        # step 4: refresh; v fails
    np.testing.assert_array_equal(state.preconditioners["v"][0][0], roots["v"][0][0])
    assert int(state.failures["v"][0][0][0]) == 1
    assert sum(int(f.sum()) for f in jax.tree.leaves(state.failures)) == 1
    assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree.leaves(updates))
    assert update._cache_size() == 1                     # refresh and plain steps: one trace


def test_bf16_params_keep_float32_statistics():
    params = tree(dtype=jnp.bfloat16)
    grads = tree(1, dtype=jnp.bfloat16)
    states = []
    for tx in [gradx.shampoo(0.1, max_preconditioner_dim=4), gradx.soap(max_precond_dim=4)]:
        updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
        states.append(state)
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
        assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(state.statistics))
        assert all(np.isfinite(np.asarray(u, np.float32)).all() for u in jax.tree.leaves(updates))
    assert states[0].momentum["w"].dtype == states[1].mu["w"].dtype == jnp.bfloat16
    # Shampoo's first statistics are exactly the float32 Gram matrices of the bf16 gradient's
    # first (4, 3) block.
    g = np.asarray(grads["w"], np.float32)[:4]
    for got, want in zip(states[0].statistics["w"][0], [g @ g.T, g.T @ g]):
        np.testing.assert_allclose(got[0], want, rtol=1e-6)


def test_state_round_trips_through_checkpoint(tmp_path):
    tx, update = meta_step()
    params = tree()
    state = tx.init(params)
    for step in range(3):
        _, state = update(tree(step + 1), state, params)
    checkpoint.save(tmp_path / "ckpt", params, state, step=3)
    restored = checkpoint.restore(tmp_path / "ckpt", params, tx.init(params))
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(state)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    ours, _ = update(tree(9), restored.opt_state, params)
    expected, _ = update(tree(9), state, params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Memory report and bad input

def test_memory_report_attributes_factors_and_names_the_fallback():
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree())
    tx = gradx.distributed_shampoo(0.1, block_size=4, merge_small_dims_block_size=4,
                                   skip_preconditioning_dim_size_gt=5)
    report = gradx.memory_report(tx, params)
    rows = {p.path: p for p in report.params}
    assert "graft" in rows["w"].note and "graft" in rows["s"].note   # 6 > 5; rank 0
    assert rows["k"].note == "" and rows["v"].note == ""
    # k (2, 3, 4): statistics, roots (4 bytes each) and failure counts, plus two momenta.
    factors = sum(d * d for d in (2, 3, 4))
    assert rows["k"].state_bytes == 2 * 4 * factors + 4 * 3 + 2 * 4 * 24
    assert report.buffers["statistics"] == 4 * (factors + 9)
    assert "graft" in str(report)
    soap = gradx.memory_report(gradx.soap(), params)
    assert {p.path: bool(p.note) for p in soap.params} == {"k": False, "s": True, "v": True,
                                                            "w": False}


@pytest.mark.parametrize("build, name", [
    (lambda: gradx.distributed_shampoo(0.1, block_size=-1), "block_size"),
    (lambda: gradx.distributed_shampoo(0.1, 4, beta2=1.5), "beta2"),
    (lambda: gradx.distributed_shampoo(0.1, 4, preconditioning_compute_steps=0),
     "preconditioning_compute_steps"),
    (lambda: gradx.distributed_shampoo(0.1, 4, matrix_epsilon=-1.0), "matrix_epsilon"),
    (lambda: gradx.distributed_shampoo(0.1, 4, exponent_override=-2), "exponent_override"),
    (lambda: gradx.distributed_shampoo(0.1, 4, graft_type=9), "graft_type"),
    (lambda: gradx.distributed_shampoo(0.1, 4, batch_axis_name="data"), "batch_axis_name"),
    (lambda: gradx.shampoo(0.1, betas=(1.0, 1.0)), "betas[0]"),
    (lambda: gradx.shampoo(0.1, epsilon=0.0), "epsilon"),
    (lambda: gradx.shampoo(0.1, max_preconditioner_dim=0), "max_preconditioner_dim"),
    (lambda: gradx.shampoo(0.1, precondition_frequency=10, start_preconditioning_step=3),
     "start_preconditioning_step"),
    (lambda: gradx.shampoo(0.1, grafting="lion"), "grafting"),
    (lambda: gradx.shampoo(0.1, root="svd"), "root"),
    (lambda: gradx.soap(betas=(0.9, 1.0)), "betas[1]"),
    (lambda: gradx.soap(precondition_frequency=0), "precondition_frequency"),
    (lambda: gradx.soap(max_precond_dim=2.5), "max_precond_dim"),
    (lambda: gradx.soap(eps=-1e-8), "eps"),
    (lambda: gradx.muon(0.1, form="jordan"), "form"),
])
def test_bad_hyperparameters_raise_naming_the_argument(build, name):
    with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
        build()


def test_params_needed_for_weight_decay():
    tx = gradx.soap()
    params = tree()
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))
    shampoo = gradx.shampoo(weight_decay=0.1)
    with pytest.raises(ValueError, match="params"):
        shampoo.update(params, shampoo.init(params))
    with pytest.raises(ValueError, match="'k/0/0' is in state.statistics but not in updates"):
        shampoo.update({"w": params["w"]}, shampoo.init(params), params)


def test_factor_plan_reports_what_is_preconditioned():
    plan = kronecker.plan_leaf((5, 3), max_factor_size=4)
    assert plan.factored == (False, True) and plan.num_factors == 1 and plan.preconditioned
    assert not kronecker.plan_leaf((), merge_size=4).preconditioned


def test_shard_blocks_without_a_mesh_is_the_optimizer_and_checks_its_axis():
    """Split over a mesh axis only under a mesh (8 simulated devices: multidevice_checks.py's
    check_shard_blocks); without one the numbers are bit-identical, and a wrong axis is named."""
    params = tree()
    for build in (lambda: gradx.shampoo(0.1, max_preconditioner_dim=4, precondition_frequency=1,
                                        start_preconditioning_step=1), gradx.soap):
        plain, split = build(), gradx.shard_blocks(build(), "data")
        for a, b in zip(jax.tree.leaves(jax.jit(split.update)(params, split.init(params), params)),
                        jax.tree.leaves(jax.jit(plain.update)(params, plain.init(params), params))):
            np.testing.assert_array_equal(a, b)
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match="axis='model' is not an axis of the mesh"):
        gradx.shard_blocks(gradx.soap(), "model", mesh)
    with pytest.raises(ValueError, match="axis must be a mesh axis name"):
        gradx.shard_blocks(gradx.soap(), 0)
    tx = gradx.shard_blocks(gradx.soap(), "model")
    with jax.set_mesh(mesh), pytest.raises(ValueError, match="axis='model'"):
        tx.update(params, tx.init(params), params)
