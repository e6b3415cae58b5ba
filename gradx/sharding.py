"""Optimizer state on many devices: its shardings derived from the params', ZeRO-1, and the
split of stacked preconditioner blocks over a mesh axis.

Every gradx state leaf is built from its parameter (``plumbing.filled_like``), so it takes the
parameter's sharding wherever ``tx.init`` runs: eagerly, under ``jax.jit`` and under a mesh with
explicit axes (``jax.set_mesh``). Adafactor's row and column statistics are sharded along the
axes they keep; counts, hyperparameters and other scalars are replicated (outside a mesh
context JAX leaves an eager scalar uncommitted on the default device, and the first jitted
step replicates it). Differs from Optax, whose ``zeros_like`` state keeps a concrete array's
sharding but lands on one device under ``jax.jit(tx.init)`` (``init`` reads only the params'
shapes, so ``jit`` drops them).

The helpers here answer from shapes, without allocating (the params may be
``jax.ShapeDtypeStruct`` leaves with shardings, for a model larger than the machine):

- ``state_shardings(tx, params)``: the state's shardings, for ``jax.jit(..., out_shardings=)``
  and for restore targets (``abstract_state``);
- ``zero1_shardings(tx, params, mesh, axis="data")``: ZeRO-1 (Rajbhandari et al., "ZeRO: Memory
  Optimizations Toward Training Trillion Parameter Models", SC 2020, stage 1): the state
  additionally split over the data-parallel axis, so each device holds about ``1/N`` of it;
- ``spread_blocks(blocks, axis, mesh)``: a stack of preconditioner blocks (leading block axis)
  constrained to be split over a mesh axis, so that each device computes the matrix roots of its
  own blocks rather than the compiler splitting the inside of one ``eigh``.

A sharding that does not divide a leaf falls back to replication for that leaf, never an XLA
error (``gradx.memory_report`` lists those leaves); a mesh axis name that does not exist raises
``ValueError`` naming it. ``gradx.memory_report(tx, params, shardings=...)`` gives what each
device holds.

ZeRO-1 training step (params replicated over ``data``, batch split over it)::

    state_sh = gradx.sharding.zero1_shardings(tx, params, mesh, axis="data")
    state = jax.jit(tx.init, out_shardings=state_sh)(params)
    param_sh = jax.tree.map(lambda p: p.sharding, params)
    step = jax.jit(train_step, in_shardings=(param_sh, state_sh, batch_sh),
                   out_shardings=(param_sh, state_sh), donate_argnums=(0, 1))

Not in Optax.
"""

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from gradx.base import GradientTransformation


def _fits(sharding: Sharding, shape: Sequence[int]) -> bool:
    """Whether ``sharding`` can hold an array of ``shape``: no more partitioned axes than the
    array has, each split into equal shards."""
    spec = getattr(sharding, "spec", None)
    if spec is not None and len(spec) > len(shape):
        return False
    try:
        sharding.shard_shape(tuple(shape))
    except ValueError:
        return False
    return True


def _replicated(sharding: Sharding) -> Sharding:
    """The fully replicated sharding over ``sharding``'s devices (its mesh for a
    ``NamedSharding``)."""
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec(), memory_kind=sharding.memory_kind)
    if len(sharding.device_set) == 1:
        return sharding
    devices = np.array(sorted(sharding.device_set, key=lambda d: d.id))
    return NamedSharding(jax.sharding.Mesh(devices, ("devices",)), PartitionSpec())


def fitted(sharding: Sharding, shape: Sequence[int]) -> Sharding:
    """``sharding`` if it can hold an array of ``shape`` (no more partitioned axes than the
    array has, each split into equal shards), else the replicated sharding over its devices:
    the fallback of every helper here, where an uneven split would be an XLA error."""
    return sharding if _fits(sharding, shape) else _replicated(sharding)


def _mesh_of(params: Any) -> Optional[jax.sharding.Mesh]:
    """The mesh of the first leaf placed with a ``NamedSharding``, or None."""
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


def _placed(params: Any, mesh: Optional[jax.sharding.Mesh]) -> Any:
    """The params as ``ShapeDtypeStruct`` leaves with a sharding each: their own where it fits,
    replicated over ``mesh`` where it does not or where they have none (when there is a mesh)."""

    def place(leaf):
        sharding = getattr(leaf, "sharding", None)
        if mesh is not None and not isinstance(sharding, NamedSharding):
            sharding = NamedSharding(mesh, PartitionSpec())
        if sharding is not None:
            sharding = fitted(sharding, np.shape(leaf))
        return jax.ShapeDtypeStruct(np.shape(leaf), jax.dtypes.result_type(leaf), sharding=sharding)

    return jax.tree.map(place, params)


def state_shardings(tx: GradientTransformation, params: Any) -> Any:
    """The shardings of ``tx.init(params)``, a tree of the state's structure, without allocating.

    ``params``: arrays or ``jax.ShapeDtypeStruct`` leaves, placed with ``NamedSharding``s on one
    mesh (a leaf without one counts as replicated over that mesh; a sharding that does not
    divide its leaf, as replicated). ``tx.init`` is compiled, not run: state leaves shaped like
    a parameter get its sharding, Adafactor's factored statistics the sharding of the axes they
    keep, scalars the replicated sharding over the mesh. Without any mesh in the params, every
    leaf gets the params' device (or the default device).

    Use it as ``jax.jit(tx.init, out_shardings=state_shardings(tx, params))``, in a training
    step's ``in_shardings``/``out_shardings``, or for restore targets (``abstract_state``).
    """
    mesh = _mesh_of(params)
    placed = _placed(params, mesh)
    compiled = jax.jit(tx.init, keep_unused=True).lower(placed).compile()
    shardings = compiled.output_shardings
    if mesh is None:
        return shardings
    return jax.tree.map(
        lambda s: s if isinstance(s, NamedSharding) else NamedSharding(mesh, PartitionSpec()),
        shardings)


def _spec_entries(sharding: Sharding, ndim: int) -> list:
    """A ``NamedSharding``'s spec as one tuple of mesh axis names per array axis."""
    spec = list(getattr(sharding, "spec", ())) + [None] * ndim
    return [() if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
            for entry in spec[:ndim]]


def check_axis(mesh: jax.sharding.Mesh, axis: str) -> None:
    if axis not in mesh.axis_names:
        raise ValueError(f"axis={axis!r} is not an axis of the mesh; its axes are "
                         f"{tuple(mesh.axis_names)}.")


def zero1_shardings(tx: GradientTransformation, params: Any, mesh: jax.sharding.Mesh,
                    axis: str = "data") -> Any:
    """ZeRO-1: the shardings of ``tx.init(params)`` additionally split over the data-parallel
    mesh axis ``axis``; a tree of the state's structure.

    Each state leaf starts from its ``state_shardings`` spec on ``mesh`` and is also split over
    ``axis`` along its first dimension that stays evenly divisible (by the sizes of the mesh
    axes already on that dimension times ``mesh.shape[axis]``); a leaf with no such dimension
    (scalars, small or odd-sized leaves) stays as it was, replicated over ``axis``. The params
    and gradients keep their own shardings: the compiler then computes each device's share of
    the update and gathers the new params, and per-device state memory drops to about
    ``1/mesh.shape[axis]`` (``gradx.memory_report(tx, params, shardings=...)`` gives the figures).
    Numbers equal the replicated step's up to float rounding.

    Raises ``ValueError`` when ``axis`` is not an axis of ``mesh``.
    """
    check_axis(mesh, axis)
    size, order = mesh.shape[axis], list(mesh.axis_names)
    shapes = jax.eval_shape(tx.init, _placed(params, _mesh_of(params)))

    def split(shape_struct, sharding):
        shape = shape_struct.shape
        entries = _spec_entries(sharding, len(shape))
        if isinstance(sharding, NamedSharding) and sharding.mesh.axis_names != mesh.axis_names:
            entries = [()] * len(shape)
        if not any(axis in entry for entry in entries):
            for dim, (n, entry) in enumerate(zip(shape, entries)):
                ways = int(np.prod([mesh.shape[a] for a in entry])) * size
                if n > 0 and n % ways == 0:
                    entries[dim] = tuple(sorted(entry + (axis,), key=order.index))
                    break
        spec = [None if not e else e[0] if len(e) == 1 else e for e in entries]
        while spec and spec[-1] is None:
            spec.pop()
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(split, shapes, state_shardings(tx, params))


def abstract_state(tx: GradientTransformation, params: Any, shardings: Any = None) -> Any:
    """``tx.init(params)`` as ``jax.ShapeDtypeStruct`` leaves carrying their shardings
    (``state_shardings`` unless ``shardings`` is given, e.g. ``zero1_shardings``), without
    allocating: the target for ``gradx.checkpoint.restore`` or Orbax onto a mesh."""
    placed = _placed(params, _mesh_of(params))
    shardings = state_shardings(tx, params) if shardings is None else shardings
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        jax.eval_shape(tx.init, placed), shardings)


def spread_blocks(blocks: Any, axis: str, mesh: Optional[jax.sharding.Mesh] = None) -> Any:
    """Constrains each stack of blocks in ``blocks`` (a pytree of arrays whose leading axis
    indexes blocks, e.g. ``(num_blocks, n, n)`` preconditioner blocks) to be split over the mesh
    axis ``axis`` along that leading axis, the other axes whole.

    For a second-order engine: called on the stacked statistics before a batched matrix root
    or ``eigh``, each device then computes the roots of its own blocks (no communication inside
    one decomposition), and the results keep that split. ``mesh`` defaults to the mesh context
    (``jax.set_mesh``); without either, or on a one-device mesh, ``blocks`` is returned
    unchanged. A stack whose block count is not a multiple of ``mesh.shape[axis]`` is left to
    the compiler (pad the stack, e.g. with identity blocks, to a multiple to split it). Under
    ``jit``, as ``jax.lax.with_sharding_constraint`` (``jax.sharding.reshard`` for an explicit
    axis).

    Raises ``ValueError`` when ``axis`` is not an axis of the mesh.
    """
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh.empty:
        return blocks
    check_axis(mesh, axis)
    size = mesh.shape[axis]
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    explicit = axis in getattr(mesh, "explicit_axes", ())

    def spread(stack):
        if size == 1 or np.ndim(stack) == 0 or np.shape(stack)[0] % size:
            return stack
        if explicit:
            return jax.sharding.reshard(stack, sharding)
        return jax.lax.with_sharding_constraint(stack, sharding)

    return jax.tree.map(spread, blocks)


__all__ = ["state_shardings", "zero1_shardings", "abstract_state", "spread_blocks", "fitted"]
