"""Aggregators: transformations that take per-example gradients (a leading batch axis on every
leaf) and return one update, with statistics of the per-example gradients on the way; Optax's
``optax.experimental.aggregating``.

``process(preprocessor, aggregator, postprocessor)`` chains a per-example transformation, an
aggregator and an ordinary optimizer; the optimizer runs only when the aggregator's state says
``ready`` (after ``accumulation_steps`` microbatches), zeros are returned otherwise.
``add_mean_variance_to_opt(opt)`` also tracks EMAs of the mean and variance of the per-example
gradients (``get_unbiased_mean_and_variance_ema(state)`` reads them, bias-corrected).
"""

import math
from typing import Any, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp

from gradx.base import (GradientTransformation, GradientTransformationExtraArgs, OptState, Params,
                        TransformInitFn, Updates, identity, init_empty_state, safe_increment)
from gradx.combine import chain
from gradx.plumbing import where, zeros_like
from gradx.tree_math import tree_scale
from gradx.tree_state import tree_get

__all__ = [
    "PerElementUpdates", "AggregatedUpdates", "MaybeAxis", "AggregatorUpdateFn", "Aggregator",
    "process", "average_per_element_updates", "AccumulateAvgUpdatesState",
    "accumulate_avg_updates", "average_incrementally_updates",
    "get_batch_size_from_per_elt_updates", "PerElementMeanAndSumSqDiffGradsState",
    "get_per_element_mean_and_sum_sq_diff_grads", "PerElementMeanAndVarianceEMAState",
    "track_per_element_mean_and_variance_with_ema", "get_unbiased_mean_and_variance_ema",
    "add_mean_variance_to_opt",
]

PerElementUpdates = Updates
AggregatedUpdates = Updates
MaybeAxis = int | Sequence[int] | None


class AggregatorUpdateFn(Protocol):
    """``update(per_elt_updates, state, params=None, **extra_args) -> (aggregated, state)``."""

    def __call__(self, per_elt_updates: PerElementUpdates, state: OptState,
                 params: Params | None = None, **extra_args: Any
                 ) -> tuple[AggregatedUpdates, OptState]:
        ...


class Aggregator(GradientTransformationExtraArgs):
    """A transformation from per-example updates ``[*batch, *params]`` to one update
    ``[*params]``: the same ``(init, update)`` pair, told apart so the caller feeds it
    per-example gradients (``jax.vmap(jax.grad(loss), (None, 0))``)."""

    init: TransformInitFn
    update: AggregatorUpdateFn


def process(preprocessor: GradientTransformation,
            aggregator: GradientTransformation | Aggregator,
            postprocessor: GradientTransformation,
            aggregator_has_aux: bool = False) -> GradientTransformation | Aggregator:
    """``preprocessor`` on the per-example gradients, then ``aggregator`` (returning
    ``(updates, aux)`` when ``aggregator_has_aux``: the ``aux`` dict goes to the postprocessor
    as extra arguments), then ``postprocessor``, run only when the aggregator's state has
    ``ready`` True (or no ``ready`` field). State: the three states."""
    def init(params):
        return preprocessor.init(params), aggregator.init(params), postprocessor.init(params)

    def update(per_example, states, params=None, **extra_args):
        pre_state, agg_state, post_state = states
        per_example, pre_state = preprocessor.update(per_example, pre_state, params, **extra_args)
        aggregated, agg_state = aggregator.update(per_example, agg_state, params, **extra_args)
        if aggregator_has_aux:
            aggregated, aux = aggregated
            extra_args = extra_args | aux
        updates, post_state = jax.lax.cond(
            tree_get(agg_state, "ready", True),
            lambda g, s, p, kw: postprocessor.update(g, s, p, **kw),
            lambda g, s, *_: (zeros_like(aggregated), s),
            aggregated, post_state, params, extra_args)
        return updates, (pre_state, agg_state, post_state)

    if isinstance(aggregator, Aggregator):
        return Aggregator(init, update)
    return GradientTransformationExtraArgs(init, update)


def average_per_element_updates(per_elt_axis: int | Sequence[int] = 0) -> Aggregator:
    """The mean of the per-example updates over ``per_elt_axis``."""
    def update(per_elt_updates, state, params=None):
        del params
        return jax.tree.map(lambda x: jnp.mean(x, axis=per_elt_axis), per_elt_updates), state

    return Aggregator(init_empty_state, update)


class AccumulateAvgUpdatesState(NamedTuple):
    micro_step: jax.Array
    ready: jax.Array
    avg_grad: Updates


def _emit_when_full(micro_step, accumulation_steps, outputs, reset_state, running_state):
    """``(outputs, reset_state)`` on the last microbatch, else ``(zeros, running_state)``."""
    return where(micro_step == accumulation_steps, (outputs, reset_state),
                 (zeros_like(outputs), running_state))


def accumulate_avg_updates(accumulation_steps: int) -> GradientTransformation:
    """The running mean of ``accumulation_steps`` successive updates, emitted on the last one
    (zeros before, state ``ready`` then); the identity for one step."""
    if accumulation_steps < 1:
        raise ValueError("accumulation_steps must be larger than or equal to 1.")
    if accumulation_steps == 1:
        return identity()

    def init(params):
        return AccumulateAvgUpdatesState(micro_step=jnp.asarray(0), ready=jnp.asarray(False),
                                         avg_grad=zeros_like(params))

    def update(updates, state, params=None):
        del params
        step = state.micro_step + 1
        mean = jax.tree.map(lambda u, a: a + (u - a) / step, updates, state.avg_grad)
        reset = AccumulateAvgUpdatesState(jnp.asarray(0), jnp.asarray(True), zeros_like(mean))
        running = AccumulateAvgUpdatesState(step, jnp.asarray(False), mean)
        return _emit_when_full(step, accumulation_steps, mean, reset, running)

    return GradientTransformation(init, update)


def average_incrementally_updates(per_elt_axis: MaybeAxis,
                                  accumulation_steps: int) -> Aggregator | GradientTransformation:
    """``average_per_element_updates`` (unless ``per_elt_axis`` is None) then
    ``accumulate_avg_updates``."""
    if per_elt_axis is None:
        return accumulate_avg_updates(accumulation_steps)
    both = chain(average_per_element_updates(per_elt_axis),
                 accumulate_avg_updates(accumulation_steps))
    return Aggregator(both.init, both.update)


def get_batch_size_from_per_elt_updates(per_elt_updates: Updates,
                                        per_elt_axis: int | list[int]) -> int:
    """The number of examples: the size of ``per_elt_axis`` (the product for several axes),
    which every leaf must share (``ValueError`` otherwise)."""
    def size(u):
        if isinstance(per_elt_axis, int):
            return u.shape[per_elt_axis]
        return math.prod(u.shape[i] for i in per_elt_axis)

    sizes = jax.tree.leaves(jax.tree.map(size, per_elt_updates))
    if not all(s == sizes[0] for s in sizes):
        raise ValueError(f"Per-element updates must have the same batch size. Got: {sizes}")
    return sizes[0]


class PerElementMeanAndSumSqDiffGradsState(NamedTuple):
    micro_step: jax.Array
    ready: jax.Array
    mean_grads: Updates
    sum_sq_diff_grads: Updates


def _batch_mean_and_sum_sq_diff(per_elt_updates, per_elt_axis):
    means = jax.tree.map(lambda x: jnp.mean(x, axis=per_elt_axis, keepdims=True), per_elt_updates)
    sum_sq_diff = jax.tree.map(lambda x, m: jnp.sum(jnp.square(x - m), axis=per_elt_axis),
                               per_elt_updates, means)
    return jax.tree.map(lambda m: m.squeeze(axis=per_elt_axis), means), sum_sq_diff


def get_per_element_mean_and_sum_sq_diff_grads(per_elt_axis: int | Sequence[int] = 0,
                                               accumulation_steps: int = 1) -> Aggregator:
    """The mean of the per-example gradients as the update, with aux
    ``{'sum_sq_diff_grads': Σ(g - mean)², 'sample_size': n}`` over the examples of
    ``accumulation_steps`` microbatches (merged with Chan et al.'s parallel-variance update),
    emitted on the last microbatch."""
    def one_batch(per_elt_updates, state, params):
        del params
        size = get_batch_size_from_per_elt_updates(per_elt_updates, per_elt_axis)
        means, sum_sq_diff = _batch_mean_and_sum_sq_diff(per_elt_updates, per_elt_axis)
        return (means, {"sum_sq_diff_grads": sum_sq_diff, "sample_size": size}), state

    if accumulation_steps == 1:
        return Aggregator(init_empty_state, one_batch)

    def init(params):
        return PerElementMeanAndSumSqDiffGradsState(
            micro_step=jnp.asarray(0, dtype=jnp.int32), ready=jnp.asarray(False),
            mean_grads=zeros_like(params), sum_sq_diff_grads=zeros_like(params))

    def update(per_elt_updates, state, params=None):
        del params
        size = get_batch_size_from_per_elt_updates(per_elt_updates, per_elt_axis)
        step = state.micro_step + 1
        batch_means, batch_sum_sq_diff = _batch_mean_and_sum_sq_diff(per_elt_updates, per_elt_axis)
        delta = jax.tree.map(lambda b, a: b - a, batch_means, state.mean_grads)
        means = jax.tree.map(lambda a, d: a + d / step, state.mean_grads, delta)
        size_factor = state.micro_step * size / step
        sum_sq_diff = jax.tree.map(lambda a, s, d: a + s + d ** 2 * size_factor,
                                   state.sum_sq_diff_grads, batch_sum_sq_diff, delta)
        outputs = (means, {"sum_sq_diff_grads": sum_sq_diff, "sample_size": size * step})
        reset = PerElementMeanAndSumSqDiffGradsState(
            jnp.asarray(0, dtype=jnp.int32), jnp.asarray(True), zeros_like(means),
            zeros_like(sum_sq_diff))
        running = PerElementMeanAndSumSqDiffGradsState(step, jnp.asarray(False), means, sum_sq_diff)
        return _emit_when_full(step, accumulation_steps, outputs, reset, running)

    return Aggregator(init, update)


class PerElementMeanAndVarianceEMAState(NamedTuple):
    count: jax.Array
    ema_decay: jax.Array
    mean_grads_ema: Updates
    variance_grads_ema: Updates


def track_per_element_mean_and_variance_with_ema(
        ema_decay: jax.typing.ArrayLike = 0.9) -> GradientTransformation:
    """Passes the updates through and keeps EMAs of them (the mean gradient) and of the
    unbiased variance ``sum_sq_diff_grads/(sample_size - 1)`` (extra arguments from
    ``get_per_element_mean_and_sum_sq_diff_grads`` through ``process``)."""
    def init(params):
        return PerElementMeanAndVarianceEMAState(
            count=jnp.zeros([], jnp.int32), ema_decay=jnp.asarray(ema_decay),
            mean_grads_ema=zeros_like(params), variance_grads_ema=zeros_like(params))

    def update(updates, state, params=None, *, sum_sq_diff_grads, sample_size):
        del params
        ema = lambda x, y: (1.0 - ema_decay) * x + ema_decay * y  # noqa: E731
        variance = tree_scale(1 / (sample_size - 1), sum_sq_diff_grads)
        return updates, state._replace(
            count=safe_increment(state.count),
            mean_grads_ema=jax.tree.map(ema, updates, state.mean_grads_ema),
            variance_grads_ema=jax.tree.map(ema, variance, state.variance_grads_ema))

    return GradientTransformationExtraArgs(init, update)


def get_unbiased_mean_and_variance_ema(state: OptState) -> tuple[Updates, Updates]:
    """The mean and variance EMAs of the ``PerElementMeanAndVarianceEMAState`` in ``state``,
    divided by ``1 - decay^count``."""
    found = tree_get(state, "PerElementMeanAndVarianceEMAState", None)
    if found is None:
        raise ValueError("State must have PerElementMeanAndVarianceEMAState to compute unbiased "
                         "mean and variance EMA.")
    correction = 1 - found.ema_decay ** found.count
    return (jax.tree.map(lambda x: x / correction, found.mean_grads_ema),
            jax.tree.map(lambda x: x / correction, found.variance_grads_ema))


def add_mean_variance_to_opt(opt: GradientTransformation, ema_decay: jax.typing.ArrayLike = 0.9,
                             per_elt_axis: int | list[int] = 0, accumulation_steps: int = 1):
    """``opt`` fed per-example gradients: their mean goes to ``opt``, and EMAs of their mean
    and variance are kept in the state (``get_unbiased_mean_and_variance_ema``)."""
    return process(
        preprocessor=identity(),
        aggregator=get_per_element_mean_and_sum_sq_diff_grads(per_elt_axis, accumulation_steps),
        postprocessor=chain(track_per_element_mean_and_variance_with_ema(ema_decay), opt),
        aggregator_has_aux=True)
