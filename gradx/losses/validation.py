"""Input checks shared by the losses: the same exception types as Optax's (``TypeError`` for a
dtype, ``ValueError`` for a shape or rank), with the argument's name in the message."""

import jax
import jax.numpy as jnp
import numpy as np


def check_dtype(name: str, array, kind) -> None:
    """``array``'s dtype is a sub-dtype of ``kind`` (``jnp.floating``, ``jnp.integer``)."""
    dtype = jax.dtypes.result_type(array)
    if not jnp.issubdtype(dtype, kind):
        raise TypeError(f"{name} must have a dtype that is a subdtype of {kind.__name__}, "
                        f"got {dtype}.")


def check_same_shape(name_a: str, a, name_b: str, b) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"Shape mismatch: {name_a} has shape {np.shape(a)} and {name_b} has "
                         f"shape {np.shape(b)}.")


def check_rank(name: str, array, rank: int) -> None:
    if np.ndim(array) != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {np.shape(array)}.")
