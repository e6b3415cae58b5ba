"""``fused(tx)``: ``tx`` run over the bucketed tree; ``fused_plan``: which path and why."""

import jax

from gradx.base import GradientTransformationExtraArgs, with_extra_args_support
from gradx.fused import layout as layouts
from gradx.fused.layout import DEFAULT_INPLACE_MIN_SIZE, FlatTree, pack, unpack
from gradx.fused.plan import FusedPlan, describe, group_keys, plan
from gradx.fused.state import FusedState


def fused_plan(tx, params, inplace_min_size: int = DEFAULT_INPLACE_MIN_SIZE) -> FusedPlan:
    """Which path ``fused(tx, inplace_min_size)`` takes for ``params`` (arrays or
    ``ShapeDtypeStruct``s, or flat params), and why."""
    if isinstance(params, FlatTree):
        return describe(tx, params.layout)
    return describe(tx, layouts.build(params, inplace_min_size, group_keys(tx, params)))


def fused(tx, inplace_min_size: int = DEFAULT_INPLACE_MIN_SIZE) -> GradientTransformationExtraArgs:
    """``tx`` run over flat buffers of its small leaves, with the reference path's numbers.

    Leaves with fewer than ``inplace_min_size`` elements (default 16384) are concatenated into
    one flat buffer per dtype, group (of ``tx``'s masks and labels) and placement; larger or
    sharded leaves stay in place. Given flat params (``flatten_params``), the update takes and
    returns ``FlatTree``s and every part of ``tx`` runs on them, leaf by leaf on views of the
    buckets where it must. Given the params' tree, the flat path is taken when no part of
    ``tx`` needs the leaves themselves (see ``fused_plan``); otherwise ``fused(tx)`` is ``tx``.
    Updates must have the params' shapes and dtypes (as every rule here assumes); their
    containers may differ from the params' (in ``nnx.Optimizer`` the params sit in
    ``nnx.Param`` variables and the gradients are plain arrays), and the updates come back in
    the gradients' structure. The state is a ``FusedState`` (``to_reference_state`` and
    ``from_reference_state`` convert it exactly).
    """
    if inplace_min_size < 1:
        raise ValueError(f"fused: inplace_min_size must be at least 1, got {inplace_min_size}.")
    declared, tx = tx, with_extra_args_support(tx)

    def init(params):
        if isinstance(params, FlatTree):  # updates stay flat: no offsets needed
            layout, flat, cuts = params.layout, params, ()
        else:
            layout = layouts.build(params, inplace_min_size, group_keys(declared, params))
            if not describe(declared, layout).flat:
                return tx.init(params)
            flat, cuts = pack(params, layout, "params"), layouts.offsets(layout)
        how = plan(declared, layout)
        return FusedState(how.converted.init(flat), cuts, layout, how.reference)

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, FusedState):
            return tx.update(updates, state, params, **extra_args)
        layout, run = state.layout, plan(declared, state.layout).converted
        if isinstance(updates, FlatTree):  # params kept flat by the caller: nothing to convert
            new, inner = run.update(updates, state.inner, params, **extra_args)
        else:
            new, inner = run.update(pack(updates, layout, "updates"), state.inner,
                                    None if params is None else pack(params, layout, "params"),
                                    **extra_args)
            new = unpack(new, state.offsets or None, jax.tree.structure(updates))
        return new, FusedState(inner, state.offsets, layout, state.reference)

    return GradientTransformationExtraArgs(init, update)
