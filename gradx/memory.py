"""How much memory an optimizer state takes, computed from shapes alone.

``memory_report(tx, params)`` traces ``tx.init`` with ``jax.eval_shape``, so nothing is
allocated: ``params`` may be real arrays or ``jax.ShapeDtypeStruct`` stand-ins for a model far
larger than the machine. The report gives the state's bytes in total, per parameter leaf, per
state buffer (``"0/mu"``, ``"0/nu"``, ``"0/count"``, ...), per top-level state entry and, when
labels are given, per parameter group; ``print(report)`` shows it as tables.

A state leaf belongs to the parameter whose path is the longest suffix of the leaf's path
(Adam's ``0/mu/dense/kernel`` belongs to ``dense/kernel``; Adafactor's row and column
statistics too, though their shapes differ). Leaves that end in no parameter's path (step
counts, scalars, PRNG keys) are counted as *shared*. The trailing ``.value`` of Flax NNX
variables is ignored, so ``nnx.State`` params work as plain dicts do. A state class that keeps
per-parameter structures of other shapes (``gradx.matrix``'s factor stacks) names those fields in
``PER_PARAM_FIELDS``: each parameter owns its own entry of such a field, and the buffer is the
field. Such a class may also say how it treats each parameter (``memory_notes(params)``, one
string per leaf), shown in the report's ``note`` column (e.g. a leaf Shampoo cannot
precondition falls back to its graft).

Textbook figures, as multiples of the params' bytes (``report.buffers_per_param``): SGD 0,
SGD with momentum 1, Adam/AdamW/LAMB 2, Lion 1, Adafactor ``(rows + cols) / (rows * cols)``
for each factored matrix (plus a full second moment for the leaves it does not factor).

Usage::

    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    report = memory_report(adamw(1e-3), shapes, labels=weight_decay_mask())
    print(report)               # tables
    report.total_bytes          # int
    report.buffers_per_param    # 2.0 for AdamW

Per device: when the params carry shardings (``NamedSharding`` on arrays or on
``ShapeDtypeStruct`` leaves), or given ``shardings=`` for the state (``gradx.sharding.
zero1_shardings(...)``, or one sharding for every leaf), the report also gives the state bytes
each device holds (``report.device_bytes``, ``report.max_device_bytes``), and lists the leaves
whose sharding does not divide them, counted whole on each of its devices (``report.fallbacks``)::

    report = memory_report(tx, params, shardings=gradx.sharding.zero1_shardings(tx, params, mesh))
    report.max_device_bytes     # about 1/N of the replicated state over a data axis of size N

Not in Optax.
"""

from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import jax
import numpy as np

from gradx import fused
from gradx import sharding as sharding_lib
from gradx.base import GradientTransformation
from gradx.groups import leaf_path
from gradx.masking import resolve_mask

SHARED = "<shared>"


def leaf_nbytes(leaf: Any) -> int:
    """Bytes of one array-like leaf (``jax.Array``, tracer, ``np.ndarray``,
    ``ShapeDtypeStruct``, Python scalar as JAX stores it); a typed PRNG key counts its
    underlying key data."""
    dtype = leaf_dtype(leaf)
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(np.shape(leaf), dtype))
        return int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
    return int(np.prod(np.shape(leaf))) * np.dtype(dtype).itemsize


def leaf_dtype(leaf: Any):
    """A leaf's dtype; a Python scalar gets the dtype JAX would store it in."""
    dtype = getattr(leaf, "dtype", None)
    return jax.dtypes.canonicalize_dtype(np.result_type(leaf)) if dtype is None else dtype


def _keys(key_path) -> tuple[str, ...]:
    """A leaf's path as a tuple of strings, without NNX's trailing ``.value``."""
    path = leaf_path(key_path)
    return () if path == "<root>" else tuple(path.split("/"))


class ParamMemory(NamedTuple):
    """One parameter leaf: its shape, dtype, own bytes and the state bytes that belong to it."""

    path: str
    shape: tuple
    dtype: str
    param_bytes: int
    state_bytes: int
    group: Any = None
    note: str = ""


class MemoryReport(NamedTuple):
    """An optimizer state's memory; see ``memory_report``.

    ``params``: one ``ParamMemory`` per parameter leaf, in flattening order.
    ``buffers``: state bytes per buffer, a state leaf's path with the parameter's path removed
    (``"0/mu"``); the shared leaves keep their full path (``"0/count"``).
    ``entries``: state bytes per top-level entry of the state (the first key of each path).
    ``groups``: state bytes per parameter group (``None`` without ``labels``), shared leaves
    under ``"<shared>"``.
    ``device_bytes``: state bytes held by each device, by device id (``None`` without
    shardings); ``fallbacks``: the paths of the params and state leaves whose sharding does not
    divide them, held whole (replicated over that sharding's devices) instead.
    """

    params: tuple
    buffers: Mapping[str, int]
    entries: Mapping[str, int]
    groups: Optional[Mapping[Any, int]]
    shared_bytes: int
    device_bytes: Optional[Mapping[int, int]] = None
    fallbacks: tuple = ()

    @property
    def total_bytes(self) -> int:
        """All the state's bytes."""
        return sum(self.buffers.values())

    @property
    def param_bytes(self) -> int:
        """The params' own bytes (not part of the state)."""
        return sum(p.param_bytes for p in self.params)

    @property
    def num_params(self) -> int:
        """The number of parameter elements."""
        return sum(int(np.prod(p.shape)) for p in self.params)

    @property
    def bytes_per_param(self) -> float:
        """State bytes per parameter element (Adam in float32: 8, plus the shared count)."""
        return self.total_bytes / max(self.num_params, 1)

    @property
    def buffers_per_param(self) -> float:
        """Per-parameter state bytes over the params' bytes: the number of param-sized buffers
        (SGD 0, momentum 1, Adam 2; shared leaves left out)."""
        return (self.total_bytes - self.shared_bytes) / max(self.param_bytes, 1)

    @property
    def max_device_bytes(self) -> Optional[int]:
        """The most state bytes any one device holds (``None`` without shardings)."""
        return max(self.device_bytes.values(), default=0) if self.device_bytes is not None else None

    def table(self) -> str:
        """The report as text: a row per parameter, per buffer, per entry, per group, totals."""
        with_groups = self.groups is not None
        with_notes = any(p.note for p in self.params)
        header = ("param", "shape", "dtype", "param bytes", "state bytes", "state/param")
        header += (("group",) if with_groups else ()) + (("note",) if with_notes else ())
        rows = [(p.path, str(p.shape), p.dtype, _fmt(p.param_bytes), _fmt(p.state_bytes),
                 f"{p.state_bytes / p.param_bytes:.3g}x" if p.param_bytes else "-")
                + ((str(p.group),) if with_groups else ()) + ((p.note,) if with_notes else ())
                for p in self.params]
        sections = [_format_table(header, rows),
                    _format_table(("state buffer", "bytes"),
                                  [(k, _fmt(v)) for k, v in self.buffers.items()]),
                    _format_table(("state entry", "bytes"),
                                  [(k, _fmt(v)) for k, v in self.entries.items()])]
        if with_groups:
            sections.append(_format_table(("group", "state bytes"),
                                          [(str(k), _fmt(v)) for k, v in self.groups.items()]))
        if self.device_bytes is not None:
            sections.append(_format_table(("device", "state bytes"), [
                (str(d), _fmt(v)) for d, v in sorted(self.device_bytes.items())]))
        if self.fallbacks:
            sections.append("replicated (sharding does not divide them): "
                            + ", ".join(self.fallbacks))
        sections.append(
            f"total state: {_fmt(self.total_bytes)} ({self.total_bytes:,} bytes) for "
            f"{self.num_params:,} parameters ({_fmt(self.param_bytes)}): "
            f"{self.buffers_per_param:.3g} param-sized buffers, {_fmt(self.shared_bytes)} shared")
        return "\n\n".join(sections)

    def __str__(self) -> str:
        return self.table()


def memory_report(tx: GradientTransformation, params: Any, *,
                  labels: Union[Any, Callable[[Any], Any], None] = None,
                  shardings: Any = None) -> MemoryReport:
    """The bytes of ``tx.init(params)``, without allocating it (``jax.eval_shape``).

    ``params``: arrays or ``jax.ShapeDtypeStruct`` leaves (any pytree: dicts, ``FrozenDict``,
    ``nnx.State``). ``labels``: optional group labels, a tree with the params' structure (or a
    prefix of it) or a function ``params -> labels`` (e.g. ``gradx.groups.label_by_path``),
    to add per-group totals. ``shardings``: the state's shardings (a tree of the state's
    structure, or one sharding for every leaf); by default, when the params carry
    ``NamedSharding``s, ``gradx.sharding.state_shardings(tx, params)``. See ``MemoryReport`` for
    what is returned and the module docstring for how state leaves are attributed to
    parameters. The state and params of ``gradx.fused`` are reported in the
    reference layout (``gradx.fused.reference_like``). Not in Optax.
    """
    state = fused.reference_like(jax.eval_shape(tx.init, params))
    params = fused.reference_like(params)
    param_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    owner = {_keys(p): i for i, (p, _) in enumerate(param_leaves)}
    group_of = [None] * len(param_leaves)
    if labels is not None:
        group_of = _broadcast_labels(resolve_mask(labels, params), params)

    state_bytes = [0] * len(param_leaves)
    per_param, notes = _per_param_fields(state, params, len(param_leaves))
    top = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: x is not state)[0]
    entry_names = {_keys(p)[:1]: f"{leaf_path(p)} ({type(x).__name__})" for p, x in top}
    entries = {name: 0 for name in entry_names.values()}
    buffers, shared = {}, 0
    groups = None if labels is None else {label: 0 for label in group_of}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        keys, size = _keys(key_path), leaf_nbytes(leaf)
        index, field = per_param.get(id(leaf), (_owner(owner, keys, leaf), None))
        if field is not None:
            buffer = field
            state_bytes[index] += size
        elif index is None:
            buffer = "/".join(keys) or "<root>"
            shared += size
        else:
            own_length = len(_keys(param_leaves[index][0]))
            buffer = "/".join(keys[:len(keys) - own_length]) or "<root>"
            state_bytes[index] += size
        buffers[buffer] = buffers.get(buffer, 0) + size
        entry = entry_names.get(keys[:1], "<root>")
        entries[entry] = entries.get(entry, 0) + size
        if groups is not None:
            group = SHARED if index is None else group_of[index]
            groups[group] = groups.get(group, 0) + size

    device_bytes, fallbacks = _per_device(tx, params, state, shardings)
    rows = tuple(ParamMemory(path=leaf_path(p), shape=tuple(np.shape(x)),
                             dtype=str(leaf_dtype(x)),
                             param_bytes=leaf_nbytes(x), state_bytes=state_bytes[i],
                             group=group_of[i], note=notes[i])
                 for i, (p, x) in enumerate(param_leaves))
    return MemoryReport(params=rows, buffers=buffers, entries=entries, groups=groups,
                        shared_bytes=shared, device_bytes=device_bytes, fallbacks=fallbacks)


def _per_device(tx, params, state, shardings):
    """``(bytes per device id, fallback paths)`` of the state under ``shardings``, or
    ``(None, ())`` when neither ``shardings`` nor the params' leaves give any."""
    param_shardings = [(path, leaf, getattr(leaf, "sharding", None))
                       for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
    fallbacks = [leaf_path(path) for path, leaf, sharding in param_shardings
                 if sharding is not None
                 and sharding_lib.fitted(sharding, np.shape(leaf)) is not sharding]
    if shardings is None:
        if not any(isinstance(s, jax.sharding.NamedSharding) for _, _, s in param_shardings):
            return None, ()
        shardings = sharding_lib.state_shardings(tx, params)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    if isinstance(shardings, jax.sharding.Sharding):
        per_leaf = [shardings] * len(leaves)
    else:
        try:
            per_leaf = jax.tree.structure(state).flatten_up_to(shardings)
        except (ValueError, TypeError) as error:
            raise ValueError(f"shardings must have the state's structure (tx.init(params)) or "
                             f"be one sharding: {error}") from error
    device_bytes = {}
    for (key_path, leaf), sharding in zip(leaves, per_leaf):
        shape = tuple(np.shape(leaf))
        placed = sharding_lib.fitted(sharding, shape)
        if placed is not sharding:
            fallbacks.append(leaf_path(key_path))
        size, nbytes = int(np.prod(shape)), leaf_nbytes(leaf)
        for device, index in placed.devices_indices_map(shape).items():
            elements = int(np.prod([len(range(*i.indices(n))) for i, n in zip(index, shape)]))
            device_bytes[device.id] = (device_bytes.get(device.id, 0)
                                       + (nbytes // size * elements if size else 0))
    return device_bytes, tuple(fallbacks)


def _broadcast_labels(labels: Any, params: Any) -> list:
    """One label per parameter leaf; ``labels`` has the params' structure or a prefix of it."""
    try:
        full = jax.tree.map(lambda label, sub: jax.tree.map(lambda _: label, sub), labels, params)
    except (ValueError, TypeError) as error:
        raise ValueError(f"labels must have the params' structure or a prefix of it: "
                         f"{error}") from error
    return jax.tree.leaves(full)


def _per_param_fields(state: Any, params: Any, num_params: int) -> tuple[dict, list]:
    """For the state nodes declaring ``PER_PARAM_FIELDS``: ``{id(state leaf): (param index,
    buffer name)}`` for the leaves of those fields, and the nodes' ``memory_notes``."""
    owners, notes = {}, [""] * num_params
    treedef = jax.tree.structure(params)
    declares = lambda x: hasattr(type(x), "PER_PARAM_FIELDS")  # noqa: E731
    for key_path, node in jax.tree_util.tree_flatten_with_path(state, is_leaf=declares)[0]:
        if not declares(node):
            continue
        prefix = "/".join(_keys(key_path))
        for name in node.PER_PARAM_FIELDS:
            subtrees = treedef.flatten_up_to(getattr(node, name))
            for index, subtree in enumerate(subtrees):
                for leaf in jax.tree.leaves(subtree):
                    owners[id(leaf)] = (index, f"{prefix}/{name}" if prefix else name)
        for index, note in enumerate(node.memory_notes(params)):
            notes[index] = note or notes[index]
    return owners, notes


def _owner(owner: Mapping[tuple, int], keys: tuple, leaf: Any) -> Optional[int]:
    """The index of the parameter whose path is the longest suffix of ``keys``. A parameter at
    the root (params that are a single array) owns every state leaf but 0-d ones (counts)."""
    for start in range(len(keys)):
        if keys[start:] in owner:
            return owner[keys[start:]]
    return owner.get(()) if () in owner and np.ndim(leaf) > 0 else None


def _fmt(n: int) -> str:
    """``n`` bytes in binary units (``"32.0 MiB"``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024


def _format_table(header: tuple, rows: list) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


__all__ = ["MemoryReport", "ParamMemory", "memory_report", "leaf_nbytes", "leaf_dtype"]
