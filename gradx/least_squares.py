"""Non-negative least squares: ``argmin_{x ≥ 0} ‖Ax - b‖₂`` by Polyak's fast projected gradient
(2015), as Optax's ``nnls`` (same iterates)."""

from typing import Union

import jax
import jax.numpy as jnp

__all__ = ["nnls"]


def _spectral_radius_upper_bound(matrix: jax.Array) -> jax.Array:
    """``min(‖M‖_F, ‖M‖_1)`` (0 for an empty matrix)."""
    frobenius = jnp.linalg.matrix_norm(matrix, ord="fro")
    one = jnp.linalg.matrix_norm(matrix, ord=1) if matrix.size != 0 else 0
    return jnp.minimum(frobenius, one)


def nnls(A: jax.Array, b: jax.Array, iters: int, unroll: Union[int, bool] = 1,  # noqa: N803
         L: Union[jax.typing.ArrayLike, None] = None) -> jax.Array:  # noqa: N803
    """``iters`` accelerated projected-gradient steps on ``½‖Ax - b‖²`` from 0, with step ``1/L``
    (``L`` an upper bound on the spectral radius of ``AᵀA``, by default ``min`` of its Frobenius
    and 1-norms) and Nesterov-style extrapolation. ``b``: ``(M,)`` or ``(M, K)``; returns ``(N,)``
    or ``(N, K)``.

    Examples:
      >>> x = gradx.nnls(jnp.array([[1., 2.], [3., 4.]]), jnp.array([5., 6.]), 10**3)
      >>> [round(float(v), 2) for v in x]
      [0.0, 1.7]
    """
    if A.ndim != 2 or b.ndim not in (1, 2) or b.shape[0] != A.shape[0]:
        raise ValueError(f"nnls needs A of shape (M, N) and b of shape (M,) or (M, K), got "
                         f"A {A.shape} and b {b.shape}.")
    gram, rhs = A.mT @ A, A.mT @ b
    L = _spectral_radius_upper_bound(gram) if L is None else L  # noqa: N806
    L = jnp.where(L == 0, 1, L)  # noqa: N806

    def step(carry, _):
        x, p, c = carry
        c_next = (1 + jnp.sqrt(1 + 4 * c ** 2)) / 2
        x_next = (p - (gram @ p - rhs) / L).clip(0)
        return (x_next, x_next + (c - 1) / c_next * (x_next - x), c_next), None

    x = jnp.zeros_like(b, shape=A.shape[-1:] + b.shape[1:])
    (x, _, _), _ = jax.lax.scan(step, (x, x, 0.0), length=iters, unroll=unroll)
    return x
