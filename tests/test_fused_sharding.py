"""The flat path on sharded params, on 8 simulated CPU devices in a subprocess (a (data=2,
model=4) mesh): sharded leaves stay in place, replicated ones share a replicated bucket, the
compiled step has no all-gather that the reference step does not have, and the numbers are the
reference path's."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import gradx
    from gradx.fused import FusedState, flatten_params, fused, unflatten_params

    mesh = jax.make_mesh((2, 4), ("data", "model"))
    rng = np.random.default_rng(0)
    specs = {"w": P(None, "model"), "v": P("model"), "b": P(), "s": P(), "g": P()}
    shapes = {"w": (8, 16), "v": (8, 4), "b": (16,), "s": (4,), "g": ()}
    params = {k: jax.device_put(jnp.asarray(rng.normal(size=shapes[k]), jnp.float32),
                                NamedSharding(mesh, specs[k])) for k in shapes}
    grads = jax.tree.map(lambda p: p * 0.5 + 0.1, params)
    tx = gradx.chain(gradx.clip_by_global_norm(1.0), gradx.adamw(1e-2, weight_decay=0.1))
    fast = fused(tx)

    def step(tx, params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gradx.apply_updates(params, updates), state

    out = {}
    for name, t, p, g in (("reference", tx, params, grads), ("tree", fast, params, grads),
                          ("flat", fast, flatten_params(params), flatten_params(grads))):
        state = t.init(p)
        compiled = jax.jit(step, static_argnums=0).lower(t, p, state, g).compile()
        out[name] = (compiled.as_text().count("all-gather"), compiled(p, state, g))
    assert isinstance(out["flat"][1][1], FusedState)
    flat = out["flat"][1][0]
    assert [b.shape for b in flat.buckets] == [(21,)], flat.buckets
    assert flat.buckets[0].sharding.is_fully_replicated
    assert len(flat.buckets[0].sharding.device_set) == 8
    for x, k in zip(flat.inplace, ("v", "w")):  # sharded: in place, as they were
        assert x.sharding.is_equivalent_to(params[k].sharding, x.ndim), (k, x.sharding)
    reference = out["reference"][1][0]
    for name in ("tree", "flat"):
        new = out[name][1][0]
        new = unflatten_params(new) if name == "flat" else new
        for k in params:
            a, e = np.asarray(new[k]), np.asarray(reference[k])
            np.testing.assert_allclose(a, e, rtol=0, atol=4e-7 * np.abs(e).max(), err_msg=k)
            assert new[k].sharding.is_equivalent_to(reference[k].sharding, e.ndim), k
        assert out[name][0] <= out["reference"][0], (name, out[name][0], out["reference"][0])
    print("all-gathers", {k: v[0] for k, v in out.items()})
""")


def test_sharded_leaves_stay_in_place_and_add_no_all_gather():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "all-gathers" in done.stdout
