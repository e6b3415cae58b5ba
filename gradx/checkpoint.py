"""Checkpoints of params and optimizer state together, written with Orbax.

``save(path, params, opt_state, step=...)`` and ``restore(path, params_like, opt_state_like)``
round-trip every leaf exactly (values, shapes, dtypes, typed PRNG keys), whatever the state:
mid-schedule counts, a half-filled ``MultiSteps`` accumulator, ``partition``/``freeze`` states
with masked-out leaves. ``restore`` checks the checkpoint against the trees it is given and
raises a ``ValueError`` naming the first leaf path that differs (a different optimizer, other
groups, another ``mu_dtype``). It reads every gradx state-format version up to
``STATE_FORMAT_VERSION`` (older layouts are upgraded) and refuses a newer or unknown one saying
which, and it checks the data files against the sizes and CRC32 digests recorded at save time,
so a truncated or corrupted checkpoint raises a ``ValueError`` naming the damaged file (other
checkpoints, in other directories, are untouched and stay loadable).

Orbax is not a dependency of gradx: install ``orbax-checkpoint`` to use this module. It is
imported lazily, inside the functions that need it, so ``import gradx`` never imports it.

Layout and atomicity. ``path`` is a directory holding ``checkpoint.json`` (the metadata: format
version, step, every leaf's path, shape, dtype and state classes, and the name of the data
directory) and that data directory, an Orbax checkpoint named ``data-<random hex>``. A save
writes a new data directory (Orbax itself writes it to a temporary name and renames it when
complete), then replaces ``checkpoint.json`` with ``os.replace``, an atomic rename, and only
then deletes the older data directories. A save interrupted at any point (crash, preemption,
``KeyboardInterrupt``) therefore leaves the previous checkpoint readable and intact; the
leftovers of the interrupted save are removed by the next save. Saving again to the same path
replaces the checkpoint; use one path per step to keep several.

Sharded arrays and many processes. Orbax writes sharded arrays shard by shard: with several
processes (``jax.distributed``), every process calls ``save`` and writes the shards it holds,
into a data directory whose name process 0 draws and sends to the others; process 0 writes the
metadata and commits, and ``save`` returns on every process once the commit is done. A leaf that
lives on one process only (an eager scalar, a NumPy array) is saved once, as the replicated value
it is on every process. ``restore`` reads each leaf into the sharding of its like-leaf, so the
same checkpoint restores onto the mesh it was saved from, onto another mesh or process count
(resharding) or onto one device; give ``gradx.sharding.abstract_state(tx, params)`` as
``opt_state_like`` to restore the state sharded like the params without building it first. A
like-leaf without a sharding restores onto the default device (one process) or replicated
over all devices (several).

Usage with a Linen ``TrainState``::

    checkpoint.save(path, state.params, state.opt_state, step=int(state.step))
    params, opt_state, step = checkpoint.restore(path, state.params, state.opt_state)
    state = state.replace(params=params, opt_state=opt_state, step=step)

and with ``flax.nnx`` (``optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)``)::

    checkpoint.save(path, nnx.state(model, nnx.Param), nnx.state(optimizer),
                    step=int(optimizer.step[...]))
    params, optimizer_state, step = checkpoint.restore(path, nnx.state(model, nnx.Param),
                                                       nnx.state(optimizer))
    nnx.update(model, params); nnx.update(optimizer, optimizer_state)

(``nnx.state(optimizer)`` holds the optimizer's step and its ``opt_state``.)

The ``*_like`` trees may hold ``jax.ShapeDtypeStruct`` leaves (e.g. from ``jax.eval_shape``);
restored arrays get the like leaves' shardings when they have one. Flat params and states of
``gradx.fused`` are saved in the reference layout (``gradx.fused.to_reference_state``), so a
checkpoint is the same whichever path wrote it, and restores into either. Not in Optax.
"""

import json
import os
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gradx import fused
from gradx.memory import leaf_dtype
from gradx.plumbing import path_str

# State format versions: 1, the first; 2, ``inject_hyperparams`` keeps a schedule's count in
# ``WrappedScheduleState(count)`` (Optax's layout). ``_UPGRADES[v]`` turns version-v leaf records
# into version v + 1's; the arrays are the same, in the same order.
STATE_FORMAT_VERSION = 2
METADATA_FILE = "checkpoint.json"
_DATA_PREFIX = "data-"
_TMP_PREFIX = ".tmp-"


class Restored(NamedTuple):
    """What ``restore`` returns: the params, the optimizer state and the saved step."""

    params: Any
    opt_state: Any
    step: Optional[int]


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError as error:
        raise ImportError("gradx.checkpoint needs Orbax: pip install orbax-checkpoint") from error
    return ocp


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def leaf_records(tree: Any) -> list[dict]:
    """Every leaf's ``path``, ``shape``, ``dtype`` and ``states`` (the NamedTuple state classes
    on the way from the root, e.g. ``["ScaleByAdamState"]``), in flattening order."""
    records = []

    def walk(node, keys, states):
        children = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]
        if len(children) == 1 and children[0][0] == ():
            records.append({"path": path_str(keys), "shape": list(np.shape(node)),
                            "dtype": str(leaf_dtype(node)),
                            "states": list(states)})
            return
        inner = states + ((type(node).__name__,) if _is_namedtuple(node) else ())
        for key_path, child in children:
            walk(child, keys + tuple(key_path), inner)

    walk(tree, (), ())
    return records


def _first_mismatch(saved: list[dict], like: list[dict], name: str) -> Optional[str]:
    """A sentence naming the first leaf where ``like`` differs from the checkpoint, or None."""
    for ours, theirs in zip(saved, like):
        if ours == theirs:
            continue
        describe = lambda r: (f"shape {tuple(r['shape'])}, {r['dtype']}"  # noqa: E731
                              + (f", in {'/'.join(r['states'])}" if r["states"] else ""))
        if ours["path"] != theirs["path"]:
            return (f"{name} has '{theirs['path']}' ({describe(theirs)}) where the checkpoint "
                    f"has '{ours['path']}' ({describe(ours)})")
        return (f"at '{ours['path']}': the checkpoint has {describe(ours)}, {name} has "
                f"{describe(theirs)}")
    if len(saved) > len(like):
        return f"'{saved[len(like)]['path']}' is in the checkpoint but not in {name}"
    if len(like) > len(saved):
        return f"'{like[len(saved)]['path']}' is in {name} but not in the checkpoint"
    return None


def read_metadata(path: Union[str, os.PathLike]) -> dict:
    """The metadata of the checkpoint in ``path`` (``state_format_version``, ``step``,
    ``gradx_version``, ``data``, and the ``params`` and ``opt_state`` leaf records)."""
    file = Path(path) / METADATA_FILE
    if not file.is_file():
        raise FileNotFoundError(f"No gradx checkpoint in {str(path)!r}: {METADATA_FILE} is "
                                f"missing.")
    try:
        metadata = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"The gradx checkpoint in {str(path)!r} is damaged: {METADATA_FILE} is "
                         f"not valid JSON ({error}); the file was truncated or overwritten. "
                         "Restore an earlier checkpoint.") from error
    missing = [key for key in ("state_format_version", "data", "params", "opt_state")
               if not isinstance(metadata, dict) or key not in metadata]
    if missing:
        raise ValueError(f"The gradx checkpoint in {str(path)!r} is damaged: {METADATA_FILE} "
                         f"has no {missing}.")
    return metadata


def _write_atomically(file: Path, text: str) -> None:
    """Writes ``text`` to a temporary file, flushes it to disk, then renames it onto ``file``."""
    tmp = file.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{file.name}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, file)
    directory = os.open(file.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _remove_stale(directory: Path, keep: str) -> None:
    """Removes the data directories and temporary files that ``checkpoint.json`` does not name."""
    for entry in directory.iterdir():
        if entry.name != keep and entry.name.startswith((_DATA_PREFIX, _TMP_PREFIX)):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _crc32(file: Path) -> int:
    crc = 0
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _file_digests(data_dir: Path) -> dict:
    """``{relative path: [size, crc32]}`` of every file Orbax wrote in ``data_dir``."""
    return {file.relative_to(data_dir).as_posix(): [file.stat().st_size, _crc32(file)]
            for file in sorted(p for p in data_dir.rglob("*") if p.is_file())}


def _check_files(path, metadata: dict) -> None:
    """Raises ``ValueError`` naming the first data file that is missing, truncated or changed
    since the save (checkpoints saved without digests are not checked)."""
    data_dir = Path(path) / metadata["data"]
    for name, (size, crc) in metadata.get("files", {}).items():
        file = data_dir / name
        damage = None
        if not file.is_file():
            damage = "is missing"
        elif file.stat().st_size != size:
            damage = f"has {file.stat().st_size} bytes, {size} were written (truncated?)"
        elif _crc32(file) != crc:
            damage = "does not hold the bytes that were written (corrupted)"
        if damage:
            raise ValueError(f"The gradx checkpoint in {str(path)!r} is damaged: its data file "
                             f"'{metadata['data']}/{name}' {damage}. Restore an earlier "
                             "checkpoint.")


def _upgrade(records: list[dict], version: int) -> list[dict]:
    """Leaf records of state format ``version`` as this gradx writes them."""
    for v in range(version, STATE_FORMAT_VERSION):
        records = [_UPGRADES[v](r) for r in records]
    return records


def _wrapped_schedule_count(record: dict) -> dict:
    """Version 1 -> 2: a schedule's count ``.../hyperparams_states/<name>`` (a bare int32) is
    ``.../hyperparams_states/<name>/count`` in a ``WrappedScheduleState``."""
    parts = record["path"].split("/")
    if (len(parts) >= 2 and parts[-2] == "hyperparams_states" and record["states"]
            and record["states"][-1] == "InjectStatefulHyperparamsState"):
        return dict(record, path=record["path"] + "/count",
                    states=record["states"] + ["WrappedScheduleState"])
    return record


_UPGRADES = {1: _wrapped_schedule_count}


def _as_saveable(tree: Any) -> list:
    """The leaves as arrays Orbax can write (Python and NumPy scalars become JAX arrays); with
    several processes, a leaf held by one process only becomes a replicated global array."""
    return [_global(leaf if isinstance(leaf, (jax.Array, np.ndarray)) else jax.numpy.asarray(leaf))
            for leaf in jax.tree.leaves(tree)]


def _replicated_everywhere() -> NamedSharding:
    return NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ("devices",)),
                         PartitionSpec())


def _global(leaf: Any) -> Any:
    """``leaf`` itself, or, when it lives on this process only and there are several, the same
    value (every process holds it) as an array replicated over all devices."""
    if jax.process_count() == 1 or (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable):
        return leaf
    is_key = jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    data = np.asarray(jax.random.key_data(leaf) if is_key else leaf)
    array = jax.make_array_from_process_local_data(_replicated_everywhere(), data)
    return jax.random.wrap_key_data(array, impl=jax.random.key_impl(leaf)) if is_key else array


def _data_name() -> str:
    """A fresh data directory name, the same on every process (process 0 draws it)."""
    token = np.frombuffer(uuid.uuid4().bytes, np.uint8)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        token = multihost_utils.broadcast_one_to_all(token)
    return f"{_DATA_PREFIX}{np.asarray(token, np.uint8).tobytes().hex()}"


def save(path: Union[str, os.PathLike], params: Any, opt_state: Any, *,
         step: Optional[int] = None) -> Path:
    """Saves ``params`` and ``opt_state`` (any pytrees) to the directory ``path``, atomically.

    ``step`` (an int, optional) is stored in the metadata and returned by ``restore``.
    The previous checkpoint in ``path``, if any, stays readable until the new one is complete,
    and is then replaced. Returns ``Path(path)``. See the module docstring for the layout.
    """
    ocp = _orbax()
    params, opt_state = fused.to_reference_state(params), fused.to_reference_state(opt_state)
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    data = _data_name()
    arrays = {"params": _as_saveable(params), "opt_state": _as_saveable(opt_state)}
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        checkpointer.save(directory / data, args=ocp.args.StandardSave(arrays))
    if jax.process_index() == 0:
        from gradx import __version__
        metadata = {"format": "gradx-checkpoint", "state_format_version": STATE_FORMAT_VERSION,
                    "gradx_version": __version__, "step": None if step is None else int(step),
                    "data": data, "params": leaf_records(params),
                    "opt_state": leaf_records(opt_state), "files": _file_digests(directory / data)}
        _write_atomically(directory / METADATA_FILE, json.dumps(metadata, indent=1))
        _remove_stale(directory, keep=data)
    if jax.process_count() > 1:  # every process returns once the checkpoint is committed
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"gradx.checkpoint.save {directory} {data}")
    return directory


def _gradx_version() -> str:
    from gradx import __version__
    return __version__


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    """The Orbax restore target of one like-leaf, with its sharding when it has one (else the
    default device, or replicated over all devices when there are several processes)."""
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        sharding = (jax.sharding.SingleDeviceSharding(jax.devices()[0])
                    if jax.process_count() == 1 else _replicated_everywhere())
    return jax.ShapeDtypeStruct(np.shape(leaf), leaf_dtype(leaf), sharding=sharding)


def restore(path: Union[str, os.PathLike], params_like: Any, opt_state_like: Any) -> Restored:
    """Restores the params and optimizer state saved in ``path``; returns
    ``Restored(params, opt_state, step)``.

    ``params_like`` and ``opt_state_like`` give the structure (and shardings) to restore into:
    the current params and ``tx.init(params)`` (or their ``jax.eval_shape``). A checkpoint of an
    older state-format version is read in this version's layout. Raises ``ValueError`` when the
    version is newer than ``STATE_FORMAT_VERSION`` or unknown, when the checkpoint is damaged
    (metadata not valid JSON, a data file missing, truncated or changed), or when a tree differs
    from the saved one (leaf paths, shapes, dtypes or state classes), naming the first leaf that
    differs; ``FileNotFoundError`` when ``path`` holds no checkpoint.
    """
    metadata = read_metadata(path)
    flat_likes = params_like, opt_state_like  # gradx.fused layouts: restored in the reference one
    params_like, opt_state_like = map(fused.reference_like, flat_likes)
    version = metadata.get("state_format_version")
    if version not in range(1, STATE_FORMAT_VERSION + 1):
        newer = isinstance(version, int) and version > STATE_FORMAT_VERSION
        raise ValueError(
            f"The checkpoint in {str(path)!r} has gradx state format version {version!r}"
            + (f" (written by gradx {metadata.get('gradx_version')}, newer than this one)"
               if newer else "") + f"; this gradx ({_gradx_version()}) reads versions 1 to "
            f"{STATE_FORMAT_VERSION}" + (": upgrade gradx." if newer else "."))
    _check_files(path, metadata)
    for name, like in (("params", params_like), ("opt_state", opt_state_like)):
        mismatch = _first_mismatch(_upgrade(metadata[name], version), leaf_records(like),
                                   f"{name}_like")
        if mismatch:
            raise ValueError(f"The checkpoint in {str(path)!r} does not match {name}_like: "
                             f"{mismatch}.")
    ocp = _orbax()
    target = {name: [_abstract(leaf) for leaf in jax.tree.leaves(like)]
              for name, like in (("params", params_like), ("opt_state", opt_state_like))}
    try:
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            arrays = checkpointer.restore(Path(path) / metadata["data"],
                                          args=ocp.args.StandardRestore(target))
    except Exception as error:  # noqa: BLE001 - whatever Orbax raises on damaged data
        raise ValueError(f"The gradx checkpoint in {str(path)!r} is damaged: Orbax cannot read "
                         f"'{metadata['data']}' ({type(error).__name__}: {error}). Restore an "
                         "earlier checkpoint.") from error
    return Restored(params=fused.from_reference_like(arrays["params"], flat_likes[0]),
                    opt_state=fused.from_reference_like(arrays["opt_state"], flat_likes[1]),
                    step=metadata["step"])


__all__ = ["STATE_FORMAT_VERSION", "Restored", "save", "restore", "read_metadata", "leaf_records"]
