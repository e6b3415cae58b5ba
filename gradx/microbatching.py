"""Microbatching: evaluate a function over a large batch one slice at a time, in a
``lax.fori_loop``, and combine the slices' results (sum, mean, running mean or concatenation);
Optax's ``optax.microbatching`` (``microbatch`` also at the top level).

The batch axis of each batched argument is reshaped to ``(num_microbatches, microbatch_size)``
in column-major order (``reshape_batch_axis``), so microbatch ``i`` holds the rows
``i, i + n, i + 2n, ...``: a sharding of the batch axis carries over to the ``microbatch_size``
axis, and a concatenation puts the rows back in their original order.

Examples:
  >>> fun = lambda x: (x + 1, jnp.sum(3 * x))
  >>> acc = gradx.microbatching.AccumulationType
  >>> gradx.microbatch(fun, argnums=0, microbatch_size=2, accumulator=(acc.CONCAT, acc.SUM))(
  ...     jnp.array([1, 2, 3, 4]))
  (Array([2, 3, 4, 5], dtype=int32), Array(30, dtype=int32))
"""

import collections
import dataclasses
import enum
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = ["Accumulator", "AccumulationType", "microbatch", "micro_grad", "micro_vmap",
           "reshape_batch_axis"]

Function = Callable[..., Any]
IndividualOutputs = collections.namedtuple("Aux", ["values", "metrics", "aux"])


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """How microbatch results combine: ``carry = init(shape of one result)``; for each
    microbatch ``carry = update(carry, result, index)``; the answer is ``finalize(carry)``.
    ``aggregate`` reduces a stacked batch of results at once (``micro_vmap``)."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, int], Any]
    finalize: Callable[[Any], Any]
    aggregate: Callable[[Any], Any]


class AccumulationType(enum.Enum):
    """The built-in accumulators."""
    MEAN = enum.auto()
    """Average the microbatch outputs (divides by the number of microbatches)."""
    SUM = enum.auto()
    """Sum the microbatch outputs."""
    RUNNING_MEAN = enum.auto()
    """Average the microbatch outputs actually run (``num_real_microbatches``)."""
    CONCAT = enum.auto()
    """Concatenate the microbatch outputs along axis 0."""


def reshape_batch_axis(tree: Any, microbatch_size: int, axis: int = 0) -> Any:
    """Each leaf's ``axis`` (of size ``n·microbatch_size``) split into
    ``(n, microbatch_size)`` in column-major order, keeping explicit shardings on the
    ``microbatch_size`` axis."""
    def reshape(x):
        new_shape = x.shape[:axis] + (-1, microbatch_size) + x.shape[axis + 1:]
        sharding = jax.typeof(x).sharding
        if not sharding.mesh.are_all_axes_explicit:
            return x.reshape(new_shape, order="F")
        spec = sharding.spec
        new_spec = spec if len(spec) < axis else jax.P(*spec[:axis], None, spec[axis],
                                                        *spec[axis + 1:])
        shards = x.shape[axis] // sharding.shard_shape(x.shape)[axis]
        if microbatch_size % shards != 0:
            raise ValueError(f"nshards={shards} must evenly divide "
                             f"microbatch_size={microbatch_size}.")
        return x.reshape(new_shape, order="F",
                         out_sharding=jax.sharding.NamedSharding(sharding.mesh, new_spec))

    return jax.tree.map(reshape, tree)


def _floating_only(init):
    def checked(value):
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise ValueError("MEAN and RUNNING_MEAN Accumulators require floating-point values.")
        return init(value)
    return checked


def _running_mean_update(carry, value, index):
    kept = index / (index + 1)
    return carry * kept + value * (1 - kept)


def _concat(num_microbatches: int) -> Accumulator:
    def init(value):
        return jnp.broadcast_to(jnp.zeros_like(value), (num_microbatches,) + value.shape)

    def finalize(carry):
        sharding = jax.typeof(carry).sharding
        kwargs = {}
        if sharding.mesh.are_all_axes_explicit:  # the leading axis is not sharded: drop it
            spec = jax.P(*sharding.spec[1:]) if sharding.spec else jax.P()
            kwargs = {"out_sharding": jax.sharding.NamedSharding(sharding.mesh, spec)}
        return carry.reshape(-1, *carry.shape[2:], order="F", **kwargs)

    return Accumulator(init, lambda carry, value, index: carry.at[index].set(value), finalize,
                       lambda x: x)


def _leaf_accumulator(kind: AccumulationType, num_microbatches: int) -> Accumulator:
    """The accumulator of one array for a built-in type."""
    if kind in (AccumulationType.MEAN, AccumulationType.CONCAT) and num_microbatches <= 0:
        raise ValueError(f"num_microbatches={num_microbatches} must be positive.")
    identity = lambda x: x  # noqa: E731
    add = lambda carry, value, _: carry + value  # noqa: E731
    if kind is AccumulationType.SUM:
        return Accumulator(jnp.zeros_like, add, identity, functools.partial(jnp.sum, axis=0))
    if kind is AccumulationType.MEAN:
        return Accumulator(_floating_only(jnp.zeros_like), add,
                           lambda carry: carry / num_microbatches,
                           functools.partial(jnp.mean, axis=0))
    if kind is AccumulationType.RUNNING_MEAN:
        return Accumulator(_floating_only(jnp.zeros_like), _running_mean_update, identity,
                           functools.partial(jnp.mean, axis=0))
    return _concat(num_microbatches)


def _tree_accumulator(leaf: Accumulator) -> Accumulator:
    """An array accumulator applied to every leaf of a tree of results."""
    return Accumulator(
        lambda value: jax.tree.map(leaf.init, value),
        lambda carry, value, i: jax.tree.map(lambda c, v: leaf.update(c, v, i), carry, value),
        lambda carry: jax.tree.map(leaf.finalize, carry),
        lambda values: jax.tree.map(leaf.aggregate, values))


def _canonicalize(spec: Any, num_microbatches: int) -> Accumulator:
    """One accumulator from an ``Accumulator``, an ``AccumulationType`` or a tree of them (a
    prefix of the results' tree)."""
    def one(acc):
        if isinstance(acc, Accumulator):
            return acc
        if isinstance(acc, AccumulationType):
            return _tree_accumulator(_leaf_accumulator(acc, num_microbatches))
        raise ValueError(f"Unknown accumulator: {acc}")

    accumulators = jax.tree.map(one, spec)
    return Accumulator(
        lambda values: jax.tree.map(lambda acc, v: acc.init(v), accumulators, values),
        lambda carry, value, index: jax.tree.map(
            lambda acc, c, v: acc.update(c, v, index), accumulators, carry, value),
        lambda carry: jax.tree.map(lambda acc, c: acc.finalize(c), accumulators, carry),
        lambda values: jax.tree.map(lambda acc, v: acc.aggregate(v), accumulators, values))


def microbatch(fun: Function, argnums: int | Sequence[int], microbatch_size: int | None,
               accumulator: Any = AccumulationType.SUM, *, argnames: str | Sequence[str] = (),
               in_axes: int | Sequence[int] = 0,
               num_real_microbatches: int | jax.Array | None = None) -> Function:
    """``fun`` evaluated on slices of ``microbatch_size`` rows of its batched arguments
    (positions ``argnums``, keywords ``argnames``, batch axes ``in_axes``) one after another,
    the results combined by ``accumulator`` (an ``AccumulationType``, an ``Accumulator`` or a
    tree of them matching a prefix of ``fun``'s output). ``microbatch_size=None`` returns
    ``fun``; ``num_real_microbatches`` stops the loop early (a traced count: no recompile)."""
    if microbatch_size is None:
        return fun
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    argnames = (argnames,) if isinstance(argnames, str) else tuple(argnames)
    if isinstance(in_axes, int):
        in_axes = (in_axes,) * (len(argnums) + len(argnames))
    batched = [*argnums, *argnames]

    def microbatched(*args, **kwargs):
        inputs = {**dict(enumerate(args)), **kwargs}
        sizes = jax.tree.leaves([jax.tree.map(lambda x: x.shape[axis], inputs[key])  # noqa: B023
                                 for key, axis in zip(batched, in_axes)])
        if len(set(sizes)) > 1:
            raise ValueError(f"Batch Arguments must have equal-size batch axes, found {sizes}.")
        if sizes[0] % microbatch_size != 0:
            raise ValueError(f"batch_size={sizes[0]} must be divisible by "
                             f"microbatch_size={microbatch_size}.")
        for key, axis in zip(batched, in_axes):
            inputs[key] = reshape_batch_axis(inputs[key], microbatch_size, axis)
        num_microbatches = sizes[0] // microbatch_size
        acc = _canonicalize(accumulator, num_microbatches)

        def on_slice(index):
            sliced = dict(inputs)
            for key, axis in zip(batched, in_axes):
                sliced[key] = jax.tree.map(functools.partial(jnp.take, indices=index, axis=axis),
                                           inputs[key])
            return fun(*(sliced[i] for i in range(len(args))),
                       **{k: sliced[k] for k in kwargs})

        steps = num_microbatches if num_real_microbatches is None else num_real_microbatches
        carry = jax.lax.fori_loop(0, steps, lambda i, c: acc.update(c, on_slice(i), i),
                                  acc.init(jax.eval_shape(on_slice, 0)))
        return acc.finalize(carry)

    return microbatched


def micro_vmap(fun: Function, in_axes: int | Sequence[int] = 0, out_axes: Any = 0, *,
               microbatch_size: int | None = None, vmap_fn: Callable = jax.vmap,
               accumulator: Any = AccumulationType.CONCAT,
               num_real_microbatches: int | jax.Array | None = None) -> Function:
    """``vmap_fn(fun, in_axes)`` over microbatches of ``microbatch_size`` rows at a time, each
    microbatch's outputs reduced by ``accumulator``'s ``aggregate`` and the microbatches
    combined by the accumulator (``CONCAT``: the same result as ``jax.vmap``; ``SUM``/``MEAN``
    reduce over the batch without materialising it). ``out_axes`` must be 0; keyword arguments
    are mapped along axis 0.

    Examples:
      >>> gradx.microbatching.micro_vmap(lambda x: x ** 2, microbatch_size=4)(jnp.arange(8))
      Array([ 0,  1,  4,  9, 16, 25, 36, 49], dtype=int32)
    """
    if out_axes != 0:
        raise NotImplementedError("out_axis != 0 is not currently supported")
    in_axes = (in_axes,) if isinstance(in_axes, int) else tuple(in_axes)

    def vmapped_and_aggregated(*args, kwargs):
        output = vmap_fn(fun, in_axes, out_axes)(*args, **kwargs)
        size = jax.tree.leaves(output)[0].shape[0]
        return _canonicalize(accumulator, size).aggregate(output)

    mapped = [i for i, axis in enumerate(in_axes) if axis is not None]
    run = microbatch(vmapped_and_aggregated, argnums=tuple(mapped), argnames="kwargs",
                     microbatch_size=microbatch_size, accumulator=accumulator,
                     in_axes=tuple(in_axes[i] for i in mapped) + (0,),
                     num_real_microbatches=num_real_microbatches)
    return lambda *args, **kwargs: run(*args, kwargs=kwargs)


def micro_grad(fun: Function, has_aux: bool = False, argnums: int | Sequence[int] = 0, *,
               batch_argnums: int | Sequence[int] = 1, keep_batch_dim: bool = True,
               microbatch_size: int | None = None, accumulator: Any = AccumulationType.SUM,
               transform_fn: Callable[[Any], Any] = lambda x: x,
               metrics_fn: Callable[[Any], Any] = lambda x: None,
               num_real_microbatches: int | jax.Array | None = None) -> Function:
    """Per-example gradients of ``fun``, each passed through ``transform_fn`` (e.g. clipping)
    and combined by ``accumulator`` over the batch (arguments ``batch_argnums``), in microbatches.

    Returns a function giving ``(combined, Aux(values, metrics, aux))``: the per-example values
    of ``fun``, ``metrics_fn`` of each per-example gradient, and ``fun``'s own aux output
    (``has_aux``). With ``keep_batch_dim``, ``fun`` sees each example with a batch axis of 1.

    Examples:
      >>> def loss(params, features, targets):
      ...   return 0.5 * jnp.mean((features @ params - targets) ** 2)
      >>> (grads, squares), aux = gradx.microbatching.micro_grad(
      ...     loss, argnums=0, batch_argnums=(1, 2),
      ...     accumulator=gradx.microbatching.AccumulationType.MEAN,
      ...     transform_fn=lambda g: (g, g ** 2), metrics_fn=jnp.linalg.norm,
      ... )(jnp.zeros(1), jnp.ones((4, 1)), jnp.array([0., 2., 4., 6.]))
      >>> grads.tolist(), squares.tolist(), aux.metrics.tolist()
      ([-3.0], [14.0], [0.0, 2.0, 4.0, 6.0])
    """
    batch_argnums = (batch_argnums,) if isinstance(batch_argnums, int) else tuple(batch_argnums)
    with_aux = fun if has_aux else lambda *args, **kwargs: (fun(*args, **kwargs), None)
    value_and_grad = jax.value_and_grad(with_aux, argnums, has_aux=True)

    def per_example(*args, **kwargs):
        (value, aux), grad = value_and_grad(*args, **kwargs)
        return transform_fn(grad), IndividualOutputs(values=value, metrics=metrics_fn(grad),
                                                     aux=aux)

    in_axes = [None] * (max(batch_argnums) + 1)
    for i in batch_argnums:
        in_axes[i] = 0
    per_batch = micro_vmap(per_example, in_axes=in_axes,
                           accumulator=(accumulator, AccumulationType.CONCAT),
                           microbatch_size=microbatch_size,
                           num_real_microbatches=num_real_microbatches)
    if not keep_batch_dim:
        return per_batch

    def with_example_axis(*args, **kwargs):
        args = list(args)
        for i in batch_argnums:
            args[i] = jax.tree.map(lambda x: jnp.expand_dims(x, axis=1), args[i])
        return per_batch(*args, **kwargs)

    return with_example_axis
