"""Data-parallel training over several processes (jax.distributed), with ZeRO-1 optimizer state
and a sharded checkpoint, compared with the same run in one process.

    .venv/bin/python examples/distributed.py [--processes 2] [--devices-per-process 4] [--steps 20] [--smoke]

This script is the launcher and the workers. The launcher picks a free port on 127.0.0.1 and
starts ``--processes`` copies of itself, each with ``--devices-per-process`` simulated CPU
devices (``XLA_FLAGS=--xla_force_host_platform_device_count``), which join one global mesh
with ``jax.distributed.initialize``. Every process runs the same program:

- a 1-D mesh ``("data",)`` over all the global devices; the params (an MLP) replicated, each
  batch split over ``data`` (each process builds its own rows, ``jax.make_array_from_callback``);
- ``gradx.adamw`` with its state split over ``data`` as well (ZeRO-1:
  ``gradx.sharding.zero1_shardings``), used as the jitted step's in/out shardings, so each
  device keeps 1/N of the moments and computes 1/N of the update;
- at the end, ``gradx.checkpoint.save`` from every process (each writes its shards), then
  ``restore`` into ``gradx.sharding.abstract_state`` targets, checked bit for bit.

Meanwhile the launcher runs the same training in its own process with as many devices, waits
for the workers (bounded), restores their checkpoint onto its own mesh (another process count:
Orbax reshards), and checks that the params agree: the two runs reduce the gradients across
devices in a different order (gloo between processes), so they agree to float rounding: within
1e-3 of lr x steps, about the farthest AdamW can move a parameter (see TOLERANCE). It prints
the per-device state memory with and without ZeRO-1 (``gradx.memory_report``) and writes
examples/out/distributed.png (the loss curves).
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
LEARNING_RATE = 1e-3
# The params of the two runs differ by at most this fraction of lr x steps, about the farthest AdamW
# can move a parameter: the gradients' rounding is amplified where Adam divides a near-zero
# gradient by its near-zero RMS (measured: 1.5e-8 to 3e-8 after 3 steps, 4.2e-6 after 20).
TOLERANCE = 1e-3


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--smoke", action="store_true", help="a small model and 3 steps (CI)")
    p.add_argument("--timeout", type=float, default=240, help="seconds to wait for the workers")
    # Set by the launcher for its workers:
    p.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.steps, args.width, args.layers = 3, 64, 2
    return args


def set_devices(count):
    """Simulated CPU devices; must run before jax is imported."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={count}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(args):
    """The training every process runs; returns (losses, final params, tx, state, mesh)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    import gradx

    mesh = jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(0)
    sizes = [16] + [args.width] * args.layers + [4]
    host_params = [{"kernel": rng.normal(size=(a, b)).astype(np.float32) / np.sqrt(a),
                    "bias": np.zeros(b, np.float32)} for a, b in zip(sizes[:-1], sizes[1:])]
    place = lambda x, sharding: jax.make_array_from_callback(  # noqa: E731
        x.shape, sharding, lambda index: x[index])
    params = jax.tree.map(lambda x: place(x, replicated), host_params)
    teacher = rng.normal(size=(16, 4)).astype(np.float32)
    batch = 8 * jax.device_count()
    xs = rng.normal(size=(args.steps, batch, 16)).astype(np.float32)

    def loss_fn(params, x):
        h = x
        for layer in params[:-1]:
            h = jax.nn.gelu(h @ layer["kernel"] + layer["bias"])
        y = h @ params[-1]["kernel"] + params[-1]["bias"]
        return jnp.mean((y - jnp.sin(x @ teacher)) ** 2)

    tx = gradx.adamw(LEARNING_RATE, weight_decay=1e-4)
    state_sh = gradx.sharding.zero1_shardings(tx, params, mesh, axis="data")
    param_sh = jax.tree.map(lambda p: p.sharding, params)
    state = jax.jit(tx.init, out_shardings=state_sh)(params)

    def step(params, state, x):
        loss, grads = jax.value_and_grad(loss_fn)(params, x)
        updates, state = tx.update(grads, state, params)
        return gradx.apply_updates(params, updates), state, loss

    step = jax.jit(step, in_shardings=(param_sh, state_sh, rows),
                   out_shardings=(param_sh, state_sh, replicated), donate_argnums=(0, 1))
    losses = []
    for x in xs:
        params, state, loss = step(params, state, place(x, rows))
        losses.append(float(loss))
    return losses, params, tx, state, state_sh


def worker(args):
    set_devices(args.devices_per_process)
    import jax
    import numpy as np

    from gradx import checkpoint, sharding

    jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=args.processes,
                               process_id=args.process_id, initialization_timeout=60)
    losses, params, tx, state, state_sh = train(args)
    path = os.path.join(args.workdir, "checkpoint")
    checkpoint.save(path, params, state, step=args.steps)          # every process: its shards
    restored = checkpoint.restore(path, params, sharding.abstract_state(tx, params, state_sh))
    for got, want in zip(jax.tree.leaves(restored[:2]), jax.tree.leaves((params, state))):
        assert got.sharding == want.sharding
        for a, b in zip(got.addressable_shards, want.addressable_shards):
            np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    if jax.process_index() == 0:
        np.save(os.path.join(args.workdir, "losses.npy"), np.array(losses))
        print(f"process 0 of {jax.process_count()}, {jax.device_count()} devices: "
              f"final loss {losses[-1]:.6f}; checkpoint restored bit for bit", flush=True)
    jax.distributed.shutdown()


def launcher(args):
    total = args.processes * args.devices_per_process
    workdir = tempfile.mkdtemp(prefix="gradx-distributed-")
    port = free_port()
    workers = [subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--process-id", str(i), "--port", str(port),
         "--workdir", workdir] + [a for a in sys.argv[1:]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(args.processes)]
    started = time.time()
    set_devices(total)
    import jax
    import numpy as np

    import gradx
    from gradx import checkpoint, sharding

    losses, params, tx, state, state_sh = train(args)   # one process, as many devices
    logs = []
    for w in workers:
        try:
            logs.append(w.communicate(timeout=max(1, args.timeout - (time.time() - started)))[0])
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            raise SystemExit(f"the workers did not finish within {args.timeout} s")
    for w, log in zip(workers, logs):
        if w.returncode:
            raise SystemExit(f"a worker failed:\n{log}")
    print(next(line for line in logs[0].splitlines() if line.startswith("process 0")))

    theirs = checkpoint.restore(os.path.join(workdir, "checkpoint"), params,
                                sharding.abstract_state(tx, params, state_sh))
    worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(jax.tree.leaves(theirs.params), jax.tree.leaves(params)))
    bound = TOLERANCE * LEARNING_RATE * args.steps
    print(f"1 process, {jax.device_count()} devices: final loss {losses[-1]:.6f}")
    print(f"params after {args.steps} steps, {args.processes} processes vs 1 process: "
          f"largest difference {worst:.2g} (tolerance {bound:.2g}: {TOLERANCE:g} x lr x steps)")
    if worst > bound:
        raise SystemExit("the multi-process params differ from the one-process params")

    replicated = gradx.memory_report(tx, params, shardings=jax.sharding.NamedSharding(
        state_sh[0].count.mesh, jax.sharding.PartitionSpec()))
    zero1 = gradx.memory_report(tx, params, shardings=state_sh)
    mib = lambda n: f"{n / 2**20:.2f} MiB"  # noqa: E731
    print(f"AdamW state for {zero1.num_params:,} params: {mib(replicated.max_device_bytes)} per "
          f"device replicated, {mib(zero1.max_device_bytes)} per device with ZeRO-1 over "
          f"{jax.device_count()} devices")

    import matplotlib.pyplot as plt

    os.makedirs(OUT, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.load(os.path.join(workdir, "losses.npy")), "-", linewidth=3,
            label=f"{args.processes} processes x {args.devices_per_process} devices")
    ax.plot(losses, "--", label=f"1 process x {total} devices")
    ax.set(xlabel="step", ylabel="training MSE", title="Data parallel, ZeRO-1 AdamW state")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "distributed.png"), dpi=110)
    print("wrote", os.path.join(OUT, "distributed.png"))


if __name__ == "__main__":
    arguments = parse_args()
    worker(arguments) if arguments.process_id is not None else launcher(arguments)
