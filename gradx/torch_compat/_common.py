"""Helpers shared by the torch-compatible optimizers, schedules and transformations."""

import math
from typing import Any, Callable

import jax.numpy as jnp


def check(torch_message: str, check_fn: Callable[..., None], name: str, value: Any, *args, **kwargs):
    """Runs a ``gradx.checks`` validator and prefixes torch's wording to its message, so the error
    reads ``"Invalid learning rate: lr must be >= 0, got lr=-1.0."``."""
    try:
        check_fn(name, value, *args, **kwargs)
    except ValueError as error:
        raise ValueError(f"{torch_message}: {error}") from None


def at(value: Any, count) -> Any:
    """A hyperparameter at the update numbered ``count`` (1 on the first update): a constant, or a
    schedule evaluated at the number of updates done before (``count - 1``), which is the value a
    torch scheduler has set after that many ``scheduler.step()`` calls."""
    return value(count - 1) if callable(value) else value


def _log(base):
    """``log(base)``, in float64 for a Python number: ``float32(0.999)`` is already 1.3e-5 off
    in ``1 - β``, which torch (computing in float64) does not see."""
    if isinstance(base, (int, float)):
        return math.log(base) if base > 0 else -math.inf
    return jnp.log(jnp.asarray(base, jnp.float32))


def pow_(base, t):
    """``base ** t`` for a float ``t``, as ``exp(t·log(base))`` (``0 ** 0 = 1``)."""
    return jnp.where(t == 0, 1.0, jnp.exp(t * _log(base)))


def one_minus_pow(base, t):
    """``1 - base ** t`` without cancellation: ``-expm1(t·log(base))``, accurate to float32
    rounding like torch's float64 bias corrections (``1 - 0.999**1`` in float32 is off by 1.3e-5
    relative)."""
    return -jnp.expm1(t * _log(base))
