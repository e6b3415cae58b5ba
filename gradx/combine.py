"""Composition: ``chain`` applies transformations one after the other."""

from collections import OrderedDict

from gradx import tree_use
from gradx.base import GradientTransformation, GradientTransformationExtraArgs, with_extra_args_support


def chain(*transforms: GradientTransformation) -> GradientTransformationExtraArgs:
    """Applies ``transforms`` in order; the state is a plain tuple with one entry per element.

    Extra keyword arguments of ``update`` reach every element (elements that take none ignore
    them), as in Optax.

    Examples:
      >>> tx = gradx.chain(gradx.clip_by_global_norm(1.0), gradx.scale(-0.1))
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> len(state)
      2
      >>> updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, state)
      >>> print(np.asarray(updates["w"], float).round(4))  # clipped to norm 1, then scaled
      [-0.06 -0.08]
    """
    declared = transforms
    transforms = tuple(with_extra_args_support(t) for t in transforms)

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(updates, state, params=None, **extra_args):
        if len(state) != len(transforms):
            raise ValueError(f"chain has {len(transforms)} transformations but the state has "
                             f"{len(state)} entries: was it made by this chain's init?")
        new_state = []
        for t, s in zip(transforms, state):
            updates, s = t.update(updates, s, params, **extra_args)
            new_state.append(s)
        return updates, tuple(new_state)

    return tree_use.declare(
        GradientTransformationExtraArgs(init, update), tree_use.ELEMENTWISE, "chain",
        inner=declared, rebuild=lambda convert, _: chain(*map(convert, range(len(declared)), declared)))


def named_chain(*transforms: tuple[str, GradientTransformation]) -> GradientTransformationExtraArgs:
    """Like ``chain`` with named elements; the state is an ``OrderedDict`` from name to state."""
    names = [name for name, _ in transforms]
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain needs distinct names, got {names}.")
    declared = tuple(t for _, t in transforms)
    transforms = [(name, with_extra_args_support(t)) for name, t in transforms]

    def init(params):
        return OrderedDict((name, t.init(params)) for name, t in transforms)

    def update(updates, state, params=None, **extra_args):
        new_state = OrderedDict()
        for name, t in transforms:
            updates, new_state[name] = t.update(updates, state[name], params, **extra_args)
        return updates, new_state

    return tree_use.declare(
        GradientTransformationExtraArgs(init, update), tree_use.ELEMENTWISE, "named_chain",
        inner=declared, rebuild=lambda convert, _: named_chain(
            *((name, convert(i, t)) for i, (name, t) in enumerate(zip(names, declared)))))
