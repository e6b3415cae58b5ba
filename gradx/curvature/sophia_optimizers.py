"""Sophia: sign-like momentum steps scaled by a diagonal curvature estimate, clipped per element.

One rule, per leaf, for both of Sophia's estimators and both reference implementations::

    m ← b1·m + (1 - b1)·g
    h ← b2·h + (1 - b2)·ĥ          only on refresh steps (every ``update_interval``), ĥ ≈ diag(H)
    u = clip(m̂ / max(γ·h, ε), ±clip_threshold)

``ĥ`` comes from ``hessian_diagonal_fn`` (``gradx.curvature.estimators``): Hutchinson's
estimator (Sophia-H, needs ``obj_fn=`` in the update) or the Gauss-Newton-Bartlett estimator
(Sophia-G, needs ``logits_fn=``). The estimator runs under a scalar ``lax.cond``, so it costs
nothing on the other steps and one compiled step serves both kinds (under ``vmap`` with a
batched step count a ``cond`` becomes a ``select`` and would run it every step).

- ``sophia`` / ``scale_by_sophia``: ``optax.contrib.sophia`` 0.2.8 (signature, defaults, state,
  numbers): ``m̂ = m/(1 - b1^t)``, ``max(γ·h, ε)``, refresh on steps 0, k, 2k, … *after* the
  update is computed; any estimator.
- ``sophia_g``: the authors' ``SophiaG`` (``sophia-opt`` 0.2.2 = ``Liuhong99/Sophia``) with
  the refresh of their training loop: no bias correction, ``ρ·bs·h + 1e-15``, refresh on steps
  k, 2k, … *before* the update; Gauss-Newton-Bartlett estimator.
"""

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.base import (NO_PARAMS_MSG, GradientTransformation, GradientTransformationExtraArgs,
                        MaskOrFn, ScalarOrSchedule, with_extra_args_support)
from gradx.combine import chain
from gradx.curvature.estimators import (gauss_newton_bartlett_estimator,
                                        hutchinson_estimator_diag_hessian)
from gradx.leafwise import Moment, PerLeaf, debias_factor, leafwise
from gradx.scaling import scale_by_learning_rate
from gradx.weight_decay import add_decayed_weights

__all__ = ["SophiaState", "scale_by_sophia", "sophia", "sophia_g"]

Estimator = Union[GradientTransformation, GradientTransformationExtraArgs]


class SophiaState(NamedTuple):
    """State of Sophia (Optax's class): the step count, the momentum ``mu``, the EMA ``nu`` of
    the Hessian-diagonal estimates and the estimator's state."""

    count: jax.Array  # int32 scalar
    mu: Any
    nu: Any
    hessian_fn_state: Any


class _Form(NamedTuple):
    """Where the implementations of Sophia differ; the formula is otherwise the same."""

    debias: bool         # m̂ = m / (1 - b1^t) (Optax), or m (the authors' SophiaG)
    eps_added: bool      # γ·h + ε (the authors' code), or max(γ·h, ε) (the paper, Optax)
    refresh_first: bool  # refresh on steps k, 2k, ... before the update (the authors' loop),
    #                      or on steps 0, k, 2k, ... after it (Optax)


_OPTAX = _Form(debias=True, eps_added=False, refresh_first=False)
_AUTHORS = _Form(debias=False, eps_added=True, refresh_first=True)


def _check(b1, b2, eps, gamma, clip_threshold, update_interval):
    checks.in_range("b1", b1, 0.0, 1.0)
    checks.in_range("b2", b2, 0.0, 1.0)
    checks.non_negative("eps", eps)
    checks.non_negative("gamma", gamma)
    if clip_threshold is not None:
        checks.positive("clip_threshold", clip_threshold)
    checks.positive_integer("update_interval", update_interval)


def _sophia_rule(form: _Form, b1, b2, eps, gamma, clip_threshold):
    """The per-leaf rule: ``g`` and the moments in, ``(u, m, h)`` out."""

    def rule(g, mu, nu, *, bc1, refresh, estimate):
        mu = (1 - b1) * g + b1 * mu
        fresh = jnp.where(refresh, (1 - b2) * estimate + b2 * nu, nu)
        curvature = gamma * (fresh if form.refresh_first else nu)
        denominator = curvature + eps if form.eps_added else jnp.maximum(curvature, eps)
        ratio = mu / jnp.asarray(bc1).astype(jnp.result_type(mu)) / denominator
        if clip_threshold is not None:
            ratio = jnp.clip(ratio, -clip_threshold, clip_threshold)
        return ratio, mu, fresh

    return rule


def _scale_by_sophia(form: _Form, b1, b2, eps, gamma, clip_threshold, update_interval,
                     hessian_diagonal_fn: Estimator, mu_dtype, verbose=False,
                     print_win_rate_every_n_steps=0) -> GradientTransformationExtraArgs:
    _check(b1, b2, eps, gamma, clip_threshold, update_interval)
    checks.non_negative("print_win_rate_every_n_steps", print_win_rate_every_n_steps)
    printing = verbose and clip_threshold is not None and print_win_rate_every_n_steps != 0
    if printing:
        checks.positive_integer("print_win_rate_every_n_steps", print_win_rate_every_n_steps)
    mu_dtype = plumbing.canonicalize_dtype(mu_dtype)
    estimator = with_extra_args_support(hessian_diagonal_fn)

    def step_scalars(count, updates, params, hessian_fn_state, **extra_args):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        done = count - 1  # steps before this one
        refresh = done % update_interval == 0
        if form.refresh_first:
            refresh = refresh & (done > 0)

        def estimate(fn_state):
            return estimator.update(updates, fn_state, params, **extra_args)

        shapes = jax.eval_shape(estimate, hessian_fn_state)[0]

        def keep(fn_state):
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), fn_state

        estimates, hessian_fn_state = jax.lax.cond(refresh, estimate, keep, hessian_fn_state)
        bc1 = debias_factor(b1, count) if form.debias else jnp.ones([], jnp.float32)
        leaves = jax.tree.structure(updates).flatten_up_to(estimates)
        return ({"bc1": bc1, "refresh": refresh, "estimate": PerLeaf(leaves)},
                {"hessian_fn_state": hessian_fn_state})

    tx = leafwise(_sophia_rule(form, b1, b2, eps, gamma, clip_threshold), SophiaState,
                  moments=(Moment("mu", dtype=mu_dtype), Moment("nu")),
                  step_scalars=step_scalars, elementwise=False,
                  step_inputs=("updates", "params", "extra_args"),
                  carry={"hessian_fn_state": estimator.init})
    return _printing_win_rate(tx, clip_threshold, print_win_rate_every_n_steps) if printing else tx


def _printing_win_rate(tx, clip_threshold, every) -> GradientTransformationExtraArgs:
    """Prints the fraction of unclipped elements (``|u| < clip_threshold``) every ``every``
    steps. A clipped element is exactly ``±clip_threshold``, so it is read from the output."""

    def update(updates, state, params=None, **extra_args):
        updates, state = tx.update(updates, state, params, **extra_args)
        leaves = jax.tree.leaves(updates)
        wins = sum(jnp.sum(jnp.abs(u) < clip_threshold) for u in leaves)
        win_rate = wins / sum(u.size for u in leaves)
        jax.lax.cond(state.count % every == 0,
                     lambda: jax.debug.print("Sophia optimizer win rate: {}", win_rate),
                     lambda: None)
        return updates, state

    return GradientTransformationExtraArgs(tx.init, update)


def scale_by_sophia(b1: float = 0.965, b2: float = 0.99, eps: float = 1e-8, gamma: float = 0.01,
                    clip_threshold: Optional[float] = 1.0, update_interval: int = 10,
                    hessian_diagonal_fn: Estimator = hutchinson_estimator_diag_hessian(),
                    mu_dtype: Optional[Any] = None, verbose: bool = False,
                    print_win_rate_every_n_steps: int = 0) -> GradientTransformationExtraArgs:
    """Rescales updates by Sophia: ``u = clip(m̂ / max(γ·h, ε), ±clip_threshold)``.

    ``m ← b1·m + (1-b1)·g``, ``m̂ = m/(1-b1^t)``; ``h ← b2·h + (1-b2)·ĥ`` on the steps whose
    count before the update is a multiple of ``update_interval`` (0, k, 2k, …), *after* ``u``
    is computed, so step 0 moves by ``±clip_threshold·sign(g)`` and each estimate is used from
    the next step on. ``ĥ = hessian_diagonal_fn.update(g, state, params, **extra_args)``, run
    under ``lax.cond`` on refresh steps only; the default, Hutchinson's estimator, needs the
    extra argument ``obj_fn`` (the loss as a function of the params), and
    ``gauss_newton_bartlett_estimator()`` needs ``logits_fn``. ``verbose`` prints the win rate
    (the fraction of unclipped elements; the authors advise 0.1-0.5, raise ``gamma`` if lower)
    every ``print_win_rate_every_n_steps`` steps (0, the default: never).

    Defaults as Optax: ``b1=0.965, b2=0.99`` (effective ``1 - (1-b2)/k`` per step),
    ``eps=1e-8, gamma=0.01, clip_threshold=1.0, update_interval=10``. ``mu_dtype`` stores ``m``
    in that dtype; ``h`` keeps the params' dtype. State ``SophiaState(count, mu, nu,
    hessian_fn_state)``.

    Reference: Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language
    Model Pre-training", 2023. Same numbers as Optax 0.2.8's ``contrib.scale_by_sophia``;
    differences: ``verbose`` with ``print_win_rate_every_n_steps=0`` prints nothing, as Optax
    documents (Optax prints on every step: its ``count % 0`` is 0 on CPU, undefined in XLA);
    impossible hyperparameters raise ``ValueError`` at construction; updates keep the
    gradients' dtype; the win rate is read from the clipped output (equal, but for an element
    that rounds up to ``clip_threshold`` in a low-precision update dtype). Memory: two
    param-sized buffers, as Adam. Under ``pmap`` or ``shard_map`` each device's estimate is its
    own: average it inside ``hessian_diagonal_fn`` (as Optax warns).
    """
    return _scale_by_sophia(_OPTAX, b1, b2, eps, gamma, clip_threshold, update_interval,
                            hessian_diagonal_fn, mu_dtype, verbose, print_win_rate_every_n_steps)


def sophia(learning_rate: ScalarOrSchedule, b1: float = 0.965, b2: float = 0.99,
           eps: float = 1e-8, weight_decay: ScalarOrSchedule = 1e-4,
           weight_decay_mask: MaskOrFn = None, gamma: float = 0.01,
           clip_threshold: Optional[float] = 1.0, update_interval: int = 10,
           hessian_diagonal_fn: Estimator = hutchinson_estimator_diag_hessian(),
           mu_dtype: Optional[Any] = None, verbose: bool = False,
           print_win_rate_every_n_steps: int = 0) -> GradientTransformationExtraArgs:
    """Sophia-H, exactly ``optax.contrib.sophia`` 0.2.8: ``u = -η·(clip(m̂/max(γ·h, ε), ±1) + λ·p)``.

    ``scale_by_sophia`` (see it for the rule and the refresh schedule), then decoupled weight
    decay ``λ = weight_decay`` on the leaves ``weight_decay_mask`` selects, then ``-η``. The
    default estimator is Hutchinson's: every update needs ``obj_fn=``, the loss as a function
    of the params alone, e.g. in a jitted step
    ``tx.update(grads, state, params, obj_fn=lambda p: loss(p, batch))``; with
    ``hessian_diagonal_fn=gradx.gauss_newton_bartlett_estimator()`` pass ``logits_fn=``
    instead (Sophia-G's estimator in Optax's form; ``sophia_g`` is the authors' form).

    Defaults as Optax: ``b1=0.965, b2=0.99, eps=1e-8, weight_decay=1e-4, gamma=0.01,
    clip_threshold=1.0, update_interval=10``. State ``(SophiaState, weight decay state,
    learning-rate state)``.

    Reference: Liu et al., 2023 (Algorithm 3 with Hutchinson's estimator, Algorithm 1). Differs
    from the paper as Optax does: Rademacher rather than Gaussian probes, ``m`` bias-corrected,
    ``h`` refreshed after the step that estimates it (the paper refreshes before using it),
    ``γ`` and ``lr`` separate where the authors' code folds them into ``ρ`` and ``lr``. Cost:
    2 param-sized buffers (as AdamW) and one Hessian-vector product (~2-3 gradients) every
    ``update_interval`` steps.

    Examples:
      >>> loss = lambda p: jnp.sum(jnp.array([1.0, 4.0]) * p ** 2)  # curvatures 2 and 8
      >>> tx = gradx.sophia(learning_rate=0.2, b1=0.0, b2=0.0, gamma=1.0, weight_decay=0.0)
      >>> params = jnp.array([0.5, 0.5])
      >>> state = tx.init(params)
      >>> for _ in range(3):  # step 0: h = 0, a clipped step; then g / h, the Newton step
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params, obj_fn=loss)
      ...     params = gradx.apply_updates(params, updates)
      ...     print(np.asarray(updates, float).round(4))
      [-0.2 -0.2]
      [-0.06 -0.06]
      [-0.048 -0.048]
    """
    return chain(
        scale_by_sophia(b1, b2, eps, gamma, clip_threshold, update_interval, hessian_diagonal_fn,
                        mu_dtype, verbose, print_win_rate_every_n_steps),
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )


def sophia_g(learning_rate: ScalarOrSchedule = 1e-4, b1: float = 0.965, b2: float = 0.99,
             rho: float = 0.04, weight_decay: ScalarOrSchedule = 0.1,
             weight_decay_mask: MaskOrFn = None, bs: int = 5120, update_interval: int = 10,
             hessian_diagonal_fn: Estimator = gauss_newton_bartlett_estimator(),
             mu_dtype: Optional[Any] = None) -> GradientTransformationExtraArgs:
    """Sophia-G as the authors wrote it: ``u = -η·(clip(m / (ρ·bs·h + 1e-15), ±1) + λ·p)``.

    ``m ← b1·m + (1-b1)·g`` (no bias correction); ``h ← b2·h + (1-b2)·ĝ⊙ĝ`` with ``ĝ`` the
    gradient of the loss on labels sampled from the model's own logits
    (``gauss_newton_bartlett_estimator``): every update needs ``logits_fn=``, the logits as a
    function of the params alone, e.g.
    ``tx.update(grads, state, params, logits_fn=lambda p: model(p, inputs))``. ``h`` is
    refreshed on steps ``update_interval``, ``2·update_interval``, … (counted from 0), at the
    current params and before the update, so the first ``update_interval`` steps move by
    ``η·sign(m)``. ``bs`` is the number of tokens per optimizer step (sophia-opt's
    ``step(bs=...)``, ``total_bs·block_size`` in the authors' GPT-2 script); ``ρ·bs`` is the
    paper's ``γ`` for ``ĥ = bs·ĝ⊙ĝ``.

    Defaults as ``sophia_opt.SophiaG`` 0.2.2: ``learning_rate=1e-4, b1=0.965, b2=0.99,
    rho=0.04, weight_decay=0.1, bs=5120`` and the authors' ``update_interval=10``. The authors
    use lr 6e-4, ρ 0.05, wd 0.2 for GPT-2 small; their lr is the paper's ``ρ·η``. State
    ``(SophiaState, weight decay state, learning-rate state)``.

    Same numbers as ``SophiaG`` stepped by the authors' loop (``update_hessian()`` after every
    step ``i`` with ``i % k == k-1``, on the next batch at the new params), given the same
    estimates. Differences: ``weight_decay_mask``, schedules and ``mu_dtype`` are additions;
    the estimator runs inside the update (under ``lax.cond``, on the update's batch) instead of
    in the training loop. Cost: 2 param-sized buffers (as AdamW) and one forward and backward
    pass with sampled labels every ``update_interval`` steps.

    Reference: Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language
    Model Pre-training", 2023; ``Liuhong99/Sophia`` ``sophia.py`` and ``train_sophiag.py``.
    """
    checks.non_negative("rho", rho)
    checks.positive("bs", bs)
    checks.non_negative("weight_decay", weight_decay)
    return chain(
        _scale_by_sophia(_AUTHORS, b1, b2, 1e-15, rho * bs, 1.0, update_interval,
                         hessian_diagonal_fn, mu_dtype),
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
