"""Parameter groups by path: label leaves with glob or regex rules over their ``/``-joined paths,
a weight-decay mask preset, and layer-wise learning-rate decay.

A leaf's path is its keys from the root joined by ``/`` (``"encoder/layers_0/attn/kernel"``);
the ``.value`` attribute of Flax NNX variables is left out, so ``nnx.State`` paths read like
plain dict paths. Plain dicts, Flax ``FrozenDict``, ``nnx.State``, lists/tuples, dataclass and
other registered pytree nodes all work: labels are built by mapping over the params themselves,
so the label tree always has the params' exact structure (optax#1148, flax#3955).

Stacked (scanned) layers keep one leaf with a leading layer axis; name the paths of such leaves
with ``stacked=`` glob/regex patterns so that shape rules and per-layer factors see it.

Usage::

    labels = label_by_path({"*embed*": "adam", "*kernel": "muon"}, default="adam")
    tx = partition({"adam": adam(1e-3), "muon": muon(2e-2)}, labels)
    print(labels.report(params))
    tx = adamw(1e-3, weight_decay=0.05, mask=weight_decay_mask())
    tx = chain(adamw(1e-3), layerwise_lr_decay(0.75))
"""

import fnmatch
import re
from typing import Any, Callable, Hashable, Iterable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from gradx import checks
from gradx.base import GradientTransformation, stateless
from gradx.plumbing import path_str

Pattern = Union[str, "re.Pattern[str]", Callable[[str, Any], bool]]
_NO_DEFAULT = object()


def leaf_path(key_path) -> str:
    """The ``/``-joined path of a JAX key path, without NNX's trailing ``.value`` attribute."""
    keys = list(key_path)
    while keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys.pop()
    return path_str(keys)


def _matcher(pattern: Pattern) -> Callable[[str, Any], bool]:
    """A glob string matches the whole path (``fnmatch``: ``*`` also crosses ``/``); a compiled
    regex is searched in the path; a callable is ``fn(path, leaf) -> bool``."""
    if isinstance(pattern, re.Pattern):
        return lambda path, leaf: pattern.search(path) is not None
    if isinstance(pattern, str):
        return lambda path, leaf: fnmatch.fnmatchcase(path, pattern)
    if callable(pattern):
        return pattern
    raise TypeError(f"a rule's pattern must be a glob string, a compiled regex or a function "
                    f"(path, leaf) -> bool, got {pattern!r}.")


def _any_match(patterns: Union[Pattern, Sequence[Pattern]]) -> Callable[[str, Any], bool]:
    if isinstance(patterns, (str, re.Pattern)) or callable(patterns):
        patterns = [patterns]
    matchers = [_matcher(p) for p in patterns]
    return lambda path, leaf: any(m(path, leaf) for m in matchers)


def _leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    return [(leaf_path(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


class PathRules:
    """A label function ``params -> labels`` from ordered ``(pattern, label)`` rules.

    Each leaf gets the label of the first rule whose pattern matches its path; a leaf no rule
    matches gets ``default``, or, when no default is given, a ``ValueError`` lists every such
    path. Usable wherever Optax takes a label tree or mask (``partition``, ``masked``,
    ``add_decayed_weights(mask=...)``, ``adamw(mask=...)``): labels that are bools make it a
    mask, and ``mask`` turns any labels into one.
    """

    def __init__(self, rules: Union[Mapping[Pattern, Hashable], Iterable[tuple[Pattern, Hashable]]],
                 default: Any = _NO_DEFAULT):
        rules = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
        self.rules = [(pattern, label) for pattern, label in rules]
        self._matchers = [(_matcher(pattern), label) for pattern, label in self.rules]
        self.default = default

    def label(self, path: str, leaf: Any) -> Any:
        """The label of one leaf, or ``_NO_DEFAULT`` when nothing matches."""
        for matches, label in self._matchers:
            if matches(path, leaf):
                return label
        return self.default

    def __call__(self, params: Any) -> Any:
        labels = jax.tree_util.tree_map_with_path(lambda p, x: self.label(leaf_path(p), x), params)
        unmatched = [path for path, label in _leaves_with_paths(labels) if label is _NO_DEFAULT]
        if unmatched:
            raise ValueError(f"{len(unmatched)} parameter(s) match no rule and no default label "
                             f"was given: {', '.join(repr(p) for p in unmatched)}. Add a rule or "
                             f"pass default=...")
        return labels

    def mask(self, *labels: Hashable) -> Callable[[Any], Any]:
        """A mask function: True on the leaves whose label is one of ``labels``."""
        return lambda params: jax.tree.map(lambda label: label in labels, self(params))

    def report(self, params: Any) -> str:
        """A table of every leaf's group, path, shape, dtype and size, then per-group totals."""
        return group_report(params, self(params))


def label_by_path(rules: Union[Mapping[Pattern, Hashable], Iterable[tuple[Pattern, Hashable]]],
                  default: Any = _NO_DEFAULT) -> PathRules:
    """Labels parameters by path: ``rules`` is ``{pattern: label}`` (or ``(pattern, label)``
    pairs), tried in order, first match wins; see ``PathRules``.

    A pattern is a glob string over the whole ``/``-joined path (``"*/bias"``,
    ``"encoder/*"``; ``*`` crosses ``/``), a compiled regex searched in the path
    (``re.compile(r"layers_\\d+/mlp")``) or a predicate ``fn(path, leaf) -> bool`` (for rules on
    shapes). Not in Optax.

    Examples:
      >>> labels = gradx.label_by_path({"*/bias": "no_decay", "encoder/*": "encoder"},
      ...                              default="head")
      >>> params = {"encoder": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)},
      ...           "head": {"kernel": jnp.ones((3, 1))}}
      >>> labels(params)
      {'encoder': {'bias': 'no_decay', 'kernel': 'encoder'}, 'head': {'kernel': 'head'}}
      >>> tx = gradx.partition({"no_decay": gradx.adam(1e-3), "encoder": gradx.adamw(1e-3),
      ...                       "head": gradx.adamw(1e-2)}, labels)
      >>> print(labels.report(params))
      group     path            shape   dtype    size
      no_decay  encoder/bias    (3,)    float32  3
      encoder   encoder/kernel  (2, 3)  float32  6
      head      head/kernel     (3, 1)  float32  3
      <BLANKLINE>
      no_decay: 1 leaves, 3 parameters
      encoder: 1 leaves, 6 parameters
      head: 1 leaves, 3 parameters
    """
    return PathRules(rules, default)


def group_report(params: Any, labels: Any) -> str:
    """Formats which leaf went to which group, with shapes and sizes, and per-group totals.

    ``labels`` has the params' structure or is a prefix of it.
    """
    rows, totals = [], {}
    for label_path, label in jax.tree_util.tree_flatten_with_path(labels)[0]:
        subtree = params
        for key in label_path:
            subtree = _child(subtree, key)
        for sub_path, leaf in _leaves_with_paths(subtree):
            path = "/".join(p for p in (leaf_path(label_path) if label_path else "", sub_path)
                            if p and p != "<root>") or "<root>"
            size = int(np.size(leaf))
            rows.append((str(label), path, str(tuple(np.shape(leaf))), str(jnp.result_type(leaf)),
                         size))
            count, total = totals.get(str(label), (0, 0))
            totals[str(label)] = (count + 1, total + size)
    header = ("group", "path", "shape", "dtype", "size")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [line(header)] + [line(r) for r in rows] + [""]
    out += [f"{label}: {count} leaves, {total:,} parameters"
            for label, (count, total) in totals.items()]
    return "\n".join(out)


def _child(tree: Any, key) -> Any:
    """The child of ``tree`` at one key of a key path (any registered container)."""
    children = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is not tree)[0]
    for path, child in children:
        if path and path[0] == key:
            return child
    raise KeyError(key)


# --- weight-decay mask preset -------------------------------------------------------------------

BIAS = re.compile(r"(^|/)(bias|b|offset|beta)$|_bias$", re.IGNORECASE)
NORM = re.compile(r"(^|/)([^/]*norm[^/]*|(ln|bn)(_\w*|\d*))/[^/]+$|(^|/)(scale|gamma)$",
                  re.IGNORECASE)
EMBEDDING = re.compile(r"embed|(^|/)(wte|wpe)(/|$)|cls_token|pos_emb", re.IGNORECASE)


def _stacked_axes(stacked) -> Callable[[str, Any], int]:
    matches = _any_match(stacked) if stacked else (lambda path, leaf: False)
    return lambda path, leaf: 1 if matches(path, leaf) else 0


def weight_decay_mask(*, exclude_embeddings: bool = False,
                      stacked: Union[Pattern, Sequence[Pattern]] = (),
                      no_decay: Sequence[Pattern] = ()) -> PathRules:
    """The usual weight-decay mask: True (decay) on kernels and other matrices only.

    First match wins: a path in ``no_decay`` → False; a bias (``bias``, ``b``, ``offset``,
    ``beta``, ``*_bias``) → False; a normalisation parameter (under a ``*norm*``/``ln*``/``bn*``
    module, or named ``scale``/``gamma``) → False; an embedding (``*embed*``, ``wte``, ``wpe``,
    ``cls_token``, ``pos_emb*``) → False if ``exclude_embeddings``; otherwise True iff the leaf
    has at least 2 dimensions, not counting the leading layer axis of leaves matched by
    ``stacked``. Pass it as ``mask=`` to ``adamw``/``add_decayed_weights`` (or as
    ``weight_decay_mask=`` where an optimizer takes one). Not in Optax.
    """
    layer_axes = _stacked_axes(stacked)
    rules = [(p, False) for p in no_decay]
    rules += [(BIAS, False), (NORM, False)]
    if exclude_embeddings:
        rules.append((EMBEDDING, False))
    rules.append((lambda path, leaf: np.ndim(leaf) - layer_axes(path, leaf) >= 2, True))
    return PathRules(rules, default=False)


# --- layer-wise learning-rate decay -----------------------------------------------------------

BLOCK = re.compile(r"(?:^|[/._])(?:layers?|blocks?|h)[/._]?(\d+)(?=$|[/._])", re.IGNORECASE)


def layer_ids(params: Any, *, block_pattern: "re.Pattern[str]" = BLOCK,
              embedding_pattern: Pattern = EMBEDDING,
              stacked: Union[Pattern, Sequence[Pattern]] = (),
              num_layers: Optional[int] = None) -> tuple[Any, int]:
    """Each leaf's layer, read from its path: embeddings 0, block ``k`` (the number captured by
    ``block_pattern``, e.g. ``layers_3``, ``blocks/3``, ``h_3``) ``k + 1``, everything else (head,
    final norm) ``num_layers``, the top. A leaf matched by ``stacked`` holds blocks ``0..L-1``
    along its leading axis and gets the array ``[1, ..., L]``.

    Returns ``(ids, num_layers)``; ``num_layers=None`` takes the deepest block + 2 (timm's
    ``len(blocks) + 1``).
    """
    is_embedding = _any_match(embedding_pattern)
    is_stacked = _any_match(stacked) if stacked else (lambda path, leaf: False)

    def block_id(path, leaf):
        if is_stacked(path, leaf):
            return np.arange(1, np.shape(leaf)[0] + 1)
        found = block_pattern.search(path)
        if found:
            return int(found.group(1)) + 1
        return 0 if is_embedding(path, leaf) else None

    ids = jax.tree_util.tree_map_with_path(lambda p, x: block_id(leaf_path(p), x), params)
    blocks = [np.max(i) for i in jax.tree.leaves(ids) if i is not None]
    top = int(max(blocks, default=0)) + 1 if num_layers is None else num_layers
    too_deep = [path for path, i in _leaves_with_paths(ids) if i is not None and np.max(i) > top]
    if too_deep:
        raise ValueError(f"num_layers={num_layers} is below the layer of {', '.join(too_deep)}; "
                         f"blocks k get layer k + 1 and the head num_layers.")
    ids = jax.tree.map(lambda i: top if i is None else i, ids, is_leaf=lambda i: i is None)
    return ids, top


def layer_lr_scales(params: Any, decay: float, **layer_options) -> Any:
    """The factor ``decay ** (num_layers - layer)`` of every leaf (an array over the leading
    axis of stacked leaves, shaped to broadcast against it). ``layer_options``: see
    ``layer_ids``."""
    ids, top = layer_ids(params, **layer_options)

    def scale(i, leaf):
        factor = np.asarray(decay, np.float64) ** (top - np.asarray(i))
        return factor.reshape(np.shape(factor) + (1,) * (np.ndim(leaf) - np.ndim(factor)))

    return jax.tree.map(scale, ids, params)


def layerwise_lr_decay(decay: float, num_layers: Optional[int] = None, *,
                       block_pattern: "re.Pattern[str]" = BLOCK,
                       embedding_pattern: Pattern = EMBEDDING,
                       stacked: Union[Pattern, Sequence[Pattern]] = ()) -> GradientTransformation:
    """Layer-wise learning-rate decay (Clark et al., 2020, ELECTRA; BEiT): multiplies each
    leaf's update by ``decay ** (num_layers - layer)``, the layer read from the path by
    ``layer_ids`` (embeddings 0, block ``k`` → ``k + 1``, head ``num_layers``).

    Put it last in the chain: ``chain(adamw(lr, ...), layerwise_lr_decay(0.75))`` then equals
    PyTorch parameter groups with ``lr = lr * decay ** (num_layers - layer)`` (AdamW's decoupled
    decay ``lr·wd·p`` scales with the group's lr in both). Stateless (``EmptyState``); the
    factors are constants computed from the paths at trace time. Not in Optax.
    """
    checks.in_range("decay", decay, 0.0, 1.0, low_open=True, high_open=False)
    options = dict(block_pattern=block_pattern, embedding_pattern=embedding_pattern,
                   stacked=stacked, num_layers=num_layers)

    def scale(updates, params):
        del params
        factors = layer_lr_scales(updates, decay, **options)
        return jax.tree.map(lambda u, f: u * jnp.asarray(f, jnp.result_type(u)), updates, factors)

    return stateless(scale)


__all__ = ["PathRules", "label_by_path", "leaf_path", "group_report", "weight_decay_mask",
           "layer_ids", "layer_lr_scales", "layerwise_lr_decay"]
