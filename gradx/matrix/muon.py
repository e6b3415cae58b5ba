"""Muon (Jordan et al., 2024): momentum orthogonalised by Newton-Schulz, as
``optax.contrib.muon`` 0.2.8 (same names, signatures, defaults, state and numbers), with the
Newton-Schulz iterations of every leaf of one shape in one batched call of the engine.

Per matrix leaf (axes chosen by ``MuonDimensionNumbers``: reduction, output, the rest batch)::

    m ← β·m + (1 − β)·g
    m̂ = β·m/(1 − β^(t+1)) + (1 − β)·g/(1 − βᵗ)     (Nesterov; else m/(1 − βᵗ))
    O = NS(m̂)                                       quintic Newton-Schulz, 5 steps
    u = −η·(O·√max(1, fan_out/fan_in) + λ·p)

Leaves that are not matrices (or whose dimension numbers are None) get AdamW (Nesterov by
default, as Optax). ``form='keller_jordan'`` is the reference form of ``KellerJordan/Muon``
(``muon-optimizer`` 0.1.0): ``u = NS(lerp(g, m, β))`` without bias correction, normalised by
``‖X‖ + 1e-7``, iterated in bfloat16 unless ``ns_dtype`` says otherwise.
"""

import functools
import math
from typing import Any, Callable, Literal, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from gradx import plumbing
from gradx.base import GradientTransformation, init_empty_state, safe_increment
from gradx.combine import chain
from gradx.masking import MaskedNode
from gradx.matrix.functions import NS_COEFFS, PRECONDITIONINGS, newton_schulz
from gradx.matrix.stacking import map_stacked
from gradx.optimizers import adamw
from gradx.partition import partition
from gradx.scaling import scale_by_learning_rate
from gradx.weight_decay import add_decayed_weights

_NS_COEFFS_PRESETS = {
    "standard": NS_COEFFS,
    "dion": [(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
             (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)],
}
_FORMS = ("optax", "keller_jordan")


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a weight form the matrix: ``x W = y`` reduces over ``reduction_axis``
    and produces ``output_axis``; every other axis is a batch axis (one matrix per index).
    Optax's class, same fields and defaults."""

    reduction_axis: Union[Sequence[int], int] = 0
    output_axis: Union[Sequence[int], int] = 1


WeightDimNumOrFn = Union[MuonDimensionNumbers, Any, Callable[[Any], Any]]


def _is_dim_nums(x) -> bool:
    return isinstance(x, MuonDimensionNumbers)


class MuonState(NamedTuple):
    """State for the Muon algorithm (Optax's class and fields)."""

    count: jax.Array
    mu: Any
    ns_coeffs: jax.Array


def _axes(x, dim_nums: MuonDimensionNumbers) -> tuple[tuple[int, ...], tuple[int, ...]]:
    as_tuple = lambda a: (a,) if isinstance(a, int) else tuple(a)  # noqa: E731
    reduction = tuple(a % x.ndim for a in as_tuple(dim_nums.reduction_axis))
    output = tuple(a % x.ndim for a in as_tuple(dim_nums.output_axis))
    return reduction, output


def _fans(x, dim_nums) -> tuple[int, int]:
    reduction, output = _axes(x, dim_nums)
    return (math.prod(x.shape[a] for a in reduction), math.prod(x.shape[a] for a in output))


def _matrices(x, dim_nums):
    """``(to, back)``: ``x`` as a stack ``(batch, rows, cols)`` with ``rows <= cols``
    (transposed when the reduction side is the longer one) and the exact inverse."""
    if x.ndim < 2:
        raise ValueError(f"Muon optimized parameters must have rank >= 2, got x.ndim={x.ndim}")
    reduction, output = _axes(x, dim_nums)
    if set(reduction) & set(output):
        raise ValueError("Normalized reduction axes and output axes must be disjoint, got "
                         f"{reduction} and {output}. Originally dim_nums={dim_nums} and "
                         f"x.shape={x.shape}")
    batch = tuple(sorted(set(range(x.ndim)) - set(reduction) - set(output)))
    order = batch + reduction + output
    inverse = tuple(sorted(range(x.ndim), key=lambda i: order[i]))
    size = lambda axes: math.prod(x.shape[a] for a in axes)  # noqa: E731
    flat = (size(batch), size(reduction), size(output))
    transposed = flat[1] > flat[2]

    def to(y):
        y = y.transpose(order).reshape(flat)
        return y.transpose(0, 2, 1) if transposed else y

    def back(y):
        y = y.transpose(0, 2, 1) if transposed else y
        return y.reshape(tuple(x.shape[a] for a in order)).transpose(inverse)

    return to, back


def _orthogonalize_leaves(xs, dim_nums, ns_coeffs, ns_steps, preconditioning, eps, dtype=None):
    """Newton-Schulz on every leaf, one batched call per matrix shape (``map_stacked``)."""
    plans = [_matrices(x, d) for x, d in zip(xs, dim_nums)]
    stacks = [(to(x if dtype is None else x.astype(dtype)),) for x, (to, _) in zip(xs, plans)]
    ns = functools.partial(newton_schulz, ns_coeffs=ns_coeffs, ns_steps=ns_steps,
                           preconditioning=preconditioning, eps=eps)
    out = map_stacked(jax.vmap(ns), stacks)
    return [back(o).astype(x.dtype) for o, x, (_, back) in zip(out, xs, plans)]


def orthogonalize_via_newton_schulz(x: jax.Array, ns_coeffs: jax.Array,
                                    ns_steps: jax.typing.ArrayLike = 5,
                                    preconditioning: str = "frobenius",
                                    eps: jax.typing.ArrayLike = 1e-8,
                                    dimension_numbers: Optional[MuonDimensionNumbers] = None
                                    ) -> jax.Array:
    """Orthogonalises ``x`` (a matrix, or any rank with ``dimension_numbers``) by ``ns_steps``
    quintic Newton-Schulz steps; Optax's function, same arguments and numbers. The matrices of
    the batch axes go through one batched call."""
    if x.ndim != 2 and not _is_dim_nums(dimension_numbers):
        raise ValueError("Input must have shape (m, n) or weight dimension numbers must be "
                         f"provided. Got shape={x.shape} and {dimension_numbers=}.")
    if x.ndim == 2:
        dimension_numbers = MuonDimensionNumbers(reduction_axis=0, output_axis=1)
    ns_coeffs = jnp.asarray(ns_coeffs)
    if ns_coeffs.ndim > 2 or ns_coeffs.shape[-1] != 3:
        raise ValueError(f"Newton-Schulz coefficients must have shape (3,) or (n, 3), got "
                         f"{ns_coeffs.shape}")
    if preconditioning not in PRECONDITIONINGS:
        raise ValueError(f"Unknown preconditioning {preconditioning}")
    return _orthogonalize_leaves([x], [dimension_numbers], ns_coeffs, ns_steps,
                                 preconditioning, eps)[0]


def _resolve(weight_dimension_numbers, updates):
    """The dimension numbers, one per leaf of ``updates`` (None: every leaf a matrix)."""
    if callable(weight_dimension_numbers) and not _is_dim_nums(weight_dimension_numbers):
        weight_dimension_numbers = weight_dimension_numbers(updates)
    treedef = jax.tree.structure(updates)
    if weight_dimension_numbers is None:
        return [MuonDimensionNumbers()] * treedef.num_leaves
    return treedef.flatten_up_to(weight_dimension_numbers)


def scale_by_shape(weight_dimension_numbers: Optional[WeightDimNumOrFn] = None,
                   consistent_rms: Optional[jax.typing.ArrayLike] = None) -> GradientTransformation:
    """Scales each matrix update by ``√max(1, fan_out/fan_in)`` (Keller Jordan's width
    scaling) or, with ``consistent_rms=c``, by ``c·√max(fan_in, fan_out)`` (Moonlight).
    Optax's function, same arguments and numbers; stateless."""

    def update(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        scaled = []
        for u, d in zip(leaves, _resolve(weight_dimension_numbers, updates)):
            fan_in, fan_out = _fans(u, d)
            factor = (jnp.sqrt(jnp.maximum(fan_in, fan_out)) * consistent_rms
                      if consistent_rms is not None else jnp.sqrt(jnp.maximum(1, fan_out / fan_in)))
            scaled.append(factor * u)
        return treedef.unflatten(scaled), state

    return GradientTransformation(init_empty_state, update)


def _bias_corrected(tree, decay, count):
    correction = 1 - decay ** count
    return jax.tree.map(lambda t: t / correction.astype(t.dtype), tree)


def scale_by_muon(ns_coeffs=NS_COEFFS, ns_steps: jax.typing.ArrayLike = 5,
                  beta: jax.typing.ArrayLike = 0.95, eps: jax.typing.ArrayLike = 1e-8,
                  mu_dtype: Optional[Any] = None, *, nesterov: bool = True,
                  adaptive: bool = False,
                  preconditioning: Literal["frobenius", "spectral", "aol",
                                           "schatten"] = "frobenius",
                  weight_dimension_numbers: Optional[WeightDimNumOrFn] = None,
                  form: Literal["optax", "keller_jordan"] = "optax",
                  ns_dtype: Optional[Any] = None) -> GradientTransformation:
    """Rescales updates by Muon: momentum, then Newton-Schulz orthogonalisation (see the
    module docstring); Optax's ``scale_by_muon``, same arguments, state and numbers.

    gradx additions (keyword-only): ``form='keller_jordan'`` (Keller Jordan's momentum and
    normalisation, NS in bfloat16 by default) and ``ns_dtype`` (the dtype of the iteration;
    None: the update's, or bfloat16 for ``'keller_jordan'``). Differs from Optax: the
    iterations of all leaves of one matrix shape run as one batched call, and
    ``weight_dimension_numbers=None`` means every leaf is a matrix, as documented (Optax raises
    on any tree of more than one leaf).
    """
    mu_dtype = plumbing.canonicalize_dtype(mu_dtype)
    if form not in _FORMS:
        raise ValueError(f"form must be one of {_FORMS}, got form={form!r}.")
    if preconditioning not in PRECONDITIONINGS:
        raise ValueError(f"Unknown preconditioning {preconditioning}")
    keller_jordan = form == "keller_jordan"
    ns_eps = 1e-7 if keller_jordan else eps
    ns_dtype = jnp.bfloat16 if keller_jordan and ns_dtype is None else ns_dtype

    def init(params):
        coeffs = jnp.asarray(ns_coeffs)
        if coeffs.ndim > 2 or coeffs.shape[-1] != 3:
            raise ValueError(f"ns_coeffs must have shape (3,) or (n, 3), got {coeffs.shape}")
        if coeffs.ndim == 2:
            if not coeffs.shape[0] <= ns_steps:
                raise ValueError(f"Not enough coeffs to perform {ns_steps} steps")
            coeffs = coeffs[-ns_steps:]
        return MuonState(count=jnp.zeros([], jnp.int32),
                         mu=plumbing.zeros_like(params, dtype=mu_dtype), ns_coeffs=coeffs)

    def update(updates, state, params=None):
        del params
        dim_nums = _resolve(weight_dimension_numbers, updates)
        mu = jax.tree.map(lambda g, t: (1 - beta) * g + beta * t, updates, state.mu)
        count = safe_increment(state.count)
        if keller_jordan:
            mu_hat = (jax.tree.map(lambda m, g: beta * m + (1 - beta) * g, mu, updates)
                      if nesterov else mu)
        elif nesterov:
            mu_hat = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g,
                                  _bias_corrected(mu, beta, safe_increment(count)),
                                  _bias_corrected(updates, beta, count))
        else:
            mu_hat = _bias_corrected(mu, beta, count)
        leaves, treedef = jax.tree.flatten(mu_hat)
        ortho = _orthogonalize_leaves(leaves, dim_nums, state.ns_coeffs, ns_steps,
                                      preconditioning, ns_eps, ns_dtype)
        new_updates = treedef.unflatten(ortho)
        if adaptive:
            new_updates = jax.tree.map(lambda x, y: jnp.sum(x.conj() * y) * y, mu_hat,
                                       new_updates)
        mu = plumbing.cast(mu, mu_dtype)
        return new_updates, MuonState(count=count, mu=mu, ns_coeffs=state.ns_coeffs)

    return GradientTransformation(init, update)


def muon(learning_rate, ns_coeffs=NS_COEFFS, ns_steps: jax.typing.ArrayLike = 5,
         beta: jax.typing.ArrayLike = 0.95, eps: jax.typing.ArrayLike = 1e-8,
         weight_decay: jax.typing.ArrayLike = 0.0, weight_decay_mask=None,
         mu_dtype: Optional[Any] = None, *, nesterov: bool = True, adaptive: bool = False,
         preconditioning: Literal["frobenius", "spectral", "aol", "schatten"] = "frobenius",
         adam_b1: jax.typing.ArrayLike = 0.9, adam_b2: jax.typing.ArrayLike = 0.999,
         adam_eps_root: jax.typing.ArrayLike = 0.0, adam_weight_decay: jax.typing.ArrayLike = 0.0,
         adam_learning_rate=None, muon_weight_dimension_numbers: Optional[WeightDimNumOrFn] = None,
         consistent_rms: Optional[jax.typing.ArrayLike] = None,
         form: Literal["optax", "keller_jordan"] = "optax",
         ns_dtype: Optional[Any] = None) -> GradientTransformation:
    """Muon: Momentum Orthogonalized by Newton-Schulz (Jordan et al., 2024), with
    ``optax.contrib.muon``'s signature, defaults, state and numbers.

    Matrix leaves (2-D, or those given ``MuonDimensionNumbers`` in
    ``muon_weight_dimension_numbers``; None there means AdamW) get
    ``chain(scale_by_muon, scale_by_shape, add_decayed_weights(weight_decay, weight_decay_mask),
    scale_by_learning_rate)``; the others ``adamw(adam_learning_rate or learning_rate, adam_b1,
    adam_b2, eps, adam_eps_root, adam_weight_decay, mu_dtype, nesterov=nesterov)``, grouped by
    ``partition``. Defaults: ``beta=0.95``, 5 steps of ``(3.4445, −4.7750, 2.0315)``
    (``ns_coeffs='dion'``: Dion's per-step table), ``eps=1e-8``, no weight decay.

    ``form='keller_jordan', ns_dtype=...`` select Keller Jordan's reference form for the matrix
    leaves (see ``scale_by_muon``): with ``weight_decay`` it is ``SingleDeviceMuon(lr,
    weight_decay, momentum=beta)`` of ``muon-optimizer`` 0.1.0, in JAX's ``(in, out)`` layout.

    Examples:
      >>> params = {"w": jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]), "b": jnp.zeros(3)}
      >>> grads = {"w": jnp.array([[1.0, 2.0, 0.0], [0.5, -1.0, 1.0]]), "b": jnp.ones(3)}
      >>> tx = gradx.muon(learning_rate=0.02)
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> print(np.asarray(updates["w"], float).round(4))   # the matrix: Muon
      [[-0.0117 -0.0146 -0.0044]
       [-0.0132  0.0088 -0.0176]]
      >>> print(np.asarray(updates["b"], float).round(4))   # the vector: NAdamW
      [-0.0295 -0.0295 -0.0295]
    """
    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in _NS_COEFFS_PRESETS:
            raise ValueError(f"Unknown ns_coeff preset string: {ns_coeffs}")
        ns_coeffs = _NS_COEFFS_PRESETS[ns_coeffs]
    dims = muon_weight_dimension_numbers

    def specs(params):
        return dims(params) if callable(dims) and not _is_dim_nums(dims) else dims

    def param_labels(params):
        if dims is None:
            return jax.tree.map(lambda x: "muon" if x.ndim == 2 else "adam", params)
        return jax.tree.map(lambda d, x: jax.tree.map(
            lambda _: "muon" if d is not None else "adam", x), specs(params), params,
            is_leaf=lambda x: x is None or _is_dim_nums(x))

    def muon_dims(params):
        given = MuonDimensionNumbers() if dims is None else specs(params)
        mask = jax.tree.map(lambda label: label == "muon", param_labels(params))
        return jax.tree.map(lambda d, sub: jax.tree.map(lambda m: d if m else MaskedNode(), sub),
                            given, mask,
                            is_leaf=lambda x: x is None or _is_dim_nums(x)
                            or isinstance(x, MaskedNode))

    return partition(
        transforms={
            "muon": chain(
                scale_by_muon(ns_coeffs=ns_coeffs, ns_steps=ns_steps, beta=beta, eps=eps,
                              mu_dtype=mu_dtype, nesterov=nesterov, adaptive=adaptive,
                              preconditioning=preconditioning, weight_dimension_numbers=muon_dims,
                              form=form, ns_dtype=ns_dtype),
                scale_by_shape(weight_dimension_numbers=muon_dims, consistent_rms=consistent_rms),
                add_decayed_weights(weight_decay, weight_decay_mask),
                scale_by_learning_rate(learning_rate),
            ),
            "adam": adamw(learning_rate=adam_learning_rate, b1=adam_b1, b2=adam_b2, eps=eps,
                          eps_root=adam_eps_root, weight_decay=adam_weight_decay,
                          mu_dtype=mu_dtype, nesterov=nesterov),
        },
        param_labels=param_labels,
    )


__all__ = ["MuonDimensionNumbers", "MuonState", "WeightDimNumOrFn", "muon", "scale_by_muon",
           "scale_by_shape", "orthogonalize_via_newton_schulz"]
