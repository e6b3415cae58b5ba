"""Hyperparameter validation at construction time.

Every check names the argument and the offending value in a ``ValueError``. Values that are not
concrete numbers (schedules, traced arrays under ``inject_hyperparams``) are not checked.
"""

from typing import Any, Iterable, Optional

import jax
import numpy as np


def _concrete(value: Any) -> Optional[float]:
    if value is None or callable(value) or isinstance(value, jax.core.Tracer):
        return None
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything that is not an array is not checked
        return None
    numeric = array.dtype.kind in "biuf" or jax.dtypes.issubdtype(array.dtype, np.floating)
    if not numeric or array.size != 1:  # bfloat16 and float8 are numpy kind 'V'
        return None
    return float(array.reshape(()))


def in_range(name: str, value: Any, low: float, high: float, *,
             low_open: bool = False, high_open: bool = True) -> None:
    """``low <= value < high`` by default; ``low_open``/``high_open`` choose strictness."""
    x = _concrete(value)
    if x is None:
        return
    too_low = x <= low if low_open else x < low
    too_high = x >= high if high_open else x > high
    if too_low or too_high or np.isnan(x):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {name}={value!r}.")


def non_negative(name: str, value: Any) -> None:
    x = _concrete(value)
    if x is not None and not x >= 0:
        raise ValueError(f"{name} must be >= 0, got {name}={value!r}.")


def positive(name: str, value: Any) -> None:
    x = _concrete(value)
    if x is not None and not x > 0:
        raise ValueError(f"{name} must be > 0, got {name}={value!r}.")


def finite(name: str, value: Any) -> None:
    """Not NaN or infinite (a step size, a weight decay: any sign allowed)."""
    x = _concrete(value)
    if x is not None and not np.isfinite(x):
        raise ValueError(f"{name} must be finite, got {name}={value!r}.")


def one_of(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {name}={value!r}.")


def positive_integer(name: str, value: Any) -> None:
    """A whole number ``>= 1`` (a frequency or a count of steps)."""
    x = _concrete(value)
    if x is not None and not (x >= 1 and float(x).is_integer()):
        raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}.")
