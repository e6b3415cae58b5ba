"""Observability inside a chain: record measurements of the updates in the state, where they
can be read after each step (``state[i].measurements['grad_norm']``), without changing the
updates.

``snapshot(name, fn)`` stores ``fn(updates)``; ``monitor({name: fn_or_transformation})`` stores
several, some of them stateful, such as ``measure_with_ema(fn, decay)`` (a moving average).
"""

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from gradx import plumbing
from gradx.base import (GradientTransformation, GradientTransformationExtraArgs, stateless,
                        with_extra_args_support)
from gradx.combine import chain
from gradx.momentum import ema


class SnapshotState(NamedTuple):
    measurement: dict[str, Any]


def snapshot(measure_name: str, measure: Callable[[Any], Any]) -> GradientTransformation:
    """Stores ``{measure_name: measure(updates)}`` in the state; the updates pass through.

    ``init`` stores ``measure(params)``, so the state has the same structure before and after
    the first step. Same state (``SnapshotState(measurement)``) as ``optax.snapshot``.
    """

    def init(params):
        return SnapshotState({measure_name: measure(params)})

    def update(updates, state, params=None):
        del state, params
        return updates, SnapshotState({measure_name: measure(updates)})

    return GradientTransformation(init, update)


class MonitorState(NamedTuple):
    measurements: dict[str, Any]
    measure_states: tuple[Any, ...]


def monitor(measures: dict[str, Union[GradientTransformation, Callable[[Any], Any]]]
            ) -> GradientTransformationExtraArgs:
    """Stores several measurements of the updates; the updates pass through.

    Each measure is a function ``updates -> measurement`` or a transformation whose output
    updates are the measurement (it keeps its own state, e.g. ``measure_with_ema``). Same
    state (``MonitorState(measurements, measure_states)``) and numbers as ``optax.monitor``.

    Differs from Optax: ``init`` fills ``measurements`` with zeros of each measurement's shape
    and dtype instead of an empty dict, so the state keeps one structure from the start (Optax's
    changes at the first update, which retraces ``jit`` and breaks ``lax.scan``/``fori_loop``
    carries and checkpoint restore).
    """
    measures = {name: with_extra_args_support(
        stateless(lambda u, _, fn=m: fn(u)) if callable(m) else m) for name, m in measures.items()}

    def init(params):
        states = tuple(m.init(params) for m in measures.values())
        shapes = {name: jax.eval_shape(lambda p, s, m=m: m.update(p, s, p)[0], params, state)
                  for (name, m), state in zip(measures.items(), states)}
        zeros = {name: plumbing.zeros_shaped(shape) for name, shape in shapes.items()}
        return MonitorState(zeros, states)

    def update(updates, state, params=None, **extra_args):
        measurements, states = {}, []
        for (name, m), s in zip(measures.items(), state.measure_states):
            measurements[name], s = m.update(updates, s, params, **extra_args)
            states.append(s)
        return updates, MonitorState(measurements, tuple(states))

    return GradientTransformationExtraArgs(init, update)


def measure_with_ema(measure: Callable[[Any], Any], decay: jax.typing.ArrayLike,
                     debias: bool = True, accumulator_dtype: Optional[Any] = None
                     ) -> GradientTransformationExtraArgs:
    """A measure for ``monitor``: the (debiased) exponential moving average of
    ``measure(updates)``, ``e ← (1-decay)·m + decay·e``, output ``e / (1 - decay^t)``.

    ``chain(stateless(measure), ema(decay, debias, accumulator_dtype))`` as Optax's, with the
    EMA state initialised from ``measure(params)``.

    Differs from Optax: a non-float measurement (e.g. ``norm > threshold``, a bool) is averaged
    as float32 from the first step, so the EMA state is float32 at ``init`` too (Optax
    initialises it as bool and it turns float after the first update, optax#828).
    """

    def as_float(tree):
        return jax.tree.map(
            lambda x: x if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
            else jnp.asarray(x, jnp.float32), tree)

    average = ema(decay, debias, accumulator_dtype)
    average_of_measure = average._replace(init=lambda params: average.init(as_float(measure(params))))
    return chain(stateless(lambda updates, _: as_float(measure(updates))), average_of_measure)


__all__ = ["SnapshotState", "snapshot", "MonitorState", "monitor", "measure_with_ema"]
