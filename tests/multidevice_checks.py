"""Checks on 8 simulated CPU devices, run by tests/test_sharding.py in a subprocess (the device
count must be set before jax is imported): ``python tests/multidevice_checks.py``.

Every ``check_*`` function runs (one jax import and few compilations for all of them); failures
are printed with their check's name and the exit status is 1 if any failed.
"""

import os
import sys
import tempfile
import time
import traceback

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import gradx  # noqa: E402
from gradx import checkpoint, sharding  # noqa: E402
from gradx.plumbing import path_str  # noqa: E402
from support import assert_trees_close  # noqa: E402

AUTO = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
EXPLICIT = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
SPECS = {"kernel": ((8, 12), P("data", "model")), "embed": ((16, 6), P("model")),
         "bias": ((12,), P("model")), "scale": ((), P()), "odd": ((6, 5), P())}


def make(mesh, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {k: jax.device_put(jnp.asarray(rng.normal(size=shape), dtype), NamedSharding(mesh, spec))
            for k, (shape, spec) in SPECS.items()}


def loss(params):
    return sum(jnp.sum(jnp.sin(x) ** 2) for x in jax.tree.leaves(params))


def optimizers():
    """Every named optimizer, the wrappers, and the blocks whose state is not param-shaped."""
    opt = gradx
    txs = {name: getattr(opt, name)(1e-2) for name in [
        "adabelief", "adadelta", "adagrad", "adam", "adamax", "adamaxw", "adamw", "adan",
        "amsgrad", "fromage", "lamb", "lars", "lion", "nadam", "nadamw", "novograd",
        "optimistic_adam_v2", "optimistic_gradient_descent", "radam", "rmsprop", "rprop",
        "sign_sgd", "signum", "sm3", "yogi"]}
    txs.update(
        sgd=opt.sgd(1e-2, momentum=0.9), adafactor=opt.adafactor(1e-2, min_dim_size_to_factor=2),
        noisy_sgd=opt.noisy_sgd(1e-2, key=jax.random.key(0)), polyak_sgd=opt.polyak_sgd(),
        lbfgs=opt.lbfgs(), dog=opt.scale_by_distance_over_gradients(),
        torch_adafactor=gradx.torch_compat.adafactor(),
        multi_steps=opt.MultiSteps(opt.adam(1e-2), 2).gradient_transformation(),
        apply_if_finite=opt.apply_if_finite(opt.adam(1e-2), 3),
        skip_bad_steps=opt.skip_bad_steps(opt.adam(1e-2), max_grad_norm=1e3),
        inject_hyperparams=opt.inject_hyperparams(opt.adamw)(learning_rate=1e-2),
        partition=opt.partition({"a": opt.adam(1e-2), "b": opt.sgd(1e-2, momentum=0.9)},
                                lambda p: {k: "a" if k in ("kernel", "odd") else "b" for k in p}),
        masked=opt.masked(opt.adam(1e-2), {k: k != "bias" for k in SPECS}),
        accumulate_gradients=opt.accumulate_gradients(opt.adam(1e-2), 2),
        with_telemetry=opt.with_telemetry(opt.adam(1e-2)))
    return txs


def extra_args(name, params):
    if name == "polyak_sgd":
        return {"value": loss(params)}
    if name == "lbfgs":
        return {"value": loss(params), "grad": jax.grad(loss)(params), "value_fn": loss}
    return {}


def misplaced(state, params, eager_without_mesh=False):
    """The state leaves that are not where they belong: a leaf shaped like the parameter whose
    path ends its path has that parameter's sharding; every other leaf spans all 8 devices
    (replicated or split); eagerly outside a mesh context, a leaf built without reading a
    parameter may be left uncommitted (JAX's rule for fresh arrays)."""
    owners = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    wrong = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        path = path_str(key_path)
        owner = next((x for name, x in owners.items()
                      if path.endswith(name) and np.shape(x) == leaf.shape and leaf.ndim), None)
        if owner is not None:
            ok = leaf.sharding.is_equivalent_to(owner.sharding, leaf.ndim)
        else:
            ok = (len(leaf.sharding.device_set) == 8
                  or (eager_without_mesh and not leaf.committed))
        if not ok:
            wrong.append(f"{path} {leaf.shape}: {getattr(leaf.sharding, 'spec', leaf.sharding)}")
    return wrong


def check_state_follows_params():
    """Eager init, jitted init and a jitted step (all optimizers in one program) put each
    state leaf with its parameter (the numbers of sharded steps: check_zero1,
    check_checkpoint_reshards)."""
    txs = optimizers()
    params, grads = make(AUTO), make(AUTO, seed=1)
    params = {name: params for name in txs}
    grads = {name: grads for name in txs}
    txs["lookahead"] = gradx.lookahead(gradx.adam(1e-2), 2, 0.5)
    params["lookahead"] = gradx.LookaheadParams.init_synced(make(AUTO))
    grads["lookahead"] = make(AUTO, seed=1)     # the fast weights' gradients
    txs["with_master_weights"] = gradx.with_master_weights(gradx.adam(1e-2))
    params["with_master_weights"] = make(AUTO, dtype=jnp.bfloat16)
    grads["with_master_weights"] = make(AUTO, seed=1, dtype=jnp.bfloat16)
    owners = dict(params, lookahead=params["lookahead"].fast)
    wrong = {}
    for name, tx in txs.items():
        wrong[f"eager {name}"] = misplaced(tx.init(params[name]), owners[name],
                                           eager_without_mesh=True)
    states = jax.jit(lambda p: {n: tx.init(p[n]) for n, tx in txs.items()})(params)
    wrong.update({f"jit(init) {n}": misplaced(s, owners[n]) for n, s in states.items()})

    def step(grads, states, params):  # lbfgs's step is a large program: its inner products
        # under explicit axes are in check_explicit_axes
        return {n: tx.update(grads[n], states[n], params[n], **extra_args(n, params[n]))
                for n, tx in txs.items() if n != "lbfgs"}

    stepped = jax.jit(step)(grads, states, params)   # one compilation for every optimizer
    wrong.update({f"step {n}": misplaced(s, owners[n]) for n, (_, s) in stepped.items()})
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, wrong
    # Adafactor's factored statistics keep the axes they keep: rows of kernel on data, columns
    # on model; embed (16, 6) reduces its long axis for v_row, whose 6 entries are then
    # replicated, and keeps it (on model) for v_col.
    factored = stepped["adafactor"][1][0]
    assert factored.v_row["kernel"].sharding.spec == P("data")
    assert factored.v_col["kernel"].sharding.spec == P("model")
    assert factored.v_row["embed"].shape == (6,) and factored.v_row["embed"].sharding.spec == P()
    assert factored.v_col["embed"].sharding.spec == P("model")


def check_explicit_axes():
    """Under jax.set_mesh with explicit axes: the skipping wrappers' branches agree (no "cond
    branches must have equal output types"), everything, scalars included, is placed, and
    lbfgs's inner products name their replicated output (JAX asks for it)."""
    opt = gradx
    txs = {"multi_steps": opt.MultiSteps(opt.adam(1e-2), 2).gradient_transformation(),
           "apply_if_finite": opt.apply_if_finite(opt.adam(1e-2), 3),
           "skip_bad_steps": opt.skip_bad_steps(opt.adafactor(1e-2, min_dim_size_to_factor=2),
                                                max_grad_norm=1e3),
           "accumulate_gradients": opt.accumulate_gradients(opt.lion(1e-3), 2),
           "conditionally_mask": opt.conditionally_mask(opt.sgd(0.1, 0.9), lambda step: step > 0)}
    params, grads = make(EXPLICIT), make(EXPLICIT, seed=1)
    with jax.set_mesh(EXPLICIT):
        for name, tx in txs.items():
            eager, jitted = tx.init(params), jax.jit(tx.init)(params)
            update = jax.jit(lambda g, s, p, tx=tx, n=name: tx.update(g, s, p, **extra_args(n, p)))
            updates, state = update(grads, eager, params)
            for what, tree in (("eager", eager), ("jit", jitted), ("step", state)):
                assert not misplaced(tree, params), (name, what, misplaced(tree, params))
            assert not misplaced(updates, params), (name, "updates", misplaced(updates, params))
        # lbfgs's inner products of sharded leaves (its step is a large program to compile).
        vdot = jax.jit(gradx.linesearch.real_vdot)(params, grads)
        assert vdot.sharding.is_fully_replicated and len(vdot.sharding.device_set) == 8
        np.testing.assert_allclose(vdot, sum(np.vdot(a, b) for a, b in zip(
            jax.tree.leaves(params), jax.tree.leaves(grads))), rtol=1e-6)


def check_state_shardings_and_abstract_state():
    """state_shardings predicts jit(init)'s placement from ShapeDtypeStructs; abstract_state
    carries it; a sharding that does not divide its leaf falls back to replication."""
    params = make(AUTO)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          params)
    for tx in (gradx.adamw(1e-2), gradx.adafactor(1e-2, min_dim_size_to_factor=2),
               gradx.MultiSteps(gradx.lion(1e-3), 2).gradient_transformation(),
               gradx.inject_hyperparams(gradx.sgd)(learning_rate=0.1, momentum=0.9)):
        predicted = sharding.state_shardings(tx, shapes)
        actual = jax.jit(tx.init)(params)
        assert jax.tree.structure(predicted) == jax.tree.structure(jax.tree.map(lambda _: 0, actual))
        for s, a in zip(jax.tree.leaves(predicted), jax.tree.leaves(actual)):
            assert s.is_equivalent_to(a.sharding, a.ndim), (s, a.sharding)
        abstract = sharding.abstract_state(tx, shapes)
        for s, a in zip(jax.tree.leaves(abstract), jax.tree.leaves(actual)):
            assert (s.shape, s.dtype) == (a.shape, a.dtype) and s.sharding.is_equivalent_to(
                a.sharding, a.ndim)
    # (5, 4) split 2 ways on its first axis cannot be: replicated, and reported.
    bad = {"w": jax.ShapeDtypeStruct((5, 4), jnp.float32, sharding=NamedSharding(AUTO, P("data")))}
    predicted = sharding.state_shardings(gradx.adam(1e-3), bad)
    assert all(s.is_fully_replicated and len(s.device_set) == 8 for s in jax.tree.leaves(predicted))
    report = gradx.memory_report(gradx.adam(1e-3), bad)
    assert report.fallbacks == ("w",) and report.max_device_bytes == 2 * 5 * 4 * 4 + 4
    assert sharding.fitted(NamedSharding(AUTO, P("model")), (8,)).spec == P("model")
    assert sharding.fitted(NamedSharding(AUTO, P("model")), (6,)).spec == P()
    assert sharding.fitted(NamedSharding(AUTO, P("model")), ()).spec == P()


def check_zero1():
    """ZeRO-1 over data: each leaf split on its first dimension that divides; per-device state
    bytes halve where that is possible; three training steps equal the replicated run's."""
    params = make(AUTO)
    tx = gradx.adamw(1e-2, weight_decay=0.1)
    zero1 = sharding.zero1_shardings(tx, params, AUTO, axis="data")
    mu = zero1[0].mu
    assert mu["kernel"].spec == P("data", "model")             # already on data: unchanged
    assert mu["embed"].spec == P(("data", "model"))            # 16 = 2 * 4 * 2
    assert mu["bias"].spec == P("model")                        # 12 % 8 != 0: as it was
    assert mu["odd"].spec == P("data")                          # 6 % 2 == 0
    assert mu["scale"].spec == P() and zero1[0].count.spec == P()
    like_params = gradx.memory_report(tx, params)
    split = gradx.memory_report(tx, params, shardings=zero1)
    assert like_params.total_bytes == split.total_bytes == 4 + 2 * 4 * (96 + 96 + 12 + 1 + 30)
    # Each device holds the count and, per moment, these elements: kernel 4*3, embed 4*6, bias
    # 3, scale 1, odd 30 (like the params) and kernel 12, embed 2*6, bias 3, scale 1, odd 3*5
    # (ZeRO-1).
    assert set(like_params.device_bytes.values()) == {4 + 8 * (12 + 24 + 3 + 1 + 30)}
    assert set(split.device_bytes.values()) == {4 + 8 * (12 + 12 + 3 + 1 + 15)}
    assert split.fallbacks == () and len(split.device_bytes) == 8
    try:
        sharding.zero1_shardings(tx, params, AUTO, axis="dp")
    except ValueError as error:
        assert "'dp'" in str(error) and "('data', 'model')" in str(error), error
    else:
        raise AssertionError("no ValueError for a missing mesh axis")

    batch = jax.device_put(jnp.arange(16.0).reshape(8, 2), NamedSharding(AUTO, P("data")))

    def train_step(params, state, batch):
        grads = jax.grad(lambda p: loss(p) * jnp.mean(batch))(params)
        updates, state = tx.update(grads, state, params)
        return gradx.apply_updates(params, updates), state

    param_sh = jax.tree.map(lambda p: p.sharding, params)
    results = []
    for state_sh in (sharding.state_shardings(tx, params), zero1):
        state = jax.jit(tx.init, out_shardings=state_sh)(params)
        step = jax.jit(train_step, in_shardings=(param_sh, state_sh, batch.sharding),
                       out_shardings=(param_sh, state_sh))
        p = params
        for _ in range(3):
            p, state = step(p, state, batch)
        assert all(leaf.sharding == s for leaf, s in zip(jax.tree.leaves(state),
                                                         jax.tree.leaves(state_sh)))
        results.append((p, state))
    assert_trees_close(results[1], results[0], rtol=1e-6, atol=0, what="ZeRO-1 vs replicated")


def check_spread_blocks():
    """Stacked blocks split over a mesh axis: the batched eigh keeps the split and its numbers;
    no mesh, an odd block count or a missing axis behave as documented."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(8, 5, 5)).astype(np.float32)
    blocks = jnp.asarray(a @ a.transpose(0, 2, 1) + 5 * np.eye(5, dtype=np.float32))
    expected = jnp.linalg.eigh(blocks)
    for mesh in (AUTO, EXPLICIT):
        with jax.set_mesh(mesh):
            split = jax.jit(lambda b: jnp.linalg.eigh(sharding.spread_blocks(b, "model")))(blocks)
            assert split.eigenvalues.sharding.is_equivalent_to(
                NamedSharding(mesh, P("model")), 2), split.eigenvalues.sharding
        assert_trees_close(tuple(split), tuple(expected), rtol=1e-5, atol=1e-5)
    auto = jax.jit(lambda b: sharding.spread_blocks({"s": b}, "model", AUTO))(blocks)["s"]
    assert auto.sharding.spec == P("model")
    assert sharding.spread_blocks(blocks, "model") is blocks            # no mesh anywhere
    odd = blocks[:6]
    assert sharding.spread_blocks(odd, "model", AUTO) is odd            # left to the compiler
    try:
        sharding.spread_blocks(blocks, "blocks", AUTO)
    except ValueError as error:
        assert "'blocks'" in str(error), error
    else:
        raise AssertionError("no ValueError for a missing mesh axis")


def check_shard_blocks():
    """``gradx.shard_blocks``: every LAPACK call of Meta's Shampoo, SOAP and PSGD-Kron runs on
    this device's share of its batch (three (8, 8) leaves and a (6, 8) one: up to 7 factors of
    size 8, padded to 8 over the 4-way model axis, 2 per device), and every matrix optimizer
    gives the unsplit numbers (in float64: the float32 roots of these
    nearly singular statistics amplify the round-off of differently shaped matmuls to 2e-5)."""
    import re
    rng = np.random.default_rng(5)
    arrays = {f"w{i}": rng.normal(size=(8, 8)) for i in range(3)} | {"v": rng.normal(size=(6, 8))}

    def lapack_batches(tx):
        text = jax.jit(tx.update).lower(grads, tx.init(params), params).compile().as_text()
        return {int(m) for m in re.findall(r"= \(?f64\[(\d+),[^=]*custom_call_target=\"lapack", text)}

    builders = {"distributed_shampoo": lambda: gradx.distributed_shampoo(
                    0.1, block_size=8, preconditioning_compute_steps=1,
                    start_preconditioning_step=1),
                "shampoo": lambda: gradx.shampoo(0.1, max_preconditioner_dim=8,
                                                 precondition_frequency=1,
                                                 start_preconditioning_step=1),
                "soap": lambda: gradx.soap(0.1), "psgd_kron": lambda: gradx.psgd_kron(0.1),
                "muon": lambda: gradx.muon(0.1)}
    with jax.set_mesh(AUTO), jax.enable_x64(True):
        params = {k: jnp.asarray(v, jnp.float64) for k, v in arrays.items()}
        grads = jax.tree.map(lambda p: 0.5 * p + 0.1, params)
        for name, build in builders.items():
            plain, split = build(), gradx.shard_blocks(build(), "model")
            outs = []
            for tx in (plain, split):
                step, state = jax.jit(tx.update), tx.init(params)
                for _ in range(3):
                    updates, state = step(grads, state, params)
                outs.append(updates)
            assert_trees_close(outs[1], outs[0], rtol=1e-12, atol=1e-14, what=name)
            if name in ("shampoo", "soap", "psgd_kron"):  # eigh, qr, triangular solves
                # (coupled Newton and Newton-Schulz are matmuls)
                whole, shares = max(lapack_batches(plain)), max(lapack_batches(split))
                assert whole >= 3 and shares == -(-whole // 4), (name, whole, shares)


def check_checkpoint_reshards():
    """A sharded checkpoint restores onto the same mesh, onto another mesh and onto one device,
    bit for bit; a mismatched optimizer still names the first mismatching path."""
    params = make(AUTO)
    tx = gradx.chain(gradx.clip_by_global_norm(1.0), gradx.adafactor(1e-2, min_dim_size_to_factor=2))
    grads = make(AUTO, seed=1)
    state = jax.jit(tx.update)(grads, tx.init(params), params)[1]
    one_device = jax.device_put((grads, tx.init(params), params), jax.devices()[0])
    assert_trees_close(state, jax.jit(tx.update)(*one_device)[1], rtol=1e-6, atol=0,
                       what="sharded vs one-device adafactor step")
    with tempfile.TemporaryDirectory() as path:
        checkpoint.save(path, params, state, step=3)
        restored = checkpoint.restore(path, params, sharding.abstract_state(tx, params))
        assert restored.step == 3
        for got, want in zip(jax.tree.leaves(restored[:2]), jax.tree.leaves((params, state))):
            assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        other = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
        moved = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=NamedSharding(other, x.sharding.spec)), params)
        one = jax.sharding.SingleDeviceSharding(jax.devices()[5])
        for target, state_like in ((moved, sharding.abstract_state(tx, moved)),
                                   (jax.tree.map(lambda x: jax.ShapeDtypeStruct(
                                       x.shape, x.dtype, sharding=one), params), None)):
            if state_like is None:
                state_like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                         sharding=one), state)
            got = checkpoint.restore(path, target, state_like)
            for g, t, want in zip(jax.tree.leaves(got[:2]), jax.tree.leaves((target, state_like)),
                                  jax.tree.leaves((params, state))):
                assert g.sharding.is_equivalent_to(t.sharding, g.ndim), (g.sharding, t.sharding)
                np.testing.assert_array_equal(np.asarray(g), np.asarray(want))
        try:
            checkpoint.restore(path, params, sharding.abstract_state(gradx.adamw(1e-2), params))
        except ValueError as error:
            assert "opt_state_like" in str(error) and "'0/" in str(error), error
        else:
            raise AssertionError("no ValueError for a mismatched optimizer")


def main(only=()):
    """Runs every check (or those named in ``only``)."""
    assert jax.device_count() == 8, jax.devices()
    failed = 0
    for name, check in sorted(globals().items()):
        if name.startswith("check_") and (not only or name in only):
            try:
                started = time.process_time()
                check()
                print(f"ok {name} ({time.process_time() - started:.1f} s CPU)", flush=True)
            except Exception:  # report every check, then fail
                failed += 1
                print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
