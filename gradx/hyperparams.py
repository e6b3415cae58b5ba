"""Hyperparameters as state: read them, change them between steps without recompiling, and
record training telemetry beside them.

``inject_hyperparams(gradx.adamw)(learning_rate=schedule, weight_decay=0.1)`` builds the optimizer
with every numeric hyperparameter held in the state as a float32 array (float64 under x64), so

* changing a value (``set_hyperparams``) changes data, not the compiled program: no retrace;
* hyperparameters never take the params' dtype: with bfloat16 params ``b2=0.999`` stays 0.999
  (Optax casts to the params' dtype, turning it into 1.0: optax#1414);
* ``read_state(state)`` returns, as one flat dict usable inside ``jit``, every hyperparameter
  (the learning rate a schedule gave at the last step included), per parameter group under
  ``partition``, together with the telemetry that ``with_telemetry`` records.
"""

import functools
import inspect
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from gradx import plumbing, tree_use
from gradx.base import (GradientTransformation, GradientTransformationExtraArgs, StatefulSchedule,
                        safe_increment, with_extra_args_support)

__all__ = [
    "WrappedScheduleState", "WrappedSchedule", "InjectHyperparamsState", "InjectStatefulHyperparamsState",
    "inject_hyperparams", "inject_stateful_hyperparams", "TelemetryState", "with_telemetry",
    "read_state", "set_hyperparams", "register_readable_state",
]


class WrappedScheduleState(NamedTuple):
    """The state of a ``WrappedSchedule``: the step count (Optax's class, so that
    ``tree_get(state, 'learning_rate', filtering=...)`` tells the value from the schedule's
    state as in Optax)."""

    count: jax.Array


class WrappedSchedule:
    """A count-based schedule seen as a stateful one: the state is
    ``WrappedScheduleState(count)``, as in Optax (so injected states restore across the two)."""

    def __init__(self, schedule_fn: Callable[[jax.Array], Any]):
        self.schedule_fn = schedule_fn

    def init(self) -> WrappedScheduleState:
        return WrappedScheduleState(count=jnp.zeros([], jnp.int32))

    def update(self, state: WrappedScheduleState, **extra_args) -> WrappedScheduleState:
        del extra_args
        return WrappedScheduleState(count=safe_increment(state.count))

    def __call__(self, state: WrappedScheduleState, **extra_args):
        del extra_args
        return self.schedule_fn(state.count)


class InjectHyperparamsState(NamedTuple):
    """Optax's older injected state (exported for compatibility; not produced)."""

    count: jax.Array
    hyperparams: dict
    inner_state: Any


class InjectStatefulHyperparamsState(NamedTuple):
    """``count``; ``hyperparams`` (the values used by the last update); the schedules' states;
    the inner optimizer's state."""

    count: jax.Array
    hyperparams: dict
    hyperparams_states: dict
    inner_state: Any


def _as_hyperparam(value, dtype) -> jax.Array:
    """Floats (Python or arrays) become ``dtype``; integers and other arrays keep theirs."""
    array = jnp.asarray(value)
    if jnp.issubdtype(array.dtype, jnp.floating):
        return array.astype(dtype)
    return array


def inject_hyperparams(inner_factory: Callable[..., GradientTransformation],
                       static_args: Union[str, tuple] = (),
                       hyperparam_dtype: Optional[Any] = None) -> Callable[..., GradientTransformationExtraArgs]:
    """Wraps an optimizer factory so that its numeric hyperparameters live in the state.

    Same arguments and state (``InjectStatefulHyperparamsState``) as ``optax.inject_hyperparams``:
    bools and names in ``static_args`` are closed over; callables are schedules of the step
    count (``StatefulSchedule`` objects keep their own state); numbers and arrays become state
    entries; anything else (masks, strings, None) is closed over.

    Differs from Optax: float hyperparameters are stored in ``hyperparam_dtype`` or else the
    default float dtype (float32; float64 under x64), never the params' dtype, and keep that dtype
    when a step or ``set_hyperparams`` writes them, so a changed value never retraces. Arguments
    whose name ends in ``mask`` (``mask``, ``weight_decay_mask``…) are closed over even when they
    are functions: Optax would take a mask function for a schedule and fail.

    Examples:
      >>> import gradx, jax.numpy as jnp
      >>> opt = gradx.inject_hyperparams(gradx.adam)(learning_rate=0.1)
      >>> state = opt.init({"w": jnp.zeros(2, jnp.bfloat16)})
      >>> state.hyperparams["b2"].dtype, float(state.hyperparams["b2"])
      (dtype('float32'), 0.9990000128746033)
    """
    static_args = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    unknown = static_args - set(signature.parameters)
    if unknown:
        raise ValueError(f"static_args {sorted(unknown)} are not arguments of "
                         f"{getattr(inner_factory, '__name__', inner_factory)}; its arguments are "
                         f"{list(signature.parameters)}.")

    def factory(*args, **kwargs) -> GradientTransformationExtraArgs:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        schedules, numeric, static = {}, {}, {}
        for name, value in bound.arguments.items():
            if name in static_args or isinstance(value, bool) or name.endswith("mask"):
                static[name] = value
            elif isinstance(value, StatefulSchedule):
                schedules[name] = value
            elif callable(value):
                schedules[name] = WrappedSchedule(value)
            elif isinstance(value, (int, float, jax.Array, np.ndarray)):
                numeric[name] = value
            else:
                static[name] = value
        dtype = plumbing.canonicalize_dtype(hyperparam_dtype) or jnp.result_type(float)

        def init(params):
            schedule_states = {k: s.init() for k, s in schedules.items()}
            values = {k: _as_hyperparam(v, dtype) for k, v in numeric.items()}
            values.update({k: _as_hyperparam(s(schedule_states[k]), dtype) for k, s in schedules.items()})
            return InjectStatefulHyperparamsState(
                count=jnp.zeros([], jnp.int32), hyperparams=values,
                hyperparams_states=schedule_states,
                inner_state=inner_factory(**static, **values).init(params))

        def update(updates, state, params=None, **extra_args):
            values = {k: _as_hyperparam(v, dtype) for k, v in state.hyperparams.items()}
            values.update({k: _as_hyperparam(s(state.hyperparams_states[k], **extra_args), dtype)
                           for k, s in schedules.items()})
            schedule_states = {k: s.update(state.hyperparams_states[k], **extra_args)
                               for k, s in schedules.items()}
            inner = with_extra_args_support(inner_factory(**static, **values))
            updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
            return updates, InjectStatefulHyperparamsState(
                count=safe_increment(state.count), hyperparams=values,
                hyperparams_states=schedule_states, inner_state=inner_state)

        def initial_inner():  # the inner transformation as init builds it
            values = {k: _as_hyperparam(v, dtype) for k, v in numeric.items()}
            values.update({k: s(s.init()) for k, s in schedules.items()})
            return (inner_factory(**static, **values),)

        def rebuild(convert, _):
            converted = functools.wraps(inner_factory)(
                lambda *a, **k: convert(0, inner_factory(*a, **k)))
            return inject_hyperparams(converted, tuple(static_args), hyperparam_dtype)(
                *args, **kwargs)

        return tree_use.declare(GradientTransformationExtraArgs(init, update),
                                tree_use.ELEMENTWISE, f"inject_hyperparams({factory.__name__})",
                                inner=initial_inner, rebuild=rebuild)

    factory.__name__ = getattr(inner_factory, "__name__", "inject_hyperparams")
    factory.__doc__ = inner_factory.__doc__
    return factory


inject_stateful_hyperparams = inject_hyperparams


class TelemetryState(NamedTuple):
    """Norms of the last step and counters. ``grad_norm`` is measured before the inner
    transformation, so it is the pre-clipping norm when the inner chain clips."""

    grad_norm: jax.Array
    update_norm: jax.Array
    param_norm: jax.Array
    update_to_param_ratio: jax.Array
    nonfinite_steps: jax.Array
    steps: jax.Array
    inner_state: Any


def with_telemetry(inner: GradientTransformation) -> GradientTransformationExtraArgs:
    """Records, each step, ‖g‖ before ``inner``, ‖u‖ after it, ‖p‖, ``‖u‖/‖p‖``, the number of
    steps whose gradient was not finite, and the number of steps.

    The norms are reductions that XLA fuses with the inner rule's own passes where it can (the
    global norm that ``clip_by_global_norm`` computes is the same expression and is computed once).
    Read them with ``read_state(state)``; ``params`` are needed for the parameter norm (0 without).
    """
    declared, inner = inner, with_extra_args_support(inner)

    def init(params):
        zero = jnp.zeros([], jnp.float32)
        return TelemetryState(zero, zero, zero, zero, jnp.zeros([], jnp.int32),
                              jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None, **extra_args):
        grad_norm = plumbing.global_norm(updates).astype(jnp.float32)
        new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        update_norm = plumbing.global_norm(new_updates).astype(jnp.float32)
        param_norm = (jnp.zeros([], jnp.float32) if params is None
                      else plumbing.global_norm(params).astype(jnp.float32))
        ratio = jnp.where(param_norm > 0, update_norm / jnp.where(param_norm > 0, param_norm, 1.0), 0.0)
        nonfinite = state.nonfinite_steps + (~jnp.isfinite(grad_norm)).astype(jnp.int32)
        return new_updates, TelemetryState(grad_norm, update_norm, param_norm, ratio, nonfinite,
                                           safe_increment(state.steps), inner_state)

    return tree_use.declare(GradientTransformationExtraArgs(init, update), tree_use.GLOBAL,
                            "with_telemetry", inner=(declared,),
                            rebuild=lambda convert, _: with_telemetry(convert(0, declared)))


# Readable states: wrapper states whose scalar fields ``read_state`` reports (telemetry here;
# skip counters and accumulation counters in their own modules). One registry, one mechanism.
_READABLE_FIELDS: dict[type, tuple[str, ...]] = {}


def register_readable_state(state_cls: type, fields) -> None:
    """Makes ``read_state`` report ``fields`` of every ``state_cls`` node (a NamedTuple that
    holds its inner transformation's state in ``inner_state``)."""
    if "inner_state" not in state_cls._fields:
        raise ValueError(f"{state_cls.__name__} has no inner_state field.")
    _READABLE_FIELDS[state_cls] = tuple(fields)


register_readable_state(TelemetryState, [f for f in TelemetryState._fields if f != "inner_state"])


def _named_nodes(state, prefix=()):
    """Yields ``(group_path, node)`` for every injected-hyperparameter or readable node; the
    group path keeps only dict keys (partition labels, named_chain names)."""
    if isinstance(state, (InjectStatefulHyperparamsState, *_READABLE_FIELDS)):
        yield prefix, state
        yield from _named_nodes(state.inner_state, prefix)
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _named_nodes(value, prefix + (str(key),))
    elif (split := plumbing.one_level(state)) is not None:  # tuples, other wrapper states
        for value in split[0]:
            yield from _named_nodes(value, prefix)


def read_state(state) -> dict:
    """Every hyperparameter and telemetry value in an optimizer state, as a flat dict, with the
    fields of every registered readable state (``register_readable_state``: skip counters...).

    Keys are the names (``'learning_rate'``, ``'b1'``, ``'grad_norm'``…), prefixed by the group
    path under ``partition`` or ``named_chain`` (``'decay/learning_rate'``). Hyperparameters are
    the values used by the most recent update (a schedule's value at that step). Works inside
    ``jit``. Raises ``ValueError`` when the state holds neither.
    """
    values = {}
    for path, node in _named_nodes(state):
        items = (node.hyperparams.items() if isinstance(node, InjectStatefulHyperparamsState)
                 else ((f, getattr(node, f)) for f in _READABLE_FIELDS[type(node)]))
        for name, value in items:
            values["/".join(path + (name,))] = value
    if not values:
        raise ValueError("this state holds no hyperparameters or telemetry: build the optimizer "
                         "with gradx.inject_hyperparams(...) and/or gradx.with_telemetry(...).")
    return values


def set_hyperparams(state, **values):
    """Returns ``state`` with the named hyperparameters replaced, each cast to its stored dtype
    and shape, so the next step runs the same compiled program.

    Names are as in ``read_state`` with ``/`` written as ``__`` (``decay__learning_rate``). A name
    driven by a schedule, or unknown, raises ``ValueError``.
    """
    wanted = {k.replace("__", "/"): v for k, v in values.items()}
    found = set()

    def rebuild(node, prefix=()):
        if isinstance(node, InjectStatefulHyperparamsState):
            hyperparams = dict(node.hyperparams)
            for name, old in node.hyperparams.items():
                key = "/".join(prefix + (name,))
                if key in wanted:
                    if name in node.hyperparams_states:
                        raise ValueError(f"hyperparameter {key!r} is driven by a schedule; "
                                         "change the schedule instead.")
                    hyperparams[name] = jnp.broadcast_to(jnp.asarray(wanted[key], old.dtype), old.shape)
                    found.add(key)
            return node._replace(hyperparams=hyperparams, inner_state=rebuild(node.inner_state, prefix))
        if isinstance(node, dict):
            return type(node)((k, rebuild(v, prefix + (str(k),))) for k, v in node.items())
        split = plumbing.one_level(node)  # chains, NamedTuples, other wrappers; leaves stay
        return node if split is None else split[1].unflatten([rebuild(v, prefix) for v in split[0]])

    new_state = rebuild(state)
    missing = set(wanted) - found
    if missing:
        raise ValueError(f"unknown hyperparameters {sorted(missing)}; this state has "
                         f"{sorted(k for k in read_state(state))}.")
    return new_state
