"""Convert a torch optimizer's ``state_dict()`` to the gradx state of a parameter tree and back.

Mapping (documented in the README section "Porting from PyTorch"):

- **Which torch parameter is which leaf.** torch numbers parameters 0, 1, ... across its param
  groups in order. By default leaf ``i`` of ``jax.tree.leaves(params)`` is torch parameter ``i``.
  Pass ``names=``, a tree with the params' structure whose leaves are torch indices (ints) or
  torch parameter names (strs, looked up in the groups' ``"param_names"``, present when the torch
  optimizer was built from ``model.named_parameters()``, or in ``torch_names``, a list in torch's
  order such as ``[n for n, _ in model.named_parameters()]``).
- **Fields.** Every per-parameter torch entry (``exp_avg``, ``momentum_buffer``, ``sum``, ...) is
  the state field of the same name, at that parameter's leaf. torch's per-parameter ``step``,
  ``mu_product`` (NAdam), ``eta`` and ``mu`` (ASGD) are equal across parameters and become one
  scalar; torch's SGD stores no step count, so pass ``step=`` (the number of steps taken) there.
- **Layout.** Arrays must already have the leaf's shape; ``convert(path, field, array)`` can
  rearrange them (e.g. transpose a ``Linear`` weight ``[out, in]`` into a Flax kernel ``[in, out]``;
  give the inverse when converting back).
- Hyperparameters are not in the gradx state: build the gradx optimizer with torch's arguments
  (param groups via ``param_groups``); ``to_torch_state_dict`` copies ``param_groups`` as given.
- Schedulers are pure functions of the step, so restoring ``step`` restores the lr; torch's
  ``ReduceLROnPlateau`` state is not converted.
"""

import copy
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradx import plumbing
from gradx.base import GradientTransformation
from gradx.torch_compat.optimizers import SCALAR_FIELDS, TORCH_STATES, SGDState


def _numpy(x) -> np.ndarray:
    """A torch tensor (duck-typed: no torch import) or array as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        try:
            return x.numpy()
        except TypeError:  # bfloat16 has no numpy dtype
            return x.float().numpy()
    return np.asarray(x)


def _torch_index(params, names, param_groups, torch_names) -> dict:
    """``leaf path -> torch parameter index``."""
    paths = plumbing.leaf_paths(params)
    if names is None:
        return {path: i for i, path in enumerate(paths)}
    keys = jax.tree.structure(params).flatten_up_to(names)
    if not any(isinstance(key, str) for key in keys):
        torch_names = {}
    elif torch_names is None:
        torch_names = {}
        for group in param_groups:
            if "param_names" not in group:
                raise ValueError("names are given but the torch param_groups have no "
                                 "'param_names': pass torch_names=[name for name, _ in "
                                 "model.named_parameters()] or torch indices as names.")
            torch_names.update(zip(group["param_names"], group["params"]))
    else:
        torch_names = {name: i for i, name in enumerate(torch_names)}
    index = {}
    for path, key in zip(paths, keys):
        if isinstance(key, str):
            if key not in torch_names:
                raise ValueError(f"'{path}' is named {key!r}, which is not a torch parameter name.")
            key = torch_names[key]
        index[path] = int(key)
    return index


def _shape_hint(torch_state: dict, field: str, needed: tuple, found: tuple) -> str:
    """What to pass when a torch array's shape is not the leaf's: ``names=`` when the leaf is
    another torch parameter (torch has one of the leaf's shape), else ``convert=``."""
    others = sorted(i for i, entry in torch_state.items() if entry.get(field) is not None
                    and _numpy(entry[field]).shape == needed)
    if others:
        return (f"torch parameter(s) {others} have that shape, so this leaf is probably one of "
                "them: leaf i is torch parameter i by default (jax.tree.leaves order, which "
                "sorts dict keys), pass names= (a torch name or index per leaf) or torch_names=.")
    if sorted(found) == sorted(needed):
        return "the same sizes in another layout: rearrange the array with convert=."
    return ("check which torch parameter this leaf is (names=, torch_names=) and its layout "
            "(convert=).")


def _is_torch_state(x) -> bool:
    return isinstance(x, TORCH_STATES)


def _buffer_fields(state) -> list:
    return [f for f in state._fields if f not in SCALAR_FIELDS and getattr(state, f) is not None]


def _buffer_paths(state) -> list:
    """The leaf paths that ``state`` holds buffers for (its masked-in parameters)."""
    paths = []
    for field in _buffer_fields(state):
        paths += [p for p in plumbing.leaf_paths(getattr(state, field)) if p not in paths]
    return paths


def from_torch_state_dict(tx: GradientTransformation, params: Any, state_dict: Mapping, *,
                          names: Any = None, torch_names: Optional[Sequence[str]] = None,
                          step: Optional[int] = None,
                          convert: Optional[Callable[[str, str, np.ndarray], np.ndarray]] = None
                          ) -> Any:
    """The state of ``tx`` (a torch_compat optimizer, or any chain / ``param_groups`` holding
    them) for ``params``, filled from torch's ``optimizer.state_dict()``, so that the next gradx
    updates equal torch's next steps.

    ``step`` overrides the step count (required for SGD, whose torch state has none). Raises
    ``ValueError`` naming the leaf when torch has no state for one parameter but has for others,
    or when an array's shape differs from the leaf's.
    """
    index = _torch_index(params, names, state_dict.get("param_groups", []), torch_names)
    torch_state = {int(k): v for k, v in state_dict["state"].items()}

    def fill(state):
        paths = _buffer_paths(state)
        present = [p for p in paths if index[p] in torch_state]
        if not present and not torch_state:
            return state if step is None else state._replace(step=jnp.asarray(step, jnp.int32))
        missing = [p for p in paths if index[p] not in torch_state]
        if missing and present:
            raise ValueError(f"torch has no optimizer state for '{missing[0]}' (torch index "
                             f"{index[missing[0]]}) but has some for other parameters; gradx keeps "
                             "one step count per optimizer.")
        fields = {}
        for field in _buffer_fields(state):
            def leaf(path, x, field=field):
                path = plumbing.path_str(path)
                entry = torch_state[index[path]]
                if field not in entry or entry[field] is None:
                    if np.size(x) == 0:  # a buffer torch does not keep for this parameter
                        return x
                    raise ValueError(f"torch's state for '{path}' has no '{field}'.")
                array = _numpy(entry[field])
                if convert is not None:
                    array = np.asarray(convert(path, field, array))
                if array.shape != np.shape(x):
                    raise ValueError(f"torch's '{field}' for '{path}' (torch parameter "
                                     f"{index[path]}) has shape {array.shape}, the gradx state "
                                     f"needs {np.shape(x)}: "
                                     + _shape_hint(torch_state, field, np.shape(x), array.shape))
                return jnp.asarray(array, jnp.result_type(x))
            fields[field] = jax.tree_util.tree_map_with_path(leaf, getattr(state, field))
        first = torch_state[index[present[0]]] if present else {}
        for field in SCALAR_FIELDS[1:]:
            if getattr(state, field, None) is not None and field in first:
                fields[field] = jnp.asarray(_numpy(first[field]), jnp.float32).reshape(())
        if step is not None:
            fields["step"] = jnp.asarray(step, jnp.int32)
        elif "step" in first:
            fields["step"] = jnp.asarray(int(round(float(_numpy(first["step"])))), jnp.int32)
        elif isinstance(state, SGDState):
            raise ValueError("torch's SGD keeps no step count: pass step= (the number of "
                             "optimizer steps taken, e.g. the scheduler's last_epoch).")
        return state._replace(**fields)

    return jax.tree.map(lambda s: fill(s) if _is_torch_state(s) else s, tx.init(params),
                        is_leaf=_is_torch_state)


def to_torch_state_dict(state: Any, params: Any, param_groups: Sequence[Mapping], *,
                        names: Any = None, torch_names: Optional[Sequence[str]] = None,
                        convert: Optional[Callable[[str, str, np.ndarray], np.ndarray]] = None,
                        array_fn: Callable[[np.ndarray], Any] = np.asarray) -> dict:
    """torch's ``optimizer.state_dict()`` for a gradx ``state`` of ``params``.

    ``param_groups`` is copied as given: take it from the torch optimizer you will load into
    (``torch_opt.state_dict()["param_groups"]``). ``array_fn`` builds each array: pass
    ``torch.as_tensor`` (``load_state_dict`` needs tensors). ``convert(path, field, array)`` maps
    the gradx layout to torch's.
    """
    index = _torch_index(params, names, param_groups, torch_names)
    out = {}
    for opt_state in jax.tree.leaves(state, is_leaf=_is_torch_state):
        if not _is_torch_state(opt_state):
            continue
        for field in _buffer_fields(opt_state):
            tree = getattr(opt_state, field)
            for path, leaf in zip(plumbing.leaf_paths(tree), jax.tree.leaves(tree)):
                entry = out.setdefault(index[path], {})
                if not entry and not isinstance(opt_state, SGDState):
                    entry["step"] = array_fn(np.asarray(float(opt_state.step), np.float32))
                    for scalar in SCALAR_FIELDS[1:]:
                        if getattr(opt_state, scalar, None) is not None:
                            entry[scalar] = array_fn(np.array(getattr(opt_state, scalar),
                                                              np.float32))
                array = np.asarray(leaf)
                if array.size == 0 and array.shape == (0,):  # a buffer torch does not keep here
                    continue
                if convert is not None:
                    array = np.asarray(convert(path, field, array))
                entry[field] = array_fn(np.array(array))
    return {"state": dict(sorted(out.items())), "param_groups": copy.deepcopy(list(param_groups))}


__all__ = ["from_torch_state_dict", "to_torch_state_dict"]
