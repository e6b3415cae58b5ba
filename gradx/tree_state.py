"""Finding, replacing and mapping over parts of an optimizer state, as Optax's
``tree.get`` / ``tree.set`` / ``tree.get_all_with_path`` / ``tree.map_params``.

A key names a dict key, a NamedTuple field or a NamedTuple class: ``tree_get(state, "count")``,
``tree_get(state, "ScaleByAdamState")``. Paths are JAX key paths in which a NamedTuple field is a
``NamedTupleKey(tuple_name, name)``, so a filter can tell ``ScaleByAdamState.count`` from
``AddNoiseState.count``.

Examples:
  >>> import jax, jax.numpy as jnp, gradx
  >>> state = gradx.chain(gradx.add_noise(1.0, 0.9, key=0), gradx.scale_by_adam()).init(jnp.zeros(2))
  >>> paths = [jax.tree_util.keystr(p) for p, _ in gradx.tree.get_all_with_path(state, "count")]
  >>> paths
  ['[0]AddNoiseState.count', '[1]ScaleByAdamState.count']
  >>> state = gradx.tree.set(state, lambda path, _: "ScaleByAdamState" in str(path), count=3)
  >>> gradx.tree.get(state, "ScaleByAdamState").count
  3
"""

import dataclasses
from typing import Any, Callable, Optional, Protocol, Union, runtime_checkable

import jax

__all__ = ["NamedTupleKey", "tree_get_all_with_path", "tree_get", "tree_set", "tree_map_params"]

KeyPath = tuple


@jax.tree_util.register_pytree_node_class
class ParamsPlaceholder:
    """A node without children that ``tree_map_params`` passes to ``init`` in place of the
    params: every state subtree built from the params comes out as this placeholder. A
    transformation whose ``init`` reshapes the params (``masked``) passes it through as is."""

    def tree_flatten(self):
        return (), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux, children
        return cls()


@dataclasses.dataclass(frozen=True)
class NamedTupleKey:
    """The key of a NamedTuple field in a path: the tuple's class name and the field's name."""

    tuple_name: str
    name: str

    def __str__(self):
        return f"{self.tuple_name}.{self.name}"


@runtime_checkable
class Initable(Protocol):
    """Anything with an ``init(params) -> state`` method (a transformation)."""

    def init(self, params: Any) -> Any:
        ...


def _is_named_tuple(x) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _has_key(node, keys) -> bool:
    """The node is a NamedTuple with one of ``keys`` as a field or class name, or a dict with
    one of them as a key."""
    if _is_named_tuple(node):
        return type(node).__name__ in keys or any(key in node._fields for key in keys)
    return isinstance(node, dict) and any(key in node for key in keys)


def _children(path: KeyPath, node) -> list:
    """``(path, child)`` for each field of a NamedTuple or entry of a dict."""
    if _is_named_tuple(node):
        name = type(node).__name__
        return [((*path, NamedTupleKey(name, field)), getattr(node, field)) for field in node._fields]
    if isinstance(node, dict):
        return [((*path, jax.tree_util.DictKey(key)), value) for key, value in node.items()]
    raise ValueError(f"Subtree must be a dict or a NamedTuple. Got {type(node)}")


def _leaves_with_path(tree, is_leaf: Callable[[Any], bool]) -> list:
    """``jax.tree_util.tree_leaves_with_path`` stopping at ``is_leaf`` nodes, with
    ``NamedTupleKey`` entries for NamedTuple fields."""
    out = []
    for path, node in jax.tree_util.tree_leaves_with_path(
            tree, is_leaf=lambda x: is_leaf(x) or _is_named_tuple(x)):
        if is_leaf(node) or not _is_named_tuple(node):
            out.append((path, node))
            continue
        for field_path, child in _children(path, node):
            out += [((*field_path, *sub), leaf) for sub, leaf in _leaves_with_path(child, is_leaf)]
    return out


_KEY_ATTRIBUTES = ((jax.tree_util.FlattenedIndexKey, "key"), (jax.tree_util.GetAttrKey, "name"),
                   (jax.tree_util.SequenceKey, "idx"), (NamedTupleKey, "name"))


def _key_of(entry) -> Union[int, str]:
    """The plain key (dict key, field name or index) of one path entry."""
    if isinstance(entry, jax.tree_util.DictKey):
        if isinstance(entry.key, (str, int)):
            return entry.key
        raise KeyError("Hashable keys not supported")
    for key_type, attribute in _KEY_ATTRIBUTES:
        if isinstance(entry, key_type):
            return getattr(entry, attribute)
    raise KeyError(f"Tree key '{entry}' of type '{type(entry)}' not valid.")


def _all_with_path(tree, key) -> list:
    has_key = lambda node: _has_key(node, (key,))  # noqa: E731
    nodes = [(path, node) for path, node in _leaves_with_path(tree, has_key) if has_key(node)]
    found = []
    for path, node in nodes:
        if _is_named_tuple(node):
            name = type(node).__name__
            found.append((path, node) if key == name
                         else ((*path, NamedTupleKey(name, key)), getattr(node, key)))
        else:
            found.append(((*path, jax.tree_util.DictKey(key)), node[key]))
    for path, node in nodes:
        for child_path, child in _children(path, node):
            found += [((*child_path, *sub), value) for sub, value in _all_with_path(child, key)]
    return found


def tree_get_all_with_path(tree: Any, key: Any,
                           filtering: Optional[Callable[[KeyPath, Any], bool]] = None) -> list:
    """Every ``(path, value)`` in ``tree`` whose dict key, NamedTuple field or NamedTuple class
    name is ``key``, kept where ``filtering(path, value)`` holds."""
    found = _all_with_path(tree, key)
    return [(path, value) for path, value in found if filtering is None or filtering(path, value)]


def tree_get(tree: Any, key: Any, default: Optional[Any] = None,
             filtering: Optional[Callable[[KeyPath, Any], bool]] = None) -> Any:
    """The one value of ``tree`` matching ``key`` (see ``tree_get_all_with_path``); ``default``
    if there is none; ``KeyError`` if there are several."""
    found = tree_get_all_with_path(tree, key, filtering=filtering)
    if len(found) > 1:
        raise KeyError(f"Found multiple values for '{key}' in {tree}.")
    return found[0][1] if found else default


def tree_set(tree: Any, filtering: Optional[Callable[[KeyPath, Any], bool]] = None, /,
             **kwargs: Any) -> Any:
    """A copy of ``tree`` with the values matching each keyword's name replaced by the keyword's
    value (where ``filtering(path, value)`` holds). ``KeyError`` if a name matches nothing."""
    for key in kwargs:
        if not tree_get_all_with_path(tree, key, filtering):
            given = " given the filtering operation" if filtering else ""
            raise KeyError(f"Found no values matching '{key}'{given} in {tree}")
    keys = tuple(kwargs)
    has_any = lambda node: _has_key(node, keys)  # noqa: E731
    keep = lambda path, value: filtering is None or filtering(path, value)  # noqa: E731

    def replace(path, node):
        if not has_any(node):
            return node
        if _is_named_tuple(node) and type(node).__name__ in kwargs and keep(path, node):
            return kwargs[type(node).__name__]
        children = {}
        for child_path, child in _children(path, node):
            key = _key_of(child_path[-1])
            if key in kwargs and keep(child_path, child):
                children[key] = kwargs[key]
            elif isinstance(child, (dict, list, tuple)):
                children[key] = replace(child_path, child)
            else:
                children[key] = child
        return node._replace(**children) if _is_named_tuple(node) else children

    treedef = jax.tree.structure(tree, is_leaf=has_any)
    return treedef.unflatten(replace(path, node) for path, node in _leaves_with_path(tree, has_any))


def tree_map_params(initable: Union[Callable[[Any], Any], Initable], f: Callable[..., Any],
                    state: Any, /, *rest: Any,
                    transform_non_params: Optional[Callable[..., Any]] = None,
                    is_leaf: Optional[Callable[[Any], bool]] = None) -> Any:
    """Maps ``f`` over every copy of the params inside ``state`` (the moments of Adam, the
    trace of SGD...), e.g. to build sharding specs of the state from those of the params.

    ``initable`` (a transformation or its ``init``) is called on a placeholder to find which
    subtrees of the state are built from the params; ``f(leaf, *rest_leaves)`` is mapped over
    those, with ``rest`` trees shaped like the params; every other state leaf goes through
    ``transform_non_params`` (or is kept). ``init`` must not read the params' values.
    """
    init = initable.init if isinstance(initable, Initable) else initable
    with_placeholders = init(ParamsPlaceholder())

    def map_params(maybe_placeholder, value):
        if isinstance(maybe_placeholder, ParamsPlaceholder):
            return jax.tree.map(f, value, *rest, is_leaf=is_leaf)
        return value if transform_non_params is None else transform_non_params(value)

    return jax.tree.map(map_params, with_placeholders, state,
                        is_leaf=lambda v: isinstance(v, ParamsPlaceholder))
