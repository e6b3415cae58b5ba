"""ADOPT: Adam with the second moment taken one step late, so the current gradient is normalised
by statistics that do not contain it."""

from typing import Any, Callable, Optional

import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.adam_family import ScaleByAdamState, _ema, _ema_norm
from gradx.base import GradientTransformation, MaskOrFn, ScalarOrSchedule
from gradx.combine import chain
from gradx.leafwise import Moment, leafwise
from gradx.scaling import scale_by_learning_rate
from gradx.weight_decay import add_decayed_weights


def _quarter_power(step):
    return step ** 0.25


def scale_by_adopt(b1=0.9, b2=0.9999, eps=1e-6, mu_dtype: Optional[Any] = None, *,
                   nesterov: bool = False, use_clipping: bool = True,
                   clip_value_fn: Callable = _quarter_power) -> GradientTransformation:
    """Rescales updates by ADOPT: normalise by the previous second moment, then take momentum.

    With ``k`` the number of earlier steps (0 on the first update):

    - ``k = 0``: ``v ← |g|²`` and ``u = 0`` (the step only initialises ``v``);
    - ``k ≥ 1``: ``n = clip(g / max(√v, eps), ±clip_value_fn(k))`` (no clip without
      ``use_clipping``), ``m ← b1·m + (1-b1)·n``, ``v ← b2·v + (1-b2)·|g|²``, ``u = m``
      (``nesterov``: ``u = b1·m + (1-b1)·n``).

    Defaults ``b1=0.9, b2=0.9999, eps=1e-6, clip_value_fn=k ↦ k^0.25`` (as Optax and the
    authors' ``torch-adopt``). ``mu_dtype`` stores ``m`` in that dtype.
    State: ``ScaleByAdamState(count, mu, nu)``.

    Reference: Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β2 with the Optimal
    Rate", NeurIPS 2024. Same numbers as ``optax.contrib.scale_by_adopt`` and ``adopt.ADOPT``.
    """
    for name, value in (("b1", b1), ("b2", b2)):
        checks.in_range(name, value, 0.0, 1.0)
    checks.non_negative("eps", eps)
    mu_dtype = plumbing.canonicalize_dtype(mu_dtype)

    def step_scalars(count):
        earlier = count - 1
        return {"b1_": jnp.where(earlier > 0, b1, 1), "b2_": jnp.where(earlier > 0, b2, 0),
                "clip": clip_value_fn(earlier) if use_clipping else None}

    def rule(g, mu, nu, *, b1_, b2_, clip):
        normed = g / jnp.maximum(jnp.sqrt(nu), eps)
        if clip is not None:
            normed = jnp.clip(normed, -clip, clip)
        mu = _ema(normed, mu, b1_)
        u = _ema(normed, mu, b1_) if nesterov else mu
        return u, mu, _ema_norm(g, nu, b2_)

    return leafwise(rule, ScaleByAdamState, (Moment("mu", dtype=mu_dtype), Moment("nu")),
                    step_scalars)


def adopt(learning_rate: ScalarOrSchedule, b1=0.9, b2=0.9999, eps=1e-6,
          mu_dtype: Optional[Any] = None, *, nesterov: bool = False, use_clipping: bool = True,
          clip_value_fn: Callable = _quarter_power, weight_decay: ScalarOrSchedule = 0.0,
          decouple: bool = False, mask: MaskOrFn = None) -> GradientTransformation:
    """ADOPT (Taniguchi et al., 2024): ``scale_by_adopt``, then ``-η``.

    Optax's arguments and defaults, plus the authors' weight decay (``torch-adopt``'s
    ``weight_decay=0.0, decouple=False``; ``mask`` selects the decayed leaves):

    - ``decouple=False``: L2, ``g ← g + λ·p`` before ADOPT (so ``v`` is initialised from it);
    - ``decouple=True``: ``u = -η·(m + λ·p)``, **from the second step on**: the first step only
      initialises ``v`` and leaves the params unchanged, as in ``torch-adopt``. Chaining Optax's
      ``add_decayed_weights`` after ``scale_by_adopt`` instead decays the params on the first
      step as well (``θ ← θ - η·λ·θ``), which the reference never does.

    With the default ``weight_decay=0.0`` the chain and its state are Optax's
    (``scale_by_adopt``, ``scale_by_learning_rate``) and the numbers equal
    ``optax.contrib.adopt``'s and ``adopt.ADOPT``'s.

    Examples:
      >>> tx = gradx.contrib.adopt(learning_rate=0.1, weight_decay=0.5, decouple=True)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([0.5, -0.5]), state, params)
      >>> print(np.asarray(updates, float) + 0.0)  # first step: v only, no decay
      [0. 0.]
      >>> updates, state = tx.update(jnp.array([0.5, -0.5]), state, params)
      >>> print(np.asarray(updates, float).round(4))  # -η·((1-b1)·clip(g/|g|, ±1) + λ·p)
      [-0.06  0.11]
    """
    checks.one_of("decouple", decouple, (False, True))
    scaled = scale_by_adopt(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype, nesterov=nesterov,
                            use_clipping=use_clipping, clip_value_fn=clip_value_fn)
    lr = scale_by_learning_rate(learning_rate)
    # A Python zero leaves the decay out (Optax's chain and state); any other value, including
    # an array injected by inject_hyperparams (traced in its update), keeps it.
    if isinstance(weight_decay, (int, float)) and weight_decay == 0.0:
        return chain(scaled, lr)
    if not decouple:
        return chain(add_decayed_weights(weight_decay, mask), scaled, lr)

    def after_first_step(count):
        value = weight_decay(count) if callable(weight_decay) else weight_decay
        return jnp.where(count > 0, value, 0.0)

    return chain(scaled, add_decayed_weights(after_first_step, mask), lr)
