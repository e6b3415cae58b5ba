"""PSGD-Kron (Xi-Lin Li, 2015-2024; Kron form by Evan Walters): a Kronecker-factored
preconditioner ``P = Q₁ᴴQ₁ ⊗ Q₂ᴴQ₂ ⊗ …`` fitted on the fly, one factor ``Qᵢ`` per axis of a
leaf (upper triangular, or diagonal for axes of size 1, above ``max_size_triangular``, or of
leaves with fewer than ``min_ndim_triangular`` axes).

Per leaf, every step::

    m ← b₁·m + (1 − b₁)·g            m̂ = m / (1 − b₁ᵗ)                (b₁ = 0: m̂ = g)
    when the update counter reaches 1/p(t) (deterministic; p anneals 1 → 0.03):
        V ~ N(0, I),   H = m̂ + √ε₃₂·mean|m̂|·V
        A = H ×₁ Q₁ ×₂ Q₂ …             Bᴴ = V̄ ×₁ Q₁⁻ᵀ ×₂ Q₂⁻ᵀ …        (triangular solves)
        Qᵢ ← Qᵢ − η_Q·triu(A₍ᵢ₎A₍ᵢ₎ᴴ − B₍ᵢ₎B₍ᵢ₎ᴴ) / ‖A₍ᵢ₎A₍ᵢ₎ᴴ + B₍ᵢ₎B₍ᵢ₎ᴴ‖_lb · Qᵢ
            (diagonal Qᵢ: elementwise, with the max norm); on ~1% of these steps the
            factors are first rescaled to the geometric mean of their max |q|
    U = m̂ ×₁ Q₁ᴴQ₁ ×₂ Q₂ᴴQ₂ …,     U ← U / max(1, RMS(U)/1.1)
    then weight decay (all leaves, or ``weight_decay_mask``) and −learning_rate

``‖·‖_lb`` is a cheap lower bound of the spectral norm (one power-iteration step from the
largest row or column). Reference: Li, "Preconditioned stochastic gradient descent" (IEEE
TNNLS 2018) and "Stochastic Hessian fittings with Lie groups" (arXiv:2402.04553); the numbers
are those of ``psgd-jax`` 0.2.9's ``kron`` (same defaults, same random stream: seed 5318008
folded with the step count, the same splits), tested step by step against it.

Engine: every leaf of one block shape (and factor layout) goes through one batched call,
for the preconditioner update (Gram matrices, triangular solves, norm bounds) and for the
preconditioning itself; a ``scanned_layers`` leaf is a stack of blocks along its first axis.
The update runs under one scalar ``lax.cond`` (no retrace between update and skip steps).

Differs from ``psgd-jax``: factors are stored with a leading block axis (``(1, d, d)``, or
``(L, d, d)`` for a scanned leaf; a 0-d leaf gets a ``(1, 1)`` diagonal factor) in
``PSGDKronState`` instead of a dict; ``precond_dtype=None`` means float32 or the param's dtype
when wider (psgd-jax: JAX's default float, float64 under x64 whatever the params); updates keep
the gradients' dtype (psgd-jax returns float32 updates for bfloat16 params); no
``lax_map_scanned_layers``/``lax_map_batch_size`` (blocks are batched by the engine) and no
Flax ``Partitioned`` unboxing (gradx takes arrays). Differs from ``kron_torch``/
``pytorch_optimizer.Kron``: no dim merging, weight decay on every leaf, ``learning_rate=1e-3``.
"""

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from gradx import checks, plumbing
from gradx.base import GradientTransformation, ScalarOrSchedule, safe_increment
from gradx.combine import chain
from gradx.matrix.kronecker import statistics_dtype
from gradx.matrix.stacking import map_stacked
from gradx.scaling import scale_by_learning_rate
from gradx.weight_decay import add_decayed_weights

SEED = 5318008
MEMORY_SAVE_MODES = (None, "one_diag", "all_diag")


def precond_update_prob_schedule(max_prob: float = 1.0, min_prob: float = 0.03,
                                 decay: float = 0.001, flat_start: int = 500) -> Callable:
    """The probability of a preconditioner update at step ``n``:
    ``clip(max_prob·exp(−decay·(n − flat_start)), min_prob, max_prob)`` (psgd-jax's default:
    1.0 up to step 500, then down to 0.03 by step ~4000)."""

    def schedule(n):
        return jnp.minimum(jnp.maximum(max_prob * jnp.exp(-decay * (n - flat_start)), min_prob),
                           max_prob)

    return schedule


class PSGDKronState(NamedTuple):
    """PSGD-Kron's state: the step count, the momentum ``mu`` (None when ``b1 == 0``), per
    leaf the list of its factors (each ``(blocks, d, d)`` triangular or ``(blocks, d)``
    diagonal), and the counter of steps since the last preconditioner update."""

    count: jax.Array
    mu: Any
    factors: Any
    update_counter: jax.Array

    PER_PARAM_FIELDS = ("factors",)

    def memory_notes(self, params) -> list[str]:
        """One note per parameter leaf for ``gradx.memory_report``: the leaves whose factors
        are all diagonal (1-D and 0-d leaves, ``memory_save_mode='all_diag'``...)."""
        leaves = jax.tree.structure(params).flatten_up_to(self.factors)
        return ["diagonal factors only" if fs and all(q.ndim == 2 for q in fs) else ""
                for fs in leaves]


# ---------------------------------------------------------------------------------------------
# One block (vmapped over a stack of blocks by the engine)

def _along(x, q, axis, adjoint=False):
    """``x ×_axis Q`` (``adjoint``: ``×_axis Qᴴ``); a diagonal ``q`` scales the axis."""
    if q.ndim == 1:
        q = q.conj() if adjoint else q
        return x * q.reshape((-1,) + (1,) * (x.ndim - 1 - axis))
    m = q.conj().T if adjoint else q
    return jnp.moveaxis(jnp.tensordot(m, x, axes=(1, axis)), 0, axis)


def _solve_along(x, q, axis):
    """``x ×_axis Q⁻ᵀ``: ``x`` with the axis moved last, right-multiplied by ``Q⁻¹``."""
    if q.ndim == 1:
        return x / q.reshape((-1,) + (1,) * (x.ndim - 1 - axis))
    moved = jnp.moveaxis(x, axis, -1)
    dtype = jnp.promote_types(q.dtype, moved.dtype)
    rows = moved.reshape(-1, q.shape[0]).astype(dtype)
    solved = lax.linalg.triangular_solve(q.astype(dtype), rows, left_side=False, lower=False)
    return jnp.moveaxis(solved.reshape(moved.shape), -1, axis)


def _gram(a, b, axis, diagonal):
    """``Σ a₍ᵢ₎ b₍ᵢ₎`` over every axis but ``axis``: a matrix, or its diagonal."""
    others = [k for k in range(a.ndim) if k != axis]
    if diagonal:
        return jnp.sum(a * b, axis=tuple(others))
    return jnp.tensordot(a, b, axes=(others, others))


def _tiny(x):
    return x + jnp.finfo(x.dtype).tiny


def _norm_lower_bound(a):
    """A lower bound of ``a``'s spectral norm within a factor of about √2: ``a`` applied to its
    largest row or column (by squared norm), scaled by max |a|."""
    max_abs = jnp.max(jnp.abs(a))

    def bound(a):
        a = a / max_abs
        aa = jnp.real(a * a.conj())
        col, row = jnp.sum(aa, axis=0), jnp.sum(aa, axis=1)
        i, j = jnp.argmax(col), jnp.argmax(row)

        def by_column():
            x = a[:, i].conj() @ a
            return max_abs * jnp.linalg.norm((x / jnp.linalg.norm(x)) @ a.conj().T)

        def by_row():
            x = a @ a[j].conj()
            return max_abs * jnp.linalg.norm(a.conj().T @ (x / jnp.linalg.norm(x)))

        return lax.cond(col[i] > row[j], by_column, by_row)

    return lax.cond(max_abs > 0, bound, lambda _: max_abs, a)


def _fit(g, v, *qs, lr):
    """One preconditioner update of a block's factors from ``H = g`` (damped) and ``V``."""
    a, conj_b = g, v.conj()
    for axis, q in enumerate(qs):
        a = _along(a, q, axis)
        conj_b = _solve_along(conj_b, q, axis)
    new = []
    for axis, q in enumerate(qs):
        diagonal = q.ndim == 1
        term1 = _gram(a, a.conj(), axis, diagonal)
        term2 = _gram(conj_b.conj(), conj_b, axis, diagonal)
        step = (term1 - term2) * lr
        if diagonal:
            new.append(q - step * q / _tiny(jnp.max(jnp.abs(term1 + term2))))
        else:
            new.append(q - jnp.triu(step) / _tiny(_norm_lower_bound(term1 + term2)) @ q)
    return new


def _precondition(g, *qs):
    """``g ×ᵢ QᵢᴴQᵢ`` for every axis."""
    for axis, q in enumerate(qs):
        g = _along(_along(g, q, axis), q, axis, adjoint=True)
    return g


def _balance(*qs):
    """The factors rescaled to the geometric mean of their max |q| (same product)."""
    norms = jnp.stack([jnp.max(jnp.abs(q)) for q in qs]).astype(jnp.float32)
    gmean = jnp.prod(norms) ** (1 / len(norms))
    return [q * (gmean / n).astype(q.dtype) for q, n in zip(qs, norms)]


def _balance_leaves(factors):
    """``_balance`` on every leaf with more than one factor, one batched call per layout."""
    chosen = [i for i, f in enumerate(factors) if len(f) > 1]
    out = list(factors)
    balanced = map_stacked(jax.vmap(_balance), [tuple(factors[i]) for i in chosen])
    for i, new in zip(chosen, balanced):
        out[i] = new
    return out


# ---------------------------------------------------------------------------------------------
# The transformation

def _diagonal_axes(shape, max_size, min_ndim, memory_save_mode):
    """Which axes of a block of ``shape`` get a diagonal factor."""
    forced = [False] * len(shape)
    if memory_save_mode == "one_diag" and shape:
        largest = max(range(len(shape)), key=lambda i: (shape[i], i))  # numpy argsort's last
        forced[largest] = True
    elif memory_save_mode == "all_diag":
        forced = [True] * len(shape)
    return [d == 1 or d > max_size or len(shape) < min_ndim or f for d, f in zip(shape, forced)]


def scale_by_psgd_kron(
        b1: float = 0.9,
        preconditioner_update_probability: Union[float, Callable] = precond_update_prob_schedule(),
        max_size_triangular: int = 8192, min_ndim_triangular: int = 2,
        memory_save_mode: Optional[str] = None, momentum_into_precond_update: bool = True,
        preconditioner_lr: float = 0.1, preconditioner_init_scale: float = 1.0,
        mu_dtype: Optional[Any] = None, precond_dtype: Optional[Any] = None,
        precond_update_precision: Optional[str] = "tensorfloat32",
        precond_grads_precision: Optional[str] = None,
        scanned_layers: Optional[Any] = None) -> GradientTransformation:
    """Rescales updates by PSGD-Kron's preconditioner (module docstring); ``psgd_jax``'s
    ``scale_by_kron`` 0.2.9, same arguments and defaults (see the module for what differs).
    ``scanned_layers``: a tree of bools like the params; a True leaf is a stack of layers along
    its first axis, each with its own factors."""
    checks.in_range("b1", b1, 0.0, 1.0)
    checks.positive("preconditioner_lr", preconditioner_lr)
    checks.positive("preconditioner_init_scale", preconditioner_init_scale)
    if not callable(preconditioner_update_probability):
        checks.in_range("preconditioner_update_probability", preconditioner_update_probability,
                        0.0, 1.0, low_open=True, high_open=False)
    for name, value in (("max_size_triangular", max_size_triangular),
                        ("min_ndim_triangular", min_ndim_triangular)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {name}={value!r}.")
    checks.one_of("memory_save_mode", memory_save_mode, MEMORY_SAVE_MODES)
    mu_dtype = plumbing.canonicalize_dtype(mu_dtype)
    precond_dtype = plumbing.canonicalize_dtype(precond_dtype)

    def blocks(x, scanned):
        """The leaf as a stack of blocks: ``(L, …)`` as is when scanned, else ``(1, …)``; a 0-d
        leaf as one block of shape (1,)."""
        return x if scanned else jnp.reshape(x, (1,) + (jnp.shape(x) or (1,)))

    def scanned_flags(treedef):
        if scanned_layers is None:
            return [False] * treedef.num_leaves
        return treedef.flatten_up_to(scanned_layers)

    def init(params):
        leaves, treedef = jax.tree.flatten(params)
        factors = []
        for p, scanned in zip(leaves, scanned_flags(treedef)):
            stack = blocks(p, scanned)
            shape, count = stack.shape[1:], stack.shape[0]
            dtype = precond_dtype or statistics_dtype(p)
            scale = preconditioner_init_scale ** (1 / len(shape))
            diag = _diagonal_axes(shape, max_size_triangular, min_ndim_triangular,
                                  memory_save_mode)
            factors.append([] if not stack.size else  # a size-0 leaf: nothing to fit
                           [scale * (jnp.ones((count, d), dtype) if dg else
                                     jnp.broadcast_to(jnp.eye(d, dtype=dtype), (count, d, d)))
                            for d, dg in zip(shape, diag)])
        mu = plumbing.zeros_like(params, dtype=mu_dtype) if b1 > 0 else None
        return PSGDKronState(jnp.zeros([], jnp.int32), mu, treedef.unflatten(factors),
                             jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        mine = [state.factors] + ([state.mu] if state.mu is not None else [])
        plumbing.flatten_matching(updates, mine, ["state.factors", "state.mu"],
                                  shaped=[False, True])  # an error naming the first mismatch
        count = safe_increment(state.count)
        key = jax.random.fold_in(jax.random.PRNGKey(SEED), state.count)
        probability = (preconditioner_update_probability(count)
                       if callable(preconditioner_update_probability)
                       else preconditioner_update_probability)
        mu = None
        momentum = updates
        if state.mu is not None:
            mu = jax.tree.map(lambda g, t: (1 - b1) * g + b1 * t, updates, state.mu)
            correction = 1 - b1 ** count
            momentum = jax.tree.map(lambda t: t / correction.astype(t.dtype), mu)
        grads, treedef = jax.tree.flatten(updates)
        momentum = treedef.flatten_up_to(momentum)
        factors = treedef.flatten_up_to(state.factors)
        scanned = scanned_flags(treedef)

        def fit(key, factors):
            with jax.default_matmul_precision(precond_update_precision):
                key, sub = jax.random.split(key)
                factors = lax.cond(jax.random.uniform(sub) < 0.01, _balance_leaves,
                                   lambda fs: fs, factors)
                key, sub = jax.random.split(key)
                keys = jax.random.split(sub, len(grads))
                inputs = momentum if momentum_into_precond_update else grads
                noise = [jax.random.normal(k, jnp.shape(g), jnp.result_type(g))
                         for k, g in zip(keys, inputs)]
                damping = jnp.sqrt(jnp.finfo(jnp.float32).eps)
                damped = [g + damping.astype(g.dtype) * jnp.mean(jnp.abs(g)) * v
                          for g, v in zip(inputs, noise)]
                items = [(blocks(h, s), blocks(v, s), *f)
                         for h, v, f, s in zip(damped, noise, factors, scanned)]
                new = map_stacked(jax.vmap(lambda h, v, *qs: _fit(h, v, *qs,
                                                                  lr=preconditioner_lr)), items)
                return [[q.astype(old.dtype) for q, old in zip(n, f)]
                        for n, f in zip(new, factors)]

        counter = safe_increment(state.update_counter)
        do_update = counter >= 1 / probability
        counter = jnp.where(do_update, 0, counter)
        key, sub = jax.random.split(key)
        factors = lax.cond(do_update, fit, lambda _, fs: fs, sub, factors)

        with jax.default_matmul_precision(precond_grads_precision):
            directions = map_stacked(jax.vmap(_precondition),
                                     [(blocks(m, s), *f)
                                      for m, f, s in zip(momentum, factors, scanned)])
        out = []
        for g, d in zip(grads, directions):
            d = d.reshape(jnp.shape(g))
            d = d / jnp.maximum(1.0, jnp.sqrt(jnp.mean(jnp.real(d * d.conj()))) / 1.1)
            out.append(d.astype(jnp.result_type(g)))
        if mu is not None:
            mu = plumbing.cast(mu, mu_dtype)
        return treedef.unflatten(out), PSGDKronState(count, mu, treedef.unflatten(factors),
                                                     counter)

    return GradientTransformation(init, update)


def psgd_kron(learning_rate: ScalarOrSchedule = 0.001, b1: float = 0.9, weight_decay: float = 0.0,
              weight_decay_mask: Optional[Any] = None,
              preconditioner_update_probability: Union[float, Callable] =
              precond_update_prob_schedule(),
              max_size_triangular: int = 8192, min_ndim_triangular: int = 2,
              memory_save_mode: Optional[str] = None, momentum_into_precond_update: bool = True,
              preconditioner_lr: float = 0.1, preconditioner_init_scale: float = 1.0,
              mu_dtype: Optional[Any] = None, precond_dtype: Optional[Any] = None,
              precond_update_precision: Optional[str] = "tensorfloat32",
              precond_grads_precision: Optional[str] = None,
              scanned_layers: Optional[Any] = None) -> GradientTransformation:
    """PSGD-Kron: ``scale_by_psgd_kron``, then ``weight_decay·θ`` (on the leaves
    ``weight_decay_mask`` selects, all by default), then ``−learning_rate``. ``psgd_jax.kron``
    0.2.9's signature, defaults and numbers (module docstring: what differs). Start with a
    learning rate about 3x smaller than Adam's; there is no β₂ and no epsilon.

    Example::

        >>> import gradx, jax.numpy as jnp
        >>> tx = gradx.psgd_kron(1e-3)
        >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
        >>> state = tx.init(params)
        >>> [q.shape for q in state[0].factors["w"]]
        [(1, 3, 3), (1, 2, 2)]
    """
    checks.non_negative("weight_decay", weight_decay)
    stages = [scale_by_psgd_kron(
        b1, preconditioner_update_probability, max_size_triangular, min_ndim_triangular,
        memory_save_mode, momentum_into_precond_update, preconditioner_lr,
        preconditioner_init_scale, mu_dtype, precond_dtype, precond_update_precision,
        precond_grads_precision, scanned_layers)]
    if weight_decay > 0:
        stages.append(add_decayed_weights(weight_decay, weight_decay_mask))
    stages.append(scale_by_learning_rate(learning_rate))
    return chain(*stages)


__all__ = ["PSGDKronState", "precond_update_prob_schedule", "psgd_kron", "scale_by_psgd_kron"]
