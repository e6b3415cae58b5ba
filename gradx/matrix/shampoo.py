"""Shampoo: one implementation (``scale_by_shampoo``) behind two entry points,
``distributed_shampoo`` (Google's JAX package) and ``shampoo`` (Meta's PyTorch optimizer).

Per block ``G`` of a leaf (``gradx.matrix.blocks``), for each factored axis ``i``::

    Sᵢ ← β₂·Sᵢ + w·G_(i)G_(i)ᵀ                   w = 1 if β₂ = 1 else 1 − β₂
    Pᵢ = (Sᵢ/c + ε·I)^(−1/p)   every k steps    p = 2·(number of factored axes), c = 1 − β₂ᵗ
    P(X) = X ×₀ P₀ ×₁ P₁ …                        (or 1: Meta's bias correction of the statistics)

with the roots of the whole model computed in one batched call per factor size (coupled Newton
iteration or ``eigh``), kept when they fail. ``X`` is the gradient (Google) or Meta's filtered
gradient ``m̂ = m/(1 − β₁ᵗ)``, ``m ← β₁m + (1 − β₁)g``; the direction is grafted to the norm of a
diagonal method's step ``D`` (``gradx.matrix.Graft``); before the start step the step is ``D``;
then Google's momentum ``μ ← β₁μ + (S + λp)`` (Nesterov: ``(S + λp) + β₁μ``) and ``−η``.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gradx import checks, plumbing
from gradx.base import GradientTransformation, NO_PARAMS_MSG, safe_increment
from gradx.matrix import kronecker as kr
from gradx.matrix.functions import (HIGHEST, compute_dtype, coupled_newton_inverse_root,
                                    eigh_inverse_root, power_iteration)
from gradx.matrix.grafting import Graft, GraftingType, google_graft, meta_graft


class ShampooState(NamedTuple):
    """Shampoo's state: per leaf, the statistics and inverse roots of its factors (nested
    tuples: block groups, then factored axes, each a ``(count, d, d)`` stack), the number of
    failed root computations per factor matrix, the graft's accumulator and two momenta
    (Google: of the Shampoo and of the graft step; Meta: ``momentum`` is the filtered
    gradient). Leaves without factors (the diagonal fallback) hold ``()`` there."""

    count: jax.Array
    statistics: Any
    preconditioners: Any
    failures: Any
    diagonal_statistics: Any
    momentum: Any
    diagonal_momentum: Any

    PER_PARAM_FIELDS = ("statistics", "preconditioners", "failures")

    def memory_notes(self, params) -> list[str]:
        """One note per parameter leaf for ``gradx.memory_report``."""
        return kr.fallback_notes(self.preconditioners, params,
                                 "not preconditioned: diagonal fallback (the graft's step)")


class _Config(NamedTuple):
    plan: Callable[[tuple], kr.FactorPlan]
    beta1: float                 # momentum after grafting (Google); 0 for Meta
    beta2: float
    filter_beta1: float          # Meta's filtered gradient (0: precondition the gradient)
    filter_beta3: float
    bias_correction: bool        # Meta: m̂ and S/(1 − β₂ᵗ)
    initial_statistics: float
    statistics_every: int
    refresh_when: Callable[[jax.Array], jax.Array]   # of the 1-based step
    start: int                   # first 1-based step that uses the preconditioner
    root: str                    # 'coupled_newton' | 'eigh' | 'eigh_clamp'
    epsilon: float
    relative_epsilon: bool
    failure_threshold: float
    exponent_override: int
    graft: Optional[Graft]
    nesterov: bool
    moving_average: bool
    weight_decay: float
    l2: bool                     # Meta: g ← g + λp first
    decoupled_weight_decay: bool  # Google: + η·λ·p after momentum
    decoupled_learning_rate: bool
    learning_rate: Any
    precision: Any
    gram_precision: Any


def google_v0(size, dtype):
    """The power iteration's start of Google's ``power_iteration``: a fixed uniform vector."""
    return jnp.asarray(np.random.RandomState(1729).uniform(-1.0, 1.0, size), dtype)


def _roots(config: _Config):
    """The batched root function ``(stats, p) -> (roots, ok)`` of the configuration."""

    def one(matrix, p):
        if config.root == "coupled_newton":
            root, error = coupled_newton_inverse_root(
                matrix, p, config.epsilon, relative_epsilon=config.relative_epsilon,
                num_tries=6, eigenvalue_floor=1e-25, precision=config.precision,
                power_v0=google_v0(matrix.shape[-1], matrix.dtype))
        else:
            epsilon = config.epsilon
            if config.relative_epsilon:
                v0 = google_v0(matrix.shape[-1], matrix.dtype)
                epsilon = epsilon * jnp.maximum(power_iteration(matrix, v0=v0)[0], 1e-6)
            root, error = eigh_inverse_root(matrix, p, epsilon, precision=config.precision,
                                            floor="clamp" if config.root == "eigh_clamp"
                                            else "shift")
        return root, ~(error >= config.failure_threshold) & ~jnp.isnan(error)

    def stacked(stats, p):
        matrices = stats.astype(compute_dtype())
        if isinstance(p, int):  # a static exponent (the coupled Newton iteration)
            return jax.vmap(lambda m: one(m, p))(matrices)
        return jax.vmap(one)(matrices, p)

    return stacked


def scale_by_shampoo(config: _Config) -> GradientTransformation:
    """The one Shampoo transformation (see the module docstring); ``distributed_shampoo`` and
    ``shampoo`` build its configuration."""
    graft = config.graft
    root_fn = _roots(config)

    def init_leaf(p):
        plan = config.plan(jnp.shape(p))
        dtype = kr.statistics_dtype(p)
        stats = kr.init_factors(plan, lambda n, d: jnp.broadcast_to(
            config.initial_statistics * jnp.eye(d, dtype=dtype), (n, d, d)))
        keeps_momentum = config.beta1 != 0.0 or config.filter_beta1 != 0.0
        return (stats, kr.init_factors(plan, kr.eye_stack(dtype)),
                kr.init_factors(plan, lambda n, d: jnp.zeros([n], jnp.int32)),
                graft.init(p, dtype) if graft is not None else (),
                jnp.zeros_like(p) if keeps_momentum else (),
                jnp.zeros_like(p) if config.beta1 != 0.0 and graft is not None else ())

    def init(params):
        per_leaf = [init_leaf(p) for p in jax.tree.leaves(params)]
        treedef = jax.tree.structure(params)
        fields = [treedef.unflatten([leaf[i] for leaf in per_leaf]) for i in range(6)]
        return ShampooState(jnp.zeros([], jnp.int32), *fields)

    def update(updates, state, params=None):
        if params is None and config.weight_decay:
            raise ValueError(NO_PARAMS_MSG)
        names = ["statistics", "preconditioners", "failures", "diagonal_statistics",
                 "momentum", "diagonal_momentum"]
        others = [getattr(state, n) for n in names]
        if params is not None:
            others.append(params)
        treedef, leaves = plumbing.flatten_matching(
            updates, others, [f"state.{n}" for n in names] + ["params"][:params is not None],
            shaped=[False] * len(names) + [True] * (params is not None))
        grads, stats, roots, failures, accs, moms, dmoms = leaves[:7]
        ps = leaves[7] if params is not None else [None] * len(grads)
        count = safe_increment(state.count)
        step = state.count
        plans = [config.plan(jnp.shape(g)) for g in grads]
        dtypes = [kr.statistics_dtype(g) for g in grads]

        if config.l2 and config.weight_decay:
            grads = [g + config.weight_decay * p for g, p in zip(grads, ps)]
        stats = [_statistics(config, plan, g.astype(dt), s, step)
                 for plan, g, dt, s in zip(plans, grads, dtypes, stats)]

        correction = (1.0 - config.beta2 ** count.astype(compute_dtype())
                      if config.bias_correction and config.beta2 < 1.0 else None)
        # Static exponents for the coupled Newton iteration (its matrix powers unroll); one
        # exponent per matrix for eigh, so every factor of a size shares one call.
        static = config.root == "coupled_newton"
        exponents = [kr.init_factors(
            plan, lambda n, d, p=config.exponent_override or 2 * plan.num_factors:
            p if static else jnp.full([n], p, compute_dtype())) for plan in plans]

        def compute():
            scaled = stats if correction is None else jax.tree.map(
                lambda s: s / correction.astype(s.dtype), stats)
            return kr.map_factors(root_fn, scaled, exponents, outputs=2)

        roots, failures = kr.refresh(config.refresh_when(count), compute, roots, failures)

        lr = config.learning_rate(step) if callable(config.learning_rate) else config.learning_rate
        outputs = [_leaf_step(config, plan, g, p, r, acc, m, dm, count=count, lr=lr, dtype=dt)
                   for plan, g, p, r, acc, m, dm, dt
                   in zip(plans, grads, ps, roots, accs, moms, dmoms, dtypes)]
        u, accs, moms, dmoms = (list(x) for x in zip(*outputs)) if outputs else ([],) * 4
        unflatten = treedef.unflatten
        return unflatten(u), ShampooState(count, unflatten(stats), unflatten(roots),
                                          unflatten(failures), unflatten(accs), unflatten(moms),
                                          unflatten(dmoms))

    return GradientTransformation(init, update)


def _statistics(config: _Config, plan: kr.FactorPlan, g, stats, step):
    """``β₂·S + w·G_(i)G_(i)ᵀ`` for every factor of the leaf (every ``statistics_every`` steps)."""
    if not plan.preconditioned:
        return stats
    weight = 1.0 if config.beta2 == 1.0 else 1.0 - config.beta2

    def new():
        fresh = kr.grams(plan, plan.blocks.split(g), config.gram_precision)
        return jax.tree.map(lambda s, x: (s if config.beta2 == 1.0 else config.beta2 * s)
                            + weight * x, stats, fresh)

    if config.statistics_every == 1:
        return new()
    return lax.cond(step % config.statistics_every == 0, new, lambda: stats)


def _leaf_step(config: _Config, plan, g, p, roots, acc, mom, dmom, *, count, lr, dtype):
    """The update of one leaf from its refreshed roots (see the module docstring)."""
    graft = config.graft
    g32 = g.astype(dtype)
    x = g32
    if config.filter_beta1 != 0.0:
        b1, b3 = config.filter_beta1, config.filter_beta3
        m_old = mom.astype(dtype)
        new_mom = b1 * m_old + (1 - b1) * g32
        x = new_mom if b3 == b1 else b3 * m_old + (1 - b3) * g32
        if config.bias_correction:
            x = x / (1 - b3 * b1 ** (count - 1).astype(dtype))
        mom = new_mom.astype(mom.dtype)
    if graft is not None:
        acc = graft.accumulate(g32, acc)
        diagonal = graft.direction(x, acc, count)
    lr_inside = 1.0 if config.decoupled_learning_rate else lr
    if graft is not None:
        diagonal = diagonal * lr_inside
    if plan.preconditioned:
        blocks = plan.blocks
        direction = blocks.merge(kr.precondition(plan, blocks.split(x), roots,
                                                 precision=config.precision))
    else:
        direction = diagonal
    if graft is not None and graft.rescale:
        if graft.per_block:
            direction = plan.blocks.merge([graft.rescale_to(a, b) for a, b in zip(
                plan.blocks.split(direction), plan.blocks.split(diagonal))])
        else:
            direction = graft.rescale_to(direction, diagonal)
    decay = (config.weight_decay * p.astype(dtype)
             if config.weight_decay and not config.l2 and not config.decoupled_weight_decay
             else 0.0)
    shampoo_step = direction + decay
    run = count >= config.start
    if graft is not None:
        graft_step = diagonal + decay
        chosen = jnp.where(run, shampoo_step, graft_step)
    else:
        chosen = shampoo_step
    if config.beta1 != 0.0:
        b1, w = config.beta1, (1.0 - config.beta1) if config.moving_average else 1.0
        new_mom = b1 * mom.astype(dtype) + w * shampoo_step
        momentum = new_mom
        mom = new_mom.astype(mom.dtype)
        if graft is not None:
            new_dmom = b1 * dmom.astype(dtype) + w * graft_step
            momentum = jnp.where(run, new_mom, new_dmom)
            dmom = new_dmom.astype(dmom.dtype)
        chosen = w * chosen + b1 * momentum if config.nesterov else momentum
    if config.weight_decay and config.decoupled_weight_decay:
        chosen = chosen + lr * config.weight_decay * p.astype(dtype)
    lr_outside = lr if config.decoupled_learning_rate else 1.0
    return (-lr_outside * chosen).astype(g.dtype), acc, mom, dmom


def _unsupported(**values):
    """Raises ``ValueError`` for the first Google option gradx does not implement."""
    for name, (value, default) in values.items():
        if value != default:
            raise ValueError(f"{name}={value!r} is not supported by gradx.distributed_shampoo "
                             f"(only the default {default!r}); multi-device work is done by "
                             "sharding the stacked block axis instead.")


def _integer(name, value, low):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}.")


def distributed_shampoo(
    learning_rate, block_size, beta1=0.9, beta2=0.999, diagonal_epsilon=1e-10,
    matrix_epsilon=1e-6, weight_decay=0.0, start_preconditioning_step=5,
    preconditioning_compute_steps=1, statistics_compute_steps=1,
    best_effort_shape_interpretation=True, graft_type=GraftingType.SGD, nesterov=True,
    exponent_override=0, batch_axis_name=None, statistics_partition_spec=None,
    preconditioner_partition_spec=None, num_devices_for_pjit=None, shard_optimizer_states=False,
    best_effort_memory_usage_reduction=False, inverse_failure_threshold=0.1,
    moving_average_for_momentum=False, skip_preconditioning_dim_size_gt=4096,
    clip_by_scaled_gradient_norm=None, precision=HIGHEST, tensordot_precision=None,
    relative_matrix_epsilon=True, merge_small_dims_block_size=4096, lobpcg_topk_precondition=0,
    lobpcg_max_iter=0, precondtioner_type=1, generate_fd_metrics=False, compression_rank=0,
    frequent_directions=False, reset_preconditioner=False, average_grad=False,
    skip_preconditioning_rank_lt=1, decoupled_learning_rate=True, decoupled_weight_decay=False,
    generate_training_metrics=True, reuse_preconditioner=False, eigh=False,
) -> GradientTransformation:
    """Google's distributed Shampoo (Anil et al., 2020), as ``precondition-opt`` 0.3.0's
    ``distributed_shampoo``: same signature, defaults and numbers (float32), so switching is
    one import.

    Each leaf is reshaped (dims merged up to ``merge_small_dims_block_size``) and cut into
    ``block_size`` blocks (use 128 as a default, says Google); per block and axis,
    ``S ← β₂S + (1 − β₂)·GGᵀ`` (``S₀ = matrix_epsilon·I``; weight 1 when ``β₂ = 1``) every
    ``statistics_compute_steps`` steps, and every ``preconditioning_compute_steps`` steps
    (0-based step divisible) the root ``P = (S + ε·λ_max(S)·I)^(−1/p)``, ``p = 2·rank`` (or
    ``exponent_override``), by the coupled Newton iteration (``eigh=True``: an
    eigendecomposition), all factors of one size in one batched call. A root whose error
    reaches ``inverse_failure_threshold`` (0.1) or is NaN keeps the previous one (counted in
    ``ShampooState.failures``). The step ``P(g)·‖D‖/‖P(g)‖`` is grafted to the step ``D`` of
    ``graft_type`` (SGD by default), with ``D`` alone before ``start_preconditioning_step``
    (0-based) and for leaves of rank ``< skip_preconditioning_rank_lt`` or with a dimension
    ``> skip_preconditioning_dim_size_gt``; then ``μ ← β₁μ + (step + λp)``, Nesterov
    ``(step + λp) + β₁μ``, update ``−η·…``.

    Differs from the package: it runs on current JAX (no ``jax.tree_map``), with x64 enabled
    (roots then in float64), and the roots of all leaves go through one batched call per size
    instead of being padded to the largest. Not supported (ValueError): ``pmap``/``pjit``
    sharding arguments, quantized states, LOBPCG, low-rank and frequent-directions
    preconditioners; ``generate_training_metrics`` and ``reuse_preconditioner`` are accepted
    and have no effect (the package ignores the latter too).
    """
    _unsupported(batch_axis_name=(batch_axis_name, None),
                 statistics_partition_spec=(statistics_partition_spec, None),
                 preconditioner_partition_spec=(preconditioner_partition_spec, None),
                 num_devices_for_pjit=(num_devices_for_pjit, None),
                 shard_optimizer_states=(shard_optimizer_states, False),
                 best_effort_memory_usage_reduction=(best_effort_memory_usage_reduction, False),
                 lobpcg_topk_precondition=(lobpcg_topk_precondition, 0),
                 generate_fd_metrics=(generate_fd_metrics, False),
                 compression_rank=(compression_rank, 0),
                 frequent_directions=(frequent_directions, False),
                 reset_preconditioner=(reset_preconditioner, False),
                 average_grad=(average_grad, False))
    del lobpcg_max_iter, generate_training_metrics, reuse_preconditioner
    _integer("block_size", block_size, 0)
    checks.in_range("beta1", beta1, 0.0, 1.0, high_open=False)
    checks.in_range("beta2", beta2, 0.0, 1.0, high_open=False)
    for name, value in (("diagonal_epsilon", diagonal_epsilon), ("matrix_epsilon", matrix_epsilon),
                        ("weight_decay", weight_decay)):
        checks.non_negative(name, value)
    _integer("start_preconditioning_step", start_preconditioning_step, 0)
    _integer("preconditioning_compute_steps", preconditioning_compute_steps, 1)
    _integer("statistics_compute_steps", statistics_compute_steps, 1)
    _integer("exponent_override", exponent_override, 0)
    _integer("skip_preconditioning_dim_size_gt", skip_preconditioning_dim_size_gt, 1)
    _integer("merge_small_dims_block_size", merge_small_dims_block_size, 1)
    checks.positive("inverse_failure_threshold", inverse_failure_threshold)
    checks.one_of("graft_type", int(graft_type), [int(t) for t in GraftingType])
    checks.one_of("precondtioner_type", int(precondtioner_type), (1, 2, 3))

    def select(merged):
        rank = len(merged)
        if int(precondtioner_type) == 1 or rank <= 1:
            return (True,) * rank
        last = int(precondtioner_type) == 3
        return tuple((i == rank - 1) == last for i in range(rank))

    def plan(shape):
        skip = len(shape) < skip_preconditioning_rank_lt or any(
            d > skip_preconditioning_dim_size_gt for d in shape)
        return kr.plan_leaf(shape, block_size=block_size or None,
                            merge_size=(merge_small_dims_block_size
                                        if best_effort_shape_interpretation else None),
                            select=select, enabled=not skip)

    return scale_by_shampoo(_Config(
        plan=plan, beta1=beta1, beta2=beta2, filter_beta1=0.0, filter_beta3=0.0,
        bias_correction=False, initial_statistics=matrix_epsilon,
        statistics_every=statistics_compute_steps,
        refresh_when=lambda t: (t - 1) % preconditioning_compute_steps == 0,
        start=start_preconditioning_step + 1, root="eigh_clamp" if eigh else "coupled_newton",
        epsilon=matrix_epsilon, relative_epsilon=relative_matrix_epsilon,
        failure_threshold=inverse_failure_threshold, exponent_override=exponent_override,
        graft=google_graft(graft_type, beta2, diagonal_epsilon, clip_by_scaled_gradient_norm),
        nesterov=nesterov, moving_average=moving_average_for_momentum,
        weight_decay=weight_decay, l2=False, decoupled_weight_decay=decoupled_weight_decay,
        decoupled_learning_rate=decoupled_learning_rate, learning_rate=learning_rate,
        precision=precision, gram_precision=tensordot_precision))


def shampoo(learning_rate=1e-2, betas=(0.9, 1.0), beta3=-1.0, epsilon=1e-12,
            weight_decay=0.0, weight_decay_type="decoupled", max_preconditioner_dim=1024,
            precondition_frequency=1, start_preconditioning_step=-1, use_bias_correction=True,
            grafting=None, grafting_epsilon=1e-10, grafting_beta2=None, *,
            root="eigh") -> GradientTransformation:
    """Meta's Distributed Shampoo (the AlgoPerf v0.5 external-tuning winner), as
    ``DistributedShampoo`` of ``facebookresearch/optimizers`` with its defaults: ``eigh``
    inverse roots, ``epsilon=1e-12``, ``betas=(0.9, 1.0)``, blocks of 1024, roots every step,
    no grafting.

    Each leaf is reshaped (dims of 1 dropped, trailing dims merged up to
    ``max_preconditioner_dim``; a 0-d leaf becomes ``(1,)``) and cut into blocks of
    ``max_preconditioner_dim``. Per block and axis, ``S ← β₂S + w·G_(i)G_(i)ᵀ`` (``w = 1`` when
    ``β₂ = 1``, else ``1 − β₂``; ``S₀ = 0``); on step ``t`` with ``t % precondition_frequency == 0``
    (from ``start_preconditioning_step``, which -1 sets to ``precondition_frequency``) the root
    ``P = (S/(1 − β₂ᵗ) + ε·I)^(−1/(2k))`` for a block of order ``k`` from ``eigh`` (eigenvalues
    shifted by ``ε − λ_min`` when ``λ_min < ε``), one batched ``eigh`` per factor size; a
    non-finite root keeps the previous one (``ShampooState.failures`` counts them). The
    filtered gradient ``m̂ = m/(1 − β₁ᵗ)``, ``m ← β₁m + (1 − β₁)g`` (``beta3``: Meta's second
    interpolation), is preconditioned, grafted per block to ``grafting`` (``'sgd'``,
    ``'adagrad'``, ``'rmsprop'``, ``'adam'``, with ``grafting_epsilon`` 1e-10) and, before the
    start step, replaced by the graft's step; decoupled weight decay adds ``λp``
    (``weight_decay_type='l2'``: ``g ← g + λp`` first); the update is ``−η·(…)``.

    ``root='coupled_newton'`` uses the coupled Newton iteration (Meta's ``CoupledNewtonConfig``,
    absolute ``ε``) instead of ``eigh``. Differs from Meta's: no exception after repeated root
    failures (the count is in the state), no iterate averaging or distributed configs, and
    ``learning_rate`` may be a schedule of the step count.
    """
    beta1, beta2 = betas
    checks.in_range("betas[0]", beta1, 0.0, 1.0)
    checks.in_range("betas[1]", beta2, 0.0, 1.0, high_open=False)
    if beta3 != -1.0:
        checks.in_range("beta3", beta3, 0.0, 1.0)
    checks.positive("epsilon", epsilon)
    checks.non_negative("weight_decay", weight_decay)
    checks.one_of("weight_decay_type", weight_decay_type, ("decoupled", "l2"))
    _integer("max_preconditioner_dim", max_preconditioner_dim, 1)
    _integer("precondition_frequency", precondition_frequency, 1)
    _integer("start_preconditioning_step", start_preconditioning_step, -1)
    start = (precondition_frequency if start_preconditioning_step == -1
             else start_preconditioning_step)
    if start < precondition_frequency:
        raise ValueError(f"start_preconditioning_step must be >= precondition_frequency="
                         f"{precondition_frequency}, got start_preconditioning_step="
                         f"{start_preconditioning_step}.")
    checks.one_of("root", root, ("eigh", "coupled_newton"))
    graft = meta_graft(grafting, grafting_epsilon, grafting_beta2)

    def plan(shape):
        return kr.plan_leaf(shape, block_size=max_preconditioner_dim,
                            merge_size=max_preconditioner_dim, reverse=True, promote_scalar=True)

    return scale_by_shampoo(_Config(
        plan=plan, beta1=0.0, beta2=beta2, filter_beta1=beta1,
        filter_beta3=beta1 if beta3 == -1.0 else beta3, bias_correction=use_bias_correction,
        initial_statistics=0.0, statistics_every=1,
        refresh_when=lambda t: ((t % precondition_frequency == 0) & (t > start)) | (t == start),
        start=start, root=root, epsilon=epsilon, relative_epsilon=False,
        failure_threshold=jnp.inf if root == "eigh" else 0.1, exponent_override=0,
        graft=graft, nesterov=False, moving_average=False, weight_decay=weight_decay,
        l2=weight_decay_type == "l2", decoupled_weight_decay=False, decoupled_learning_rate=True,
        learning_rate=learning_rate, precision=HIGHEST, gram_precision=HIGHEST))


__all__ = ["ShampooState", "GraftingType", "distributed_shampoo", "shampoo"]
