"""Weight decay: add the parameters, scaled, to the updates."""

from typing import NamedTuple

import jax

from gradx import checks
from gradx.base import EmptyState, GradientTransformation, MaskOrFn, ScalarOrSchedule
from gradx.leafwise import leafwise
from gradx.masking import masked


class WeightDecaySchedule(NamedTuple):
    """The step count of a scheduled ``add_decayed_weights`` (int32, 0 before the first update)."""

    count: jax.Array


def _decay(g, p, *, value):
    return g + value * p


def add_decayed_weights(weight_decay: ScalarOrSchedule = 0.0,
                        mask: MaskOrFn = None) -> GradientTransformation:
    """Adds decayed weights: ``u = g + wd · p``.

    ``weight_decay`` is a scalar (state ``EmptyState``) or a schedule evaluated at the count
    before the increment, ``wd(c)`` (state ``WeightDecaySchedule(count)``). ``mask`` (a bool tree
    or a function of the params) restricts the decay to some leaves through ``masked``; the
    others pass unchanged. Needs params — even for ``weight_decay=0.0``, where the updates pass
    unchanged — so that it is a drop-in for ``optax.add_decayed_weights`` (which raises the same
    ``ValueError`` then). Negative values are allowed (``fromage`` uses them).
    """
    if not callable(weight_decay):
        checks.finite("weight_decay", weight_decay)
    if callable(weight_decay):
        tx = leafwise(_decay, WeightDecaySchedule, needs_params=True, step_inputs=("state",),
                      step_scalars=lambda _, state: {"value": weight_decay(state.count)})
    elif isinstance(weight_decay, (int, float)) and weight_decay == 0.0:
        tx = leafwise(lambda g, p: g, EmptyState, needs_params=True)
    else:
        tx = leafwise(_decay, EmptyState, needs_params=True,
                      step_scalars=lambda _: {"value": weight_decay})
    return tx if mask is None else masked(tx, mask)


__all__ = ["WeightDecaySchedule", "add_decayed_weights"]
