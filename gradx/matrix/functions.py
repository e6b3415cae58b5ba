"""Matrix functions of the engine: inverse p-th roots (coupled Newton iteration and
eigendecomposition), power iteration, Newton-Schulz orthogonalisation, eigenbases (``eigh``
and one step of QR power iteration).

Each works on one matrix; the engine runs them on stacks ``(n, d, d)`` with ``jax.vmap`` (or
natively batched ``eigh``/``qr``) through ``gradx.matrix.map_stacked``, one call per shape.
``power_iteration`` and ``matrix_inverse_pth_root`` are also Optax's top-level functions, with
Optax 0.2.8's signatures and numbers.

Precision: ``compute_dtype(x)`` is float64 when ``jax_enable_x64`` is on and float32 otherwise
(never lower, whatever the params' dtype), as Google's ``_MAT_INV_PTH_ROOT_DTYPE``.
"""

import functools
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from gradx import plumbing

HIGHEST = lax.Precision.HIGHEST


def compute_dtype(x=None):
    """float64 where x64 is enabled, else float32 (at least float32, whatever ``x``'s dtype)."""
    del x
    return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


# ---------------------------------------------------------------------------------------------
# Power iteration (Optax's top-level function)

def _normalize(tree):
    return jax.tree.map(lambda x, n=plumbing.global_norm(tree): (1.0 / n) * x, tree)


def power_iteration(matrix: Union[jax.typing.ArrayLike, Callable[[Any], Any]], *,
                    v0: Optional[Any] = None, num_iters: jax.typing.ArrayLike = 100,
                    error_tolerance: jax.typing.ArrayLike = 1e-6,
                    precision: lax.Precision = HIGHEST,
                    key: Optional[jax.Array] = None) -> tuple[jax.Array, Any]:
    """The dominant eigenvalue and its eigenvector of a matrix (array or matrix-vector product).

    Iterates ``v ← A v / ‖A v‖`` until ``|‖A v − λ v‖ / λ| < error_tolerance`` or ``num_iters``
    steps, with ``λ = vᵀ A v``. Same signature, defaults (100 iterations, tolerance 1e-6, ``v0``
    uniform in [-1, 1] from ``key`` or ``PRNGKey(0)``), return order ``(eigenvalue,
    eigenvector)`` and numbers as ``optax.power_iteration``; ``matrix`` may be a callable on
    pytrees (then ``v0`` is required).

    Examples:
      >>> value, vector = gradx.power_iteration(jnp.diag(jnp.array([1.0, 3.0, 2.0])))
      >>> print(round(float(value), 4), np.abs(np.asarray(vector)).round(3))
      3.0 [0. 1. 0.]
    """
    if callable(matrix):
        mvp = matrix
        if v0 is None:
            raise ValueError("v0 must be provided when `matrix` is a callable.")
    else:
        matrix = jnp.asarray(matrix)
        mvp = lambda v: jnp.matmul(matrix, v, precision=precision)  # noqa: E731
        if v0 is None:
            v0 = jax.random.uniform(jax.random.PRNGKey(0) if key is None else key,
                                    shape=matrix.shape[-1:], dtype=matrix.dtype,
                                    minval=-1.0, maxval=1.0)
    v0 = _normalize(v0)
    dtype = jnp.result_type(*jax.tree.leaves(v0))

    def cond(loop):
        vector, z, eig, i = loop
        residual = jax.tree.map(lambda a, b: a - eig * b, z, vector)
        converged = jnp.abs(plumbing.global_norm(residual) / eig) < error_tolerance
        return ~converged & (i < num_iters)

    def body(loop):
        _, z, _, i = loop
        vector = _normalize(z)
        z = mvp(vector)
        return vector, z, plumbing.vdot(vector, z).astype(dtype), i + 1

    init = (v0, mvp(v0), jnp.zeros([], dtype), jnp.asarray(0))
    _, z, eig, _ = lax.while_loop(cond, body, init)
    return eig, _normalize(z)


# ---------------------------------------------------------------------------------------------
# Inverse p-th roots

def _static_int(p) -> Optional[int]:
    """``p`` as a Python int when it is concrete, else None (a traced exponent)."""
    try:
        return int(p)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def _matrix_power(m: jax.Array, p, precision) -> jax.Array:
    """``m**p`` for a positive integer ``p`` by binary exponentiation, multiplying in the
    order of Google's ``mat_power`` (``power ← mat @ power``), so the numbers match it and
    Optax's unrolled powers of two. A traced ``p`` (one exponent per matrix of a stack under
    ``vmap``) runs Google's loop; a concrete one is unrolled."""
    static = _static_int(p)
    if static is None:
        def body(state):
            i, power, mat = state
            power = lax.cond(i % 2 == 1, lambda: jnp.matmul(mat, power, precision=precision),
                             lambda: power)
            return i // 2, power, jnp.matmul(mat, mat, precision=precision)

        init = (jnp.asarray(p).astype(jnp.int32), jnp.eye(m.shape[-1], dtype=m.dtype), m)
        return lax.while_loop(lambda state: state[0] > 0, body, init)[1]
    result, bits = None, static
    while bits:
        if bits & 1:
            result = m if result is None else jnp.matmul(m, result, precision=precision)
        bits >>= 1
        if bits:
            m = jnp.matmul(m, m, precision=precision)
    return result


def coupled_newton_inverse_root(matrix: jax.Array, p, ridge_epsilon=1e-6, *,
                                num_iters: int = 100, error_tolerance: float = 1e-6,
                                relative_epsilon: bool = True, num_tries: int = 1,
                                retry_error: float = 0.05, eigenvalue_floor: float = 1e-16,
                                precision=HIGHEST, dtype=None, power_v0=None
                                ) -> tuple[jax.Array, jax.Array]:
    """``(A + ε·I)^(-1/p)`` by the coupled Newton iteration (Higham, *Functions of Matrices*,
    Eq. 7.18), and its error ``max |M − I|``.

    ``ε = ridge_epsilon · max(λ_max, eigenvalue_floor)`` with ``λ_max`` from ``power_iteration``
    (``relative_epsilon``; else ``ε = ridge_epsilon``). ``M₀ = z·A_ε``, ``H₀ = z^(1/p)·I`` with
    ``z = (1 + p) / (2‖A_ε‖_F)``; then each step ``T = (1 + 1/p)·I − M/p``, ``M ← T^p M``,
    ``H ← H T`` while the error is above
    ``error_tolerance`` and grows by less than 1.2x (the last iterate before a growth is kept).
    ``num_tries > 1`` retries with ``ε·10^i`` while the error exceeds ``retry_error`` (Google's
    ``matrix_inverse_pth_root``: 6 tries; Optax's: 1). Computed in ``dtype`` (default
    ``compute_dtype()``), returned in the matrix's dtype. ``p`` may be traced (one exponent
    per matrix under ``vmap``). ``power_v0``: the power iteration's start (default: Optax's).
    """
    dtype = dtype or jnp.promote_types(matrix.dtype, compute_dtype())
    original_dtype = matrix.dtype
    matrix = matrix.astype(dtype)
    size = matrix.shape[0]
    p = _static_int(p) or jnp.asarray(p)
    alpha = (jnp.asarray(-1.0 / p, dtype) if isinstance(p, int)
             else (-1.0 / jnp.asarray(p, dtype)).astype(dtype))
    identity = jnp.eye(size, dtype=dtype)
    if relative_epsilon:
        v0 = None if power_v0 is None else jnp.asarray(power_v0, dtype)
        max_ev, _ = power_iteration(matrix, v0=v0, num_iters=100, error_tolerance=1e-6,
                                    precision=precision)
        ridge = ridge_epsilon * jnp.maximum(max_ev, eigenvalue_floor)
    else:
        ridge = jnp.asarray(ridge_epsilon, dtype)
    if size == 1:
        return ((matrix + ridge) ** alpha).astype(original_dtype), jnp.zeros([], jnp.float32)

    def iterate(state):
        i, m, h, _, error, ratio = state
        t = (1 - alpha) * identity + alpha * m
        new_m = jnp.matmul(_matrix_power(t, p, precision), m, precision=precision)
        new_h = jnp.matmul(h, t, precision=precision)
        new_error = jnp.max(jnp.abs(new_m - identity))
        return i + 1, new_m, new_h, h, new_error, new_error / error

    def running(state):
        i, _, _, _, error, ratio = state
        return (i < num_iters) & (error > error_tolerance) & (ratio < 1.2)

    def attempt(state):
        i, _, _, _ = state
        damped = matrix + ridge * (10 ** i) * identity
        z = (1 + p) / (2 * jnp.linalg.norm(damped))
        m0, h0 = damped * z, identity * jnp.power(z, 1.0 / p)
        init = (0, m0, h0, h0, jnp.max(jnp.abs(m0 - identity)), jnp.ones([], dtype))
        _, m, h, old_h, _, ratio = lax.while_loop(running, iterate, init)
        error = jnp.max(jnp.abs(m - identity)).astype(jnp.float32)
        root = jnp.where(ratio < 1.2, h, old_h)
        return i + 1, root, error, error > retry_error

    init = (0, identity, jnp.asarray(1000.0, jnp.float32), jnp.asarray(True))
    _, root, error, _ = lax.while_loop(lambda s: s[3] & (s[0] < num_tries), attempt, init)
    return root.astype(original_dtype), error


def matrix_inverse_pth_root(matrix: jax.typing.ArrayLike, p: jax.typing.ArrayLike,
                            num_iters: jax.typing.ArrayLike = 100,
                            ridge_epsilon: jax.typing.ArrayLike = 1e-6,
                            error_tolerance: jax.typing.ArrayLike = 1e-6,
                            precision: lax.Precision = HIGHEST):
    """``matrix^(-1/p)`` of a symmetric PSD matrix by the coupled Newton iteration; returns
    ``(root, error)``.

    Same signature, defaults and numbers as ``optax.matrix_inverse_pth_root`` (ridge
    ``ridge_epsilon · max(λ_max, 1e-16)``, one try, float32 arithmetic without x64); ``p`` must
    be a positive integer (a traced one is allowed). Built on ``coupled_newton_inverse_root``,
    the engine's root.

    Examples:
      >>> root, error = gradx.matrix_inverse_pth_root(jnp.diag(jnp.array([16.0, 81.0])), 4,
      ...                                             ridge_epsilon=0.0)
      >>> print(np.asarray(jnp.diag(root)).round(4))
      [0.5    0.3333]
    """
    return coupled_newton_inverse_root(jnp.asarray(matrix), p, ridge_epsilon,
                                       num_iters=num_iters, error_tolerance=error_tolerance,
                                       precision=precision)


def eigh_inverse_root(matrix: jax.Array, p, epsilon, *, floor: str = "shift",
                      precision=HIGHEST) -> tuple[jax.Array, jax.Array]:
    """``(A + ε·I)^(-1/p)`` from ``eigh(A + ε·I) = Q diag(λ) Qᵀ`` as ``Q diag(λ^(-1/p)) Qᵀ``,
    and an error (0 unless ``floor='clamp'``).

    ``floor='shift'`` (Meta's default ``PerturbationConfig``): when ``min λ < ε``, every
    eigenvalue becomes ``λ − min λ + ε``. ``floor='clamp'`` (Google's ``eigh=True``): eigenvalues
    are clamped at ``ε`` and the error is ``max |Qᵀ A_ε Q − diag(λ)|``. ``p`` may be an array
    (one exponent per matrix of a stack under ``vmap``).
    """
    damped = matrix + epsilon * jnp.eye(matrix.shape[-1], dtype=matrix.dtype)
    values, vectors = jnp.linalg.eigh(damped, symmetrize_input=False)
    mm = functools.partial(jnp.matmul, precision=precision)
    if floor == "shift":
        low = jnp.min(values)
        values = jnp.where(low < epsilon, values - low + epsilon, values)
        error = jnp.zeros([], jnp.float32)
    else:
        error = jnp.max(jnp.abs(mm(vectors.T, mm(damped, vectors)) - jnp.diag(values)))
        values = jnp.maximum(values, epsilon)
    root = mm(vectors * values ** (-1.0 / jnp.asarray(p, values.dtype)), vectors.T)
    return root, error.astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Eigenbases (SOAP)

def eigenbasis(matrix: jax.Array) -> jax.Array:
    """Eigenvectors of a symmetric matrix, by decreasing eigenvalue: ``eigh(A + 1e-30·I)``
    with its columns flipped (the official SOAP's ``get_orthogonal_matrix``)."""
    identity = jnp.eye(matrix.shape[-1], dtype=matrix.dtype)
    _, vectors = jnp.linalg.eigh(matrix + 1e-30 * identity, symmetrize_input=False)
    return jnp.flip(vectors, axis=-1)


def qr_power_step(matrix: jax.Array, basis: jax.Array, precision=HIGHEST):
    """One step of QR power iteration towards the eigenbasis of ``matrix`` from ``basis``
    (SOAP's ``get_orthogonal_matrix_qr``): the columns of ``A Q`` sorted by the estimated
    eigenvalues ``diag(Qᵀ A Q)`` in decreasing order, then orthonormalised by QR. Returns the
    sort order (to permute the second moment the same way) and the new basis."""
    product = jnp.matmul(matrix, basis, precision=precision)
    estimates = jnp.sum(basis * product, axis=0)
    order = jnp.argsort(-estimates, stable=True)
    q, _ = jnp.linalg.qr(product[:, order])
    return order, q


# ---------------------------------------------------------------------------------------------
# Newton-Schulz orthogonalisation (Muon)

NS_COEFFS = (3.4445, -4.7750, 2.0315)
PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")


def _ns_step(x, coeffs):
    """``f(X) = c₀X + (c₁A + c₂A²)X`` with ``A = XXᴴ``."""
    a = x @ x.T.conj()
    b = coeffs[1] * a + coeffs[2] * a @ a
    return coeffs[0] * x + b @ x


def _ns_first_step(x, coeffs, preconditioning, eps):
    """The first step with AOL (row sums of ``|XXᴴ|``) or Schatten-4 rescaling (Optax's
    ``_aol_first_newton_schulz_iteration`` and ``_schatten_first_newton_schulz_iteration``)."""
    if preconditioning == "aol":
        a = x @ x.T.conj()
        s = jnp.expand_dims(lax.rsqrt(jnp.clip(jnp.abs(a).sum(axis=-1), min=eps)), -1)
        x, a = x * s, a * s * s.transpose(-1, -2)
    else:
        a = x @ x.T
        s = jnp.expand_dims(lax.rsqrt(jnp.clip(jnp.linalg.norm(a, ord="fro", axis=(-2, -1)),
                                               min=eps)), (0, -1))
        x, a = x * s, a * s ** 2
    b = coeffs[1] * a + coeffs[2] * a @ a
    return coeffs[0] * x + b @ x


def newton_schulz(x: jax.Array, ns_coeffs, ns_steps: int = 5, preconditioning: str = "frobenius",
                  eps: float = 1e-8) -> jax.Array:
    """Orthogonalises one matrix with ``rows <= cols`` by the quintic Newton-Schulz iteration.

    ``X ← X / (‖X‖ + eps)`` (Frobenius or spectral norm; AOL and Schatten-4 rescale inside the
    first step instead), then ``ns_steps`` steps ``X ← c₀X + (c₁A + c₂A²)X``, ``A = XXᴴ``, with
    ``ns_coeffs`` of shape (3,) or one row per step (n, 3). The arithmetic of Optax's
    ``orthogonalize_via_newton_schulz`` for one matrix, in ``x``'s dtype.
    """
    if preconditioning == "frobenius":
        x = x / (jnp.linalg.norm(x, ord="fro") + eps)
    elif preconditioning == "spectral":
        x = x / (jnp.linalg.norm(x, ord=2) + eps)
    coeffs = jnp.asarray(ns_coeffs).astype(x.dtype)
    table = coeffs if coeffs.ndim == 2 else jnp.broadcast_to(coeffs, (ns_steps, 3))
    for i in range(table.shape[0]):
        if i == 0 and preconditioning in ("aol", "schatten"):
            x = _ns_first_step(x, table[0], preconditioning, eps)
        else:
            x = _ns_step(x, table[i])
    return x


__all__ = ["power_iteration", "matrix_inverse_pth_root", "coupled_newton_inverse_root",
           "eigh_inverse_root", "eigenbasis", "qr_power_step", "newton_schulz", "compute_dtype"]
