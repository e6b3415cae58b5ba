"""Deprecated functions warn as Optax's do: a ``DeprecationWarning`` naming the function, its
replacement and the Optax version that removes it."""

import functools
from typing import Callable, Optional
import warnings


def deprecated(replacement: Optional[str] = None, removed_in: Optional[str] = None) -> Callable:
    """Decorates a function so that each call warns ``The function f is deprecated. Please use
    replacement instead. This function will be/was removed in optax removed_in.``"""
    def decorate(fun):
        message = f"The function {fun.__name__} is deprecated."
        if replacement:
            message += f" Please use {replacement} instead."
        if removed_in:
            message += f" This function will be/was removed in optax {removed_in}."

        @functools.wraps(fun)
        def warned(*args, **kwargs):
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            return fun(*args, **kwargs)

        return warned

    return decorate
