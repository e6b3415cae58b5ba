"""Complex parameters optimised as pairs of real ones."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradx.base import GradientTransformation


class SplitRealAndImaginaryArrays(NamedTuple):
    """A complex leaf as its real and imaginary parts."""

    real: Any
    imaginary: Any


class SplitRealAndImaginaryState(NamedTuple):
    """State of ``split_real_and_imaginary``: the inner transformation's state."""

    inner_state: Any


def _split(x):
    return SplitRealAndImaginaryArrays(x.real, x.imag) if jnp.iscomplexobj(x) else x


def _merge(x):
    return x.real + x.imaginary * 1j if isinstance(x, SplitRealAndImaginaryArrays) else x


def split_real_and_imaginary(inner: GradientTransformation) -> GradientTransformation:
    """Runs ``inner`` on the real and imaginary parts of complex leaves as two real leaves, and
    merges its updates back into complex ones; real leaves pass to ``inner`` unchanged.

    So ``split_real_and_imaginary(adam(...))`` is Adam on ``(Re p, Im p)``, where ``adam``
    alone would use ``|g|²`` in its second moment. JAX's gradient of a real loss with respect to
    a complex parameter is the conjugate of PyTorch's: conjugate it before ``update`` for
    PyTorch's convention. State: ``SplitRealAndImaginaryState(inner_state)``. Same as
    ``optax.contrib.split_real_and_imaginary``.

    Examples:
      >>> tx = gradx.contrib.split_real_and_imaginary(gradx.sign_sgd(0.1))
      >>> state = tx.init(jnp.array([1 + 1j]))
      >>> updates, state = tx.update(jnp.array([2 - 0.5j]), state)
      >>> print(updates)  # -0.1·(sign(2) + i·sign(-0.5))
      [-0.1+0.1j]
    """

    def init(params):
        return SplitRealAndImaginaryState(inner.init(jax.tree.map(_split, params)))

    def update(updates, state, params=None):
        updates, inner_state = inner.update(jax.tree.map(_split, updates), state.inner_state,
                                            jax.tree.map(_split, params))
        updates = jax.tree.map(_merge, updates,
                               is_leaf=lambda x: isinstance(x, SplitRealAndImaginaryArrays))
        return updates, SplitRealAndImaginaryState(inner_state)

    return GradientTransformation(init, update)
