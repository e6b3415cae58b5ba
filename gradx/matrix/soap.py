"""SOAP (Vyas et al., 2024): Adam in the eigenbasis of Shampoo's preconditioner.

Per leaf (dims merged up to ``max_precond_dim`` with ``merge_dims``), for each axis ``i`` no
longer than ``max_precond_dim`` (1-D leaves only with ``precondition_1d``)::

    Sᵢ ← β_s·Sᵢ + (1 − β_s)·G_(i)G_(i)ᵀ                  β_s = shampoo_beta (−1: β₂)
    G' = G ×ᵢ Qᵢ                                         project onto the eigenbases
    m ← β₁m + (1 − β₁)G        v ← β₂v + (1 − β₂)G'²
    N = (m ×ᵢ Qᵢ) / (√v + eps) ×ᵢ Qᵢᵀ                    back to the parameter's space
    p ← (p − η·√(1 − β₂ᵗ⁻¹)/(1 − β₁ᵗ⁻¹)·N)·(1 − η·λ)

The first step only sets ``S`` and ``Qᵢ = eigh(Sᵢ)`` (no update); every
``precondition_frequency`` steps after, ``Qᵢ`` is refreshed by one QR power-iteration step with
the columns sorted by estimated eigenvalue and ``v`` permuted to match. All bases of one size in
the model go through one batched ``eigh``/``qr`` call; a non-finite new basis keeps the old one
(counted in ``SOAPState.failures``).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from gradx import checks, plumbing
from gradx.base import GradientTransformation, NO_PARAMS_MSG, ScalarOrSchedule, safe_increment
from gradx.matrix import kronecker as kr
from gradx.matrix.functions import compute_dtype, eigenbasis, qr_power_step


class SOAPState(NamedTuple):
    """SOAP's state: the step count (the set-up step included), Adam's moments ``mu`` (in the
    parameter's space) and ``nu`` (in the eigenbasis), and per leaf the statistics, eigenbases
    and failed-refresh counts of its factors (nested tuples: block group, then factored axis;
    ``()`` for a leaf without factors, which runs plain Adam)."""

    count: jax.Array
    mu: Any
    nu: Any
    statistics: Any
    bases: Any
    failures: Any

    PER_PARAM_FIELDS = ("statistics", "bases", "failures")

    def memory_notes(self, params) -> list[str]:
        """One note per parameter leaf for ``gradx.memory_report``."""
        return kr.fallback_notes(self.bases, params, "not preconditioned: Adam, no rotation")


def _permute(plan: kr.FactorPlan, nu, orders):
    """``nu`` with each factored axis of each block reordered by that factor's sort order."""
    if not plan.preconditioned:
        return nu
    stacks = []
    for stack, group_orders in zip(plan.blocks.split(nu), orders):
        factors = iter(group_orders)
        for axis, factored in enumerate(plan.factored):
            if factored:
                order = next(factors)
                shape = [order.shape[0]] + [1] * (stack.ndim - 1)
                shape[axis + 1] = order.shape[1]
                stack = jnp.take_along_axis(stack, order.reshape(shape), axis=axis + 1)
        stacks.append(stack)
    return plan.blocks.merge(stacks).astype(nu.dtype)


def soap(learning_rate: ScalarOrSchedule = 3e-3, betas: tuple = (0.95, 0.95),
         shampoo_beta: float = -1.0, eps: float = 1e-8, weight_decay: float = 0.01,
         precondition_frequency: int = 10, max_precond_dim: int = 10000, merge_dims: bool = False,
         precondition_1d: bool = False, normalize_grads: bool = False,
         correct_bias: bool = True) -> GradientTransformation:
    """SOAP with the official defaults (``nikhilvyas/SOAP``): ``learning_rate=3e-3``,
    ``betas=(0.95, 0.95)``, ``eps=1e-8``, ``weight_decay=0.01`` (decoupled, applied after the
    step), ``precondition_frequency=10``, ``max_precond_dim=10000``, no dim merging, no 1-D
    preconditioning, no gradient normalisation, bias correction on. See the module docstring
    for the update; ``normalize_grads`` divides ``N`` by its RMS (+ eps).

    The numbers are those of ``pytorch_optimizer.SOAP`` 4.1.0 (the official code before its
    December 2024 "momentum change": ``m`` kept in the parameter's space). Differs from it:
    the bases are computed at the params' precision or float32, whichever is wider (the
    reference does its QR in float32 even for float64 params, and official SOAP its ``eigh``
    too); the first update returns zeros (the reference skips the step); ``learning_rate``
    may be a schedule (of the count before the step); no ``data_format`` argument (JAX layouts
    are chosen by the user). Needs params when ``weight_decay`` is not 0.
    """
    beta1, beta2 = betas
    checks.in_range("betas[0]", beta1, 0.0, 1.0)
    checks.in_range("betas[1]", beta2, 0.0, 1.0)
    if shampoo_beta != -1.0:
        checks.in_range("shampoo_beta", shampoo_beta, 0.0, 1.0)
    checks.non_negative("eps", eps)
    checks.non_negative("weight_decay", weight_decay)
    for name, value in (("precondition_frequency", precondition_frequency),
                        ("max_precond_dim", max_precond_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}.")
    stats_beta = beta2 if shampoo_beta == -1.0 else shampoo_beta

    def plan(shape):
        return kr.plan_leaf(shape, merge_size=max_precond_dim if merge_dims else None,
                            max_factor_size=max_precond_dim,
                            enabled=len(shape) >= 2 or (len(shape) == 1 and precondition_1d))

    def init(params):
        leaves, treedef = jax.tree.flatten(params)
        fields = []
        for make in (lambda p, plan: kr.init_factors(plan, lambda n, d: jnp.zeros(
                         (n, d, d), kr.statistics_dtype(p))),
                     lambda p, plan: kr.init_factors(plan, kr.eye_stack(kr.statistics_dtype(p))),
                     lambda p, plan: kr.init_factors(plan, lambda n, d: jnp.zeros([n], jnp.int32))):
            fields.append(treedef.unflatten([make(p, plan(jnp.shape(p))) for p in leaves]))
        zeros = plumbing.zeros_like(params)
        return SOAPState(jnp.zeros([], jnp.int32), zeros, plumbing.zeros_like(params), *fields)

    def update(updates, state, params=None):
        if params is None and weight_decay:
            raise ValueError(NO_PARAMS_MSG)
        names = ["mu", "nu", "statistics", "bases", "failures"]
        others = [getattr(state, n) for n in names] + ([params] if params is not None else [])
        treedef, leaves = plumbing.flatten_matching(
            updates, others, [f"state.{n}" for n in names] + ["params"][:params is not None],
            shaped=[True, True, False, False, False] + [True] * (params is not None))
        grads, mus, nus, stats, bases, failures = leaves[:6]
        ps = leaves[6] if params is not None else [None] * len(grads)
        count = safe_increment(state.count)
        plans = [plan(jnp.shape(g)) for g in grads]
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        steps = (count - 1).astype(compute_dtype())
        scale = lr * (jnp.sqrt(1 - beta2 ** steps) / (1 - beta1 ** steps) if correct_bias else 1.0)

        new = [_adam_in_eigenbasis(pl, g, m, v, q, p, scale=scale, lr=lr)
               for pl, g, m, v, q, p in zip(plans, grads, mus, nus, bases, ps)]
        first = count == 1
        out = [jnp.where(first, jnp.zeros_like(u), u) for u, _, _ in new]
        mus = [jnp.where(first, m, new_m) for m, (_, new_m, _) in zip(mus, new)]
        nus = [jnp.where(first, v, new_v) for v, (_, _, new_v) in zip(nus, new)]
        stats = [jax.tree.map(lambda s, x: stats_beta * s + (1 - stats_beta) * x, s,
                              kr.grams(pl, pl.blocks.split(g.astype(kr.statistics_dtype(g)))))
                 for pl, g, s in zip(plans, grads, stats)]

        def keep():
            return bases, failures, nus

        def set_up():
            new = kr.map_factors(lambda x: jax.vmap(eigenbasis)(x.astype(compute_dtype())),
                                 stats)[0]
            kept, counts, _ = kr.keep_failed(new, _all_ok(new), bases, failures)
            return kept, counts, nus

        def power_step():
            orders, new = kr.map_factors(
                lambda x, q: jax.vmap(qr_power_step)(x.astype(compute_dtype()),
                                                     q.astype(compute_dtype())),
                stats, bases, outputs=2)
            kept, counts, ok = kr.keep_failed(new, _all_ok(new), bases, failures)
            orders = jax.tree.map(lambda o, k: jnp.where(k[:, None], o, jnp.arange(o.shape[1])),
                                  orders, ok)
            return kept, counts, [_permute(pl, v, o) for pl, v, o in zip(plans, nus, orders)]

        refresh_step = ((count - 1) % precondition_frequency == 0) & (count > 1)
        index = jnp.where(first, 1, jnp.where(refresh_step, 2, 0))
        bases, failures, nus = lax.switch(index, (keep, set_up, power_step))
        unflatten = treedef.unflatten
        return unflatten(out), SOAPState(count, unflatten(mus), unflatten(nus), unflatten(stats),
                                         unflatten(bases), unflatten(failures))

    def _adam_in_eigenbasis(pl, g, m, v, q, p, *, scale, lr):
        dtype = kr.statistics_dtype(g)
        project = lambda x, back=False: pl.blocks.merge(kr.precondition(  # noqa: E731
            pl, pl.blocks.split(x.astype(dtype)), q, transpose=back))
        new_m = beta1 * m.astype(dtype) + (1 - beta1) * g.astype(dtype)
        new_v = beta2 * v.astype(dtype) + (1 - beta2) * jnp.square(project(g))
        direction = project(project(new_m) / (jnp.sqrt(new_v) + eps), back=True)
        if normalize_grads:
            direction = direction / (jnp.sqrt(jnp.mean(jnp.square(direction))) + eps)
        step = -scale * direction
        if weight_decay:
            step = step - lr * weight_decay * (p.astype(dtype) + step)
        return step.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)

    return GradientTransformation(init, update)


def _all_ok(tree):
    return jax.tree.map(lambda q: jnp.ones(q.shape[:1], bool), tree)


__all__ = ["SOAPState", "soap"]
