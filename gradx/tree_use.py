"""How a transformation uses the tree it transforms, declared by the transformation itself.

A transformation built here can say what it does with the leaves of the updates' tree, so that
code which runs it over another tree (``gradx.fused`` runs it over a few flat buffers that each
hold many leaves) can tell, without tracing it, whether the numbers stay the same:

* ``ELEMENTWISE``: each element on its own, with scalars (the step count, hyperparameters,
  values carried in the state): the same on any grouping of the elements into buffers;
* ``GLOBAL``: as ``ELEMENTWISE``, plus reductions over the whole tree (a global norm, a
  finiteness check) and control flow on them: the same on any grouping, up to the order in
  which a sum adds its terms;
* ``PER_LEAF``: reductions within each leaf (a leaf's norm or RMS, factored statistics), or
  per-leaf state of another shape than the leaf: needs the leaves themselves;
* ``BY_PATH``: selects leaves by their place in the tree (``masked``, ``partition``): the same
  on buffers that each hold leaves of one group only.

A declaration (``TreeUse``) also names the transformations the declared one runs (a chain's
stages, a wrapper's inner transformation) and how to build it again around other ones
(``rebuild``), so that each of those can be declared and replaced on its own. A transformation
without a declaration (a user's own) is analysed by its trace instead (``gradx.fused``).
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

ELEMENTWISE = "elementwise"
GLOBAL = "global"
PER_LEAF = "per leaf"
BY_PATH = "by path"
KINDS = (ELEMENTWISE, GLOBAL, PER_LEAF, BY_PATH)


class TreeUse(NamedTuple):
    """What a transformation does with the leaves of the updates' tree.

    ``kind``: one of ``KINDS``, for what the transformation does itself (not its inner ones).
    ``name``: for messages (``"clip_by_block_rms"``, ``"chain"``).
    ``inner``: the transformations it runs, or a function returning them (built on demand).
    ``rebuild``: ``rebuild(convert, masks)`` builds the same transformation around
    ``convert(i, inner[i])`` for each inner one; for ``BY_PATH``, ``masks`` are the masks to use
    instead of the declared ones (same order); None when it cannot be rebuilt.
    ``masks``: for ``BY_PATH``, per inner transformation, the mask (a tree of bools or a
    function of the tree) selecting the leaves it sees, as ``masked`` takes it.
    ``spec``: the rule and its parts, for transformations built by ``leafwise``
    (``gradx.leafwise.LeafwiseSpec``).
    """

    kind: str
    name: str
    inner: Union[Sequence[Any], Callable[[], Sequence[Any]]] = ()
    rebuild: Optional[Callable[..., Any]] = None
    masks: Sequence[Any] = ()
    spec: Any = None

    def inner_transformations(self) -> tuple:
        """``inner`` as a tuple (built now when it was given as a function)."""
        return tuple(self.inner() if callable(self.inner) else self.inner)


def declare(tx, kind: str, name: str, **fields):
    """Attaches ``TreeUse(kind, name, **fields)`` to ``tx`` (on its ``update`` function) and
    returns ``tx``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    tx.update.tree_use = TreeUse(kind, name, **fields)
    return tx


def tree_use(tx) -> Optional[TreeUse]:
    """The declaration of ``tx``, or None. An object whose ``update`` is a bound method (such as
    ``MultiSteps``) declares itself with a ``tree_use`` attribute."""
    update = getattr(tx, "update", None)
    use = getattr(update, "tree_use", None)
    if use is None:
        use = getattr(getattr(update, "__self__", None), "tree_use", None)
    return use


__all__ = ["ELEMENTWISE", "GLOBAL", "PER_LEAF", "BY_PATH", "KINDS", "TreeUse", "declare",
           "tree_use"]
