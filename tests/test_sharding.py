"""State on many devices (gradx.sharding, the state built from the params, per-device memory,
sharded checkpoints): 8 simulated CPU devices in one subprocess (tests/multidevice_checks.py),
two processes over jax.distributed (examples/distributed.py), and the one-device cases here."""

import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import gradx
from gradx import plumbing, sharding

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(args, timeout):
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_on_eight_devices():
    """Every check of tests/multidevice_checks.py passes on a (data=2, model=4) mesh."""
    result = _run([str(ROOT / "tests" / "multidevice_checks.py")], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert sum(line.startswith("ok check_") for line in result.stdout.splitlines()) == 7


def test_two_processes_match_one_process():
    """Two processes of 4 devices (jax.distributed on 127.0.0.1) train as one process of 8,
    and their sharded checkpoint restores bit for bit there and, resharded, in one process."""
    plot = ROOT / "examples" / "out" / "distributed.png"
    started = time.time() - 1
    result = _run([str(ROOT / "examples" / "distributed.py"), "--smoke", "--processes", "2",
                   "--timeout", "240"], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert plot.stat().st_mtime >= started and plot.stat().st_size > 10_000  # the example's plot
    lines = result.stdout.splitlines()
    assert any("checkpoint restored bit for bit" in line for line in lines), result.stdout
    difference = next(line for line in lines if "2 processes vs 1 process" in line)
    # 3 AdamW steps of lr 1e-3: at most 1e-3 of the 3e-3 that they can move a parameter.
    assert float(difference.split("largest difference ")[1].split()[0]) <= 1e-3 * 1e-3 * 3


@pytest.mark.parametrize("value, dtype, like", [
    (0.1, jnp.float32, jnp.ones((3, 2), jnp.bfloat16)),      # a float32 moment of bf16 params
    (0.1, None, jnp.ones((3, 2), jnp.bfloat16)),
    (0, None, jnp.ones(4, jnp.complex64)),
    (1.5, jnp.float32, jnp.ones(4, jnp.complex64)),
    (-3, None, jnp.ones((2, 2), jnp.int32)),
    (0, None, 2.0),
])
def test_filled_like_is_jnp_full_also_under_jit(value, dtype, like):
    expected = jnp.full(jnp.shape(like), value, dtype or jnp.result_type(like))
    for fill in (plumbing.filled_like, jax.jit(plumbing.filled_like, static_argnums=(1, 2))):
        got = fill(like, value, dtype)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_filled_like_drops_axes_and_takes_shapes():
    x = jnp.full((2, 3, 4), jnp.nan)           # NaN params still give the fill value
    np.testing.assert_array_equal(plumbing.filled_like(x, 2.0, drop_axes=(0, 2)), [2.0] * 3)
    shape = jax.ShapeDtypeStruct((2, 3), jnp.bfloat16)
    got = plumbing.filled_like(shape, 0, drop_axes=(1,))
    assert got.shape == (2,) and got.dtype == jnp.bfloat16
    zeros = plumbing.zeros_shaped({"a": jax.ShapeDtypeStruct((2,), jnp.int8)})
    assert zeros["a"].dtype == jnp.int8 and not zeros["a"].any()


def test_one_device_shardings_memory_and_spread_blocks():
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    tx = gradx.adamw(1e-3)
    device = jax.devices()[0]
    assert all(s.device_set == {device} for s in jax.tree.leaves(
        sharding.state_shardings(tx, params)))
    report = gradx.memory_report(tx, params)
    assert report.device_bytes is None and report.max_device_bytes is None
    mesh = jax.make_mesh((1,), ("data",))
    zero1 = sharding.zero1_shardings(tx, params, mesh)
    assert zero1[0].mu["w"].spec == P("data") and zero1[0].count.spec == P()
    report = gradx.memory_report(tx, params, shardings=zero1)
    assert report.total_bytes == 4 + 2 * 4 * 15 and report.device_bytes == {device.id: 124}
    abstract = sharding.abstract_state(tx, params, zero1)
    assert abstract[0].mu["w"].sharding == zero1[0].mu["w"]
    state = jax.jit(tx.init, out_shardings=zero1)(params)
    assert state[0].nu["b"].sharding == zero1[0].nu["b"]
    # No mesh: the blocks come back as they are, also under jit.
    blocks = jnp.stack([jnp.eye(3)] * 4)
    assert sharding.spread_blocks(blocks, "data") is blocks
    np.testing.assert_array_equal(jax.jit(lambda b: sharding.spread_blocks(b, "data"))(blocks),
                                  blocks)


def test_missing_mesh_axis_is_named():
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match=r"axis='batch' is not an axis of the mesh; its axes "
                                         r"are \('data',\)"):
        sharding.zero1_shardings(gradx.adam(1e-3), {"w": jnp.ones(2)}, mesh, axis="batch")
    with pytest.raises(ValueError, match="axis='model'"):
        sharding.spread_blocks(jnp.ones((2, 2, 2)), "model", mesh)
    with pytest.raises(ValueError, match="shardings must have the state's structure"):
        gradx.memory_report(gradx.adam(1e-3), {"w": jnp.ones(2)},
                            shardings={"w": NamedSharding(mesh, P())})
