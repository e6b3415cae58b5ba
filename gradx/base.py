"""Core types: a transformation is a pure ``(init, update)`` pair.

``init(params) -> state`` builds the state; ``update(updates, state, params=None, **extra_args)
-> (updates, state)`` transforms a gradient tree. These are the same types, with the same fields
and behaviour, as Optax's ``optax.GradientTransformation`` family, so code written against Optax's
protocol runs unchanged.
"""

import inspect
from typing import Any, Callable, NamedTuple, Optional, Protocol, Union, runtime_checkable

import jax
import jax.numpy as jnp

from gradx import plumbing

PyTree = Any
Params = Any
Updates = Any
OptState = Any
Schedule = Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]
ScalarOrSchedule = Union[float, jax.Array, Schedule]
MaskOrFn = Union[Any, Callable[[Params], Any]]

NO_PARAMS_MSG = (
    "You are using a transformation that requires the current value of parameters, but you are "
    "not passing `params` when calling `update`."
)


@runtime_checkable
class StatefulSchedule(Protocol):
    """A schedule that keeps a state: ``init() -> state``, ``update(state, **extra) -> state``,
    ``__call__(state, **extra) -> value``."""

    def init(self) -> Any: ...

    def update(self, state: Any, **extra_args) -> Any: ...

    def __call__(self, state: Any, **extra_args) -> Any: ...


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(self, updates: Updates, state: OptState, params: Optional[Params] = None
                 ) -> tuple[Updates, OptState]: ...


class TransformUpdateExtraArgsFn(Protocol):
    def __call__(self, updates: Updates, state: OptState, params: Optional[Params] = None,
                 **extra_args: Any) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pair of pure functions ``(init, update)``; unpackable as a tuple."""

    init: TransformInitFn
    update: TransformUpdateFn


class GradientTransformationExtraArgs(GradientTransformation):
    """A transformation whose ``update`` accepts (and ignores unknown) keyword extra arguments,
    such as ``value=`` for the loss."""

    update: TransformUpdateExtraArgsFn


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


def init_empty_state(params: Params) -> EmptyState:
    del params
    return EmptyState()


# Optax's names for the empty state of particular transformations.
ScaleState = ClipState = ClipByGlobalNormState = AdaptiveGradClipState = EmptyState
AddDecayedWeightsState = ScaleByTrustRatioState = NonNegativeParamsState = EmptyState


def identity() -> GradientTransformation:
    """Returns the updates unchanged."""

    def update(updates, state, params=None):
        del params
        return updates, state

    return GradientTransformation(init_empty_state, update)


def set_to_zero() -> GradientTransformation:
    """Replaces every update with zeros (frozen parameters do not move)."""

    def update(updates, state, params=None):
        del params
        return plumbing.zeros_like(updates), state

    return GradientTransformation(init_empty_state, update)


def stateless(f: Callable[[Updates, Optional[Params]], Updates]) -> GradientTransformation:
    """A stateless transformation from ``f(updates, params) -> updates`` on whole trees."""

    def update(updates, state, params=None):
        del state
        return f(updates, params), EmptyState()

    return GradientTransformation(init_empty_state, update)


def stateless_with_tree_map(f: Callable[[jax.Array, Optional[jax.Array]], jax.Array]
                            ) -> GradientTransformation:
    """A stateless transformation from ``f(update, param) -> update`` applied leaf by leaf.
    ``param`` is ``None`` when ``update`` is called without params."""

    def update(updates, state, params=None):
        del state
        if params is None:
            return jax.tree.map(lambda u: f(u, None), updates), EmptyState()
        return jax.tree.map(f, updates, params), EmptyState()

    return GradientTransformation(init_empty_state, update)


def takes_extra_args(tx: GradientTransformation) -> bool:
    """Whether ``tx.update`` takes extra keyword arguments: a ``GradientTransformationExtraArgs``
    of gradx or of another library (Optax's: any class of that name), or an ``update`` whose
    signature has ``**kwargs``."""
    if any(cls.__name__ == "GradientTransformationExtraArgs" for cls in type(tx).__mro__):
        return True
    try:
        parameters = inspect.signature(tx.update).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature: assume it takes none
        return False
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters)


def with_extra_args_support(tx: GradientTransformation) -> GradientTransformationExtraArgs:
    """Returns ``tx`` if it already takes extra arguments (``takes_extra_args``; an Optax
    object included), else a wrapper that drops them."""
    if takes_extra_args(tx):
        return tx

    def update(updates, state, params=None, **extra_args):
        del extra_args
        return tx.update(updates, state, params)

    return GradientTransformationExtraArgs(tx.init, update)


def safe_increment(count: jax.typing.ArrayLike) -> jax.Array:
    """``count + 1``, saturating at the maximum of the count's integer dtype instead of
    wrapping around (as Optax's ``safe_increment``)."""
    count = jnp.asarray(count)
    dtype = count.dtype
    if jnp.issubdtype(dtype, jnp.integer):
        max_value = jnp.iinfo(dtype).max
    elif jnp.issubdtype(dtype, jnp.floating):
        max_value = jnp.finfo(dtype).max
    else:
        raise ValueError(f"safe_increment counts in an integer or floating dtype, got a count of "
                         f"dtype {dtype}.")
    max_value = jnp.array(max_value, dtype=dtype)  # uint32/uint64 maxima overflow a Python int
    return jnp.where(count < max_value, count + jnp.array(1, dtype=dtype), max_value)


safe_int32_increment = safe_increment

__all__ = [
    "PyTree", "Params", "Updates", "OptState", "Schedule", "ScalarOrSchedule", "MaskOrFn",
    "NO_PARAMS_MSG", "StatefulSchedule", "TransformInitFn", "TransformUpdateFn",
    "TransformUpdateExtraArgsFn", "GradientTransformation", "GradientTransformationExtraArgs",
    "EmptyState", "init_empty_state", "ScaleState", "ClipState", "ClipByGlobalNormState",
    "AdaptiveGradClipState", "AddDecayedWeightsState", "ScaleByTrustRatioState",
    "NonNegativeParamsState", "identity", "set_to_zero", "stateless", "stateless_with_tree_map",
    "with_extra_args_support", "safe_increment", "safe_int32_increment",
]
