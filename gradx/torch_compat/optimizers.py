"""PyTorch's optimizers (``torch.optim`` 2.13) as gradx transformations, number for number.

Each function takes torch's argument names and defaults and returns a transformation whose update
is the whole parameter change of one ``optimizer.step()``, learning rate, sign and decoupled weight
decay included: ``params = gradx.apply_updates(params, updates)`` then equals torch's parameters.

- ``lr`` (and the momentum / ``betas[0]`` of the momentum methods, which torch's ``OneCycleLR`` and
  ``CyclicLR`` rewrite) is a float or a schedule ``count -> value``; update number ``k`` (counting
  from 0) uses ``schedule(k)``, the value a torch scheduler sets after ``k`` calls to
  ``scheduler.step()`` made after each ``optimizer.step()``.
- ``weight_decay`` is coupled L2 (``g + wd·θ``, feeding the moments) wherever torch's is, and
  decoupled (``θ·(1 - lr·wd)``) for ``adamw``, ``decoupled_weight_decay=True`` and ``adafactor``.
- ``maximize=True`` negates the gradient before anything else, as torch.
- ``params`` must be passed to ``update`` whenever the rule reads them (weight decay, ``asgd``,
  ``adafactor``).
- The state's fields carry torch's per-parameter state names (``exp_avg``, ``momentum_buffer``, ...)
  and one ``step`` count for the whole tree; ``gradx.torch_compat.from_torch_state_dict`` and
  ``to_torch_state_dict`` convert it from and to ``optimizer.state_dict()``.
- Real parameters only: torch treats a complex parameter as two real ones (``view_as_real``), which
  these rules do not replicate.

Where these differ from gradx's (Optax-compatible) optimizers of the same name is listed in each
docstring and in the README section "Porting from PyTorch".
"""

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from gradx import checks
from gradx.base import GradientTransformation, ScalarOrSchedule
from gradx.leafwise import Moment, leafwise
from gradx.plumbing import filled_like, separate
from gradx.torch_compat._common import at, check, one_minus_pow, pow_

# ---------------------------------------------------------------------------------------------
# States: torch's per-parameter state names, one tree per buffer, one step count for the tree.
# Fields that torch only creates for some settings (e.g. ``max_exp_avg_sq``) are ``None`` otherwise.


class SGDState(NamedTuple):
    step: jax.Array
    momentum_buffer: Any = None


class AdamState(NamedTuple):
    step: jax.Array
    exp_avg: Any = None
    exp_avg_sq: Any = None
    max_exp_avg_sq: Any = None


class AdamaxState(NamedTuple):
    step: jax.Array
    exp_avg: Any = None
    exp_inf: Any = None


class NAdamState(NamedTuple):
    step: jax.Array
    exp_avg: Any = None
    exp_avg_sq: Any = None
    mu_product: Any = None


class RAdamState(NamedTuple):
    step: jax.Array
    exp_avg: Any = None
    exp_avg_sq: Any = None


class RMSpropState(NamedTuple):
    step: jax.Array
    square_avg: Any = None
    momentum_buffer: Any = None
    grad_avg: Any = None


class AdagradState(NamedTuple):
    step: jax.Array
    sum: Any = None


class AdadeltaState(NamedTuple):
    step: jax.Array
    square_avg: Any = None
    acc_delta: Any = None


class RpropState(NamedTuple):
    step: jax.Array
    prev: Any = None
    step_size: Any = None


class ASGDState(NamedTuple):
    step: jax.Array
    ax: Any = None
    eta: Any = None
    mu: Any = None


class AdafactorState(NamedTuple):
    """``row_var``/``col_var`` for leaves with 2 or more dims (torch's keepdim shapes
    ``(..., m, 1)`` and ``(..., 1, n)``), ``variance`` for the others; an absent buffer is an
    empty array of shape ``(0,)``."""

    step: jax.Array
    row_var: Any = None
    col_var: Any = None
    variance: Any = None


TORCH_STATES = (SGDState, AdamState, AdamaxState, NAdamState, RAdamState, RMSpropState,
                AdagradState, AdadeltaState, RpropState, ASGDState, AdafactorState)
# State fields that are one scalar for the whole tree (torch keeps one copy per parameter).
SCALAR_FIELDS = ("step", "mu_product", "eta", "mu")

# ---------------------------------------------------------------------------------------------
# Shared plumbing.


def _grad(g, p, maximize: bool, weight_decay):
    """torch's first lines: negate for ``maximize``, then add the coupled L2 term ``wd·θ``."""
    if maximize:
        g = -g
    if weight_decay:
        g = g + weight_decay * p
    return g


def _lerp(a, b, w):
    """``a + w·(b - a)`` (torch's ``lerp_``)."""
    return a + w * (b - a)


def _transformation(rule: Callable, state_cls: type, moments: Sequence[Moment],
                    step_scalars: Optional[Callable], needs_params: bool,
                    carry: Optional[dict] = None, elementwise: bool = True
                    ) -> GradientTransformation:
    """``leafwise`` with torch's conventions: the rule is written ``rule(g, p, *moments,
    **scalars)`` with ``p`` ``None`` unless ``needs_params``, the step count is the state's
    ``step``, and the ``carry`` fields (one float32 scalar each for the whole tree, e.g. NAdam's
    ``mu_product``) are carried from step to step by ``step_scalars`` (see ``leafwise``)."""

    def per_leaf(g, *rest, **scalars):
        p, buffers = (rest[0], rest[1:]) if needs_params else (None, rest)
        return rule(g, p, *buffers, **scalars)

    carry = {name: jnp.asarray(value, jnp.float32) for name, value in (carry or {}).items()}
    return leafwise(per_leaf, state_cls, moments, step_scalars, needs_params, elementwise,
                    count_field="step", carry=carry)


def _float(count):
    return jnp.asarray(count, jnp.float32)


def _check_lr(lr):
    check("Invalid learning rate", checks.non_negative, "lr", lr)


def _check_common(lr, eps=None, weight_decay=None, betas=None):
    _check_lr(lr)
    if eps is not None:
        check("Invalid epsilon value", checks.non_negative, "eps", eps)
    if betas is not None:
        for i, beta in enumerate(betas):
            check(f"Invalid beta parameter at index {i}", checks.in_range, f"betas[{i}]", beta,
                  0.0, 1.0)
    if weight_decay is not None:
        check("Invalid weight_decay value", checks.non_negative, "weight_decay", weight_decay)


# ---------------------------------------------------------------------------------------------
# Optimizers.


def sgd(lr: ScalarOrSchedule = 1e-3, momentum: ScalarOrSchedule = 0.0, dampening: float = 0.0,
        weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False
        ) -> GradientTransformation:
    """``torch.optim.SGD``: momentum with dampening, Nesterov and coupled weight decay.

    ``d = g + wd·θ``; ``b = d`` at the first step, then ``b = μ·b + (1 - τ)·d``; the step is
    ``-lr·(d + μ·b)`` (nesterov) or ``-lr·b``.

    Defaults as torch 2.13 (lr=1e-3). Differs from ``gradx.sgd`` (optax's): the first momentum
    buffer is the undamped gradient, ``dampening`` exists, weight decay is built in.
    Reference: Sutskever et al., 2013; torch.optim.SGD.
    """
    _check_common(lr, weight_decay=weight_decay)
    check("Invalid momentum value", checks.non_negative, "momentum", momentum)
    if nesterov and ((not callable(momentum) and momentum <= 0) or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening, got "
                         f"momentum={momentum!r}, dampening={dampening!r}.")
    has_buffer = callable(momentum) or momentum != 0

    def step_scalars(count):
        return dict(lr=at(lr, count), mu=at(momentum, count), first=count == 1)

    def rule(g, p, *buffer, lr, mu, first):
        d = _grad(g, p, maximize, weight_decay)
        if not has_buffer:
            return (-lr * d,)
        b = jnp.where(first, d, mu * buffer[0] + (1 - dampening) * d)
        return -lr * (d + mu * b if nesterov else b), b

    moments = [Moment("momentum_buffer")] if has_buffer else []
    return _transformation(rule, SGDState, moments, step_scalars, bool(weight_decay))


def _adam(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay):
    _check_common(lr, eps, weight_decay, betas)
    b1, b2 = betas
    decay = 0.0 if decoupled_weight_decay else weight_decay

    def step_scalars(count):
        t, b1_t = _float(count), at(b1, count)
        return dict(lr=at(lr, count), b1=b1_t, bc1=one_minus_pow(b1_t, t),
                    sqrt_bc2=jnp.sqrt(one_minus_pow(b2, t)))

    def rule(g, p, m, v, *v_max, lr, b1, bc1, sqrt_bc2):
        d = _grad(g, p, maximize, decay)
        m = _lerp(m, d, 1 - b1)
        v = b2 * v + (1 - b2) * d * d
        v_max = (jnp.maximum(v_max[0], v),) if amsgrad else ()
        denom = jnp.sqrt(v_max[0] if amsgrad else v) / sqrt_bc2 + eps
        u = -(lr / bc1) * m / denom
        if decoupled_weight_decay and weight_decay:
            u = u - lr * weight_decay * p
        return (u, m, v, *v_max)

    moments = [Moment("exp_avg"), Moment("exp_avg_sq")] + ([Moment("max_exp_avg_sq")] if amsgrad else [])
    return _transformation(rule, AdamState, moments, step_scalars, bool(weight_decay))


def adam(lr: ScalarOrSchedule = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
         decoupled_weight_decay: bool = False) -> GradientTransformation:
    """``torch.optim.Adam``: Adam with torch's AMSGrad and coupled (or decoupled) weight decay.

    ``m = lerp(m, d, 1-β1)``, ``v = β2·v + (1-β2)·d²``, step ``-lr/bc1 · m / (√v/√bc2 + ε)``.
    AMSGrad keeps ``v_max = max(v_max, v)`` over the **raw** ``v`` and divides by the current
    ``√bc2`` (optax maxes the bias-corrected ``v̂``). ``weight_decay`` adds ``wd·θ`` to the
    gradient (optax's adam has none), or with ``decoupled_weight_decay`` multiplies θ by
    ``1 - lr·wd`` (= ``adamw``). ``betas[0]`` may be a schedule (OneCycleLR's beta1 cycle).
    Reference: Kingma & Ba, 2015; Reddi et al., 2018 (AMSGrad).
    """
    return _adam(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay)


def adamw(lr: ScalarOrSchedule = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False
          ) -> GradientTransformation:
    """``torch.optim.AdamW``: Adam with decoupled weight decay ``θ·(1 - lr·wd)``.

    Default ``weight_decay=1e-2`` (optax's adamw: 1e-4); the decay is multiplied by the scheduled
    lr, as in both libraries. Reference: Loshchilov & Hutter, 2019.

    Examples:
      >>> from gradx import torch_compat as tc
      >>> tx = tc.adamw(lr=0.1, weight_decay=0.5)
      >>> params = jnp.array([1.0, -1.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([0.5, 0.5]), state, params)
      >>> params = gradx.apply_updates(params, updates)  # torch: θ·(1 - lr·wd) - lr·m̂/(√v̂ + ε)
      >>> print(np.asarray(params, float).round(4))
      [ 0.85 -1.05]
    """
    return _adam(lr, betas, eps, weight_decay, amsgrad, maximize, True)


def adamax(lr: ScalarOrSchedule = 2e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
           weight_decay: float = 0.0, *, maximize: bool = False) -> GradientTransformation:
    """``torch.optim.Adamax``: Adam with the infinity norm.

    ``m = lerp(m, d, 1-β1)``, ``u = max(β2·u, |d| + ε)``, step ``-lr/bc1 · m/u``; weight decay
    is coupled (optax's ``adamaxw`` is decoupled). Reference: Kingma & Ba, 2015, §7.
    """
    _check_common(lr, eps, weight_decay, betas)
    b1, b2 = betas

    def step_scalars(count):
        b1_t = at(b1, count)
        return dict(clr=at(lr, count) / one_minus_pow(b1_t, _float(count)), b1=b1_t)

    def rule(g, p, m, u, *, clr, b1):
        d = _grad(g, p, maximize, weight_decay)
        m = _lerp(m, d, 1 - b1)
        u = jnp.maximum(b2 * u, jnp.abs(d) + eps)
        return -clr * m / u, m, u

    return _transformation(rule, AdamaxState, [Moment("exp_avg"), Moment("exp_inf")],
                           step_scalars, bool(weight_decay))


def nadam(lr: ScalarOrSchedule = 2e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.0, momentum_decay: float = 4e-3,
          decoupled_weight_decay: bool = False, *, maximize: bool = False
          ) -> GradientTransformation:
    """``torch.optim.NAdam``: Nesterov Adam with torch's momentum-decay schedule.

    ``μ_t = β1·(1 - ½·0.96^(t·ψ))``, ``Π_t = Π_{t-1}·μ_t`` (state ``mu_product``),
    ``d̂ = √(v/bc2) + ε``, step ``-lr·(1-μ_t)/(1-Π_t)·d/d̂ - lr·μ_{t+1}/(1-Π_t·μ_{t+1})·m/d̂``.
    optax's nadam is the constant-β1 form (torch's ψ → ∞). Reference: Dozat, 2016.
    """
    _check_common(lr, eps, weight_decay, betas)
    check("Invalid momentum_decay value", checks.non_negative, "momentum_decay", momentum_decay)
    b1, b2 = betas
    decay = 0.0 if decoupled_weight_decay else weight_decay
    log_096 = math.log(0.96)

    def step_scalars(count, mu_product):
        t, b1_t, lr_t = _float(count), at(b1, count), at(lr, count)
        mu = b1_t * (1 - 0.5 * jnp.exp(t * momentum_decay * log_096))
        mu_next = b1_t * (1 - 0.5 * jnp.exp((t + 1) * momentum_decay * log_096))
        product = mu_product * mu
        return dict(lr=lr_t, b1=b1_t, bc2=one_minus_pow(b2, t),
                    c_grad=lr_t * (1 - mu) / (1 - product),
                    c_avg=lr_t * mu_next / (1 - product * mu_next)), {"mu_product": product}

    def rule(g, p, m, v, *, lr, b1, bc2, c_grad, c_avg):
        d = _grad(g, p, maximize, decay)
        m = _lerp(m, d, 1 - b1)
        v = b2 * v + (1 - b2) * d * d
        denom = jnp.sqrt(v / bc2) + eps
        u = -c_grad * d / denom - c_avg * m / denom
        if decoupled_weight_decay and weight_decay:
            u = u - lr * weight_decay * p
        return u, m, v

    return _transformation(rule, NAdamState, [Moment("exp_avg"), Moment("exp_avg_sq")],
                           step_scalars, bool(weight_decay), {"mu_product": 1.0})


def _radam_rho(t, b2):
    """RAdam's ``ρ_t = ρ∞ - 2t·β2^t/(1-β2^t)`` accurate in float32.

    With ``x = -log β2`` and ``u = t·x``, ``ρ_t = (2/x)·(B(-x) - B(u)) - 1`` where
    ``B(u) = u/(eᵘ-1)``; for ``u ≤ 1`` the Bernoulli series
    ``ρ_t = t + x(1-t²)/6 - x³(1-t⁴)/360 + x⁵(1-t⁶)/15120 - x⁷(1-t⁸)/604800`` avoids the
    cancellation of the direct form (which loses 1e-4 relative at t ≈ 6 in float32).
    """
    x = -math.log(b2)
    rho_inf = 2 / (1 - b2) - 1
    direct = rho_inf - 2 * t * pow_(b2, t) / one_minus_pow(b2, t)
    ts = jnp.minimum(t, 1 / x)
    series = (ts + x * (1 - ts**2) / 6 - x**3 * (1 - ts**4) / 360 + x**5 * (1 - ts**6) / 15120
              - x**7 * (1 - ts**8) / 604800)
    return jnp.where(t * x <= 1, series, direct), rho_inf


def radam(lr: ScalarOrSchedule = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *,
          maximize: bool = False) -> GradientTransformation:
    """``torch.optim.RAdam``: rectified Adam.

    ``ρ∞ = 2/(1-β2) - 1``, ``ρ_t = ρ∞ - 2t·β2^t/bc2``; if ``ρ_t > 5`` the step is
    ``-lr·m̂·r_t·√bc2/(√v + ε)`` with ``r_t = √((ρ_t-4)(ρ_t-2)ρ∞ / ((ρ∞-4)(ρ∞-2)ρ_t))``, else
    ``-lr·m̂``. torch's ε acts as ``ε/√bc2`` on ``√v̂`` (optax adds ε to ``√v̂``) and its test is
    strict (``> 5``; optax ``>= 5``). Reference: Liu et al., 2020.
    """
    _check_common(lr, eps, weight_decay, betas)
    b1, b2 = betas
    decay = 0.0 if decoupled_weight_decay else weight_decay

    def step_scalars(count):
        t, b1_t = _float(count), at(b1, count)
        if b2 == 0:  # ρ∞ = 1: never rectified
            rho_t, rho_inf = jnp.ones_like(t), 1.0
        else:
            rho_t, rho_inf = _radam_rho(t, b2)
        rectify = rho_t > 5
        safe = jnp.where(rectify, rho_t, 6.0)
        rect = jnp.sqrt((safe - 4) * (safe - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * safe))
        return dict(lr=at(lr, count), b1=b1_t, bc1=one_minus_pow(b1_t, t), rectify=rectify,
                    rect=rect, sqrt_bc2=jnp.sqrt(one_minus_pow(b2, t)))

    def rule(g, p, m, v, *, lr, b1, bc1, rectify, rect, sqrt_bc2):
        d = _grad(g, p, maximize, decay)
        m = _lerp(m, d, 1 - b1)
        v = b2 * v + (1 - b2) * d * d
        m_hat = m / bc1
        adaptive = sqrt_bc2 / (jnp.sqrt(v) + eps)
        u = -jnp.where(rectify, m_hat * lr * adaptive * rect, m_hat * lr)
        if decoupled_weight_decay and weight_decay:
            u = u - lr * weight_decay * p
        return u, m, v

    return _transformation(rule, RAdamState, [Moment("exp_avg"), Moment("exp_avg_sq")],
                           step_scalars, bool(weight_decay))


def rmsprop(lr: ScalarOrSchedule = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
            weight_decay: float = 0.0, momentum: ScalarOrSchedule = 0.0, centered: bool = False,
            *, maximize: bool = False) -> GradientTransformation:
    """``torch.optim.RMSprop``.

    ``v = α·v + (1-α)·d²``; centered: ``ḡ = lerp(ḡ, d, 1-α)``, ``s = √(v - ḡ²) + ε``, else
    ``s = √v + ε``; with momentum ``b = μ·b + d/s`` and step ``-lr·b``, else ``-lr·d/s``.
    Differs from optax's rmsprop: ε outside the square root, α = 0.99, the momentum buffer holds
    ``d/s`` and is multiplied by the *current* lr (matters under a schedule).
    Reference: Hinton, Coursera lecture 6e; Graves, 2013 (centered).
    """
    _check_common(lr, eps, weight_decay)
    check("Invalid momentum value", checks.non_negative, "momentum", momentum)
    check("Invalid alpha value", checks.non_negative, "alpha", alpha)
    has_buffer = callable(momentum) or momentum > 0

    def step_scalars(count):
        return dict(lr=at(lr, count), mu=at(momentum, count))

    def rule(g, p, v, *rest, lr, mu):
        d = _grad(g, p, maximize, weight_decay)
        v = alpha * v + (1 - alpha) * d * d
        new = [v]
        if centered:
            g_avg = _lerp(rest[-1], d, 1 - alpha)
            s = jnp.sqrt(v - g_avg * g_avg) + eps
        else:
            s = jnp.sqrt(v) + eps
        if has_buffer:
            b = mu * rest[0] + d / s
            u = -lr * b
            new.append(b)
        else:
            u = -lr * d / s
        if centered:
            new.append(g_avg)
        return (u, *new)

    moments = ([Moment("square_avg")] + ([Moment("momentum_buffer")] if has_buffer else [])
               + ([Moment("grad_avg")] if centered else []))
    return _transformation(rule, RMSpropState, moments, step_scalars, bool(weight_decay))


def adagrad(lr: ScalarOrSchedule = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
            initial_accumulator_value: float = 0.0, eps: float = 1e-10, *,
            maximize: bool = False) -> GradientTransformation:
    """``torch.optim.Adagrad``.

    ``s = s + d²``, step ``-lr/(1 + (t-1)·lr_decay) · d/(√s + ε)``. Differs from optax's adagrad:
    accumulator starts at 0 (optax 0.1), ε = 1e-10 outside the root (optax 1e-7 inside),
    ``lr_decay`` and weight decay exist. Reference: Duchi et al., 2011.
    """
    _check_common(lr, eps, weight_decay)
    check("Invalid lr_decay value", checks.non_negative, "lr_decay", lr_decay)
    check("Invalid initial_accumulator_value value", checks.non_negative,
          "initial_accumulator_value", initial_accumulator_value)

    def step_scalars(count):
        return dict(clr=at(lr, count) / (1 + (_float(count) - 1) * lr_decay))

    def rule(g, p, s, *, clr):
        d = _grad(g, p, maximize, weight_decay)
        s = s + d * d
        return -clr * d / (jnp.sqrt(s) + eps), s

    return _transformation(rule, AdagradState, [Moment("sum", initial_accumulator_value)],
                           step_scalars, bool(weight_decay))


def adadelta(lr: ScalarOrSchedule = 1.0, rho: float = 0.9, eps: float = 1e-6,
             weight_decay: float = 0.0, *, maximize: bool = False) -> GradientTransformation:
    """``torch.optim.Adadelta``.

    ``v = ρ·v + (1-ρ)·d²``, ``Δ = √(a + ε)/√(v + ε)·d``, ``a = ρ·a + (1-ρ)·Δ²``, step ``-lr·Δ``.
    lr defaults to 1.0 (optax's ``learning_rate=None`` never flips the sign: it ascends).
    Reference: Zeiler, 2012.
    """
    _check_common(lr, eps, weight_decay)
    check("Invalid rho value", checks.in_range, "rho", rho, 0.0, 1.0, high_open=False)

    def step_scalars(count):
        return dict(lr=at(lr, count))

    def rule(g, p, v, a, *, lr):
        d = _grad(g, p, maximize, weight_decay)
        v = rho * v + (1 - rho) * d * d
        delta = jnp.sqrt(a + eps) / jnp.sqrt(v + eps) * d
        a = rho * a + (1 - rho) * delta * delta
        return -lr * delta, v, a

    return _transformation(rule, AdadeltaState, [Moment("square_avg"), Moment("acc_delta")],
                           step_scalars, bool(weight_decay))


def rprop(lr: ScalarOrSchedule = 1e-2, etas: tuple = (0.5, 1.2), step_sizes: tuple = (1e-6, 50),
          *, maximize: bool = False) -> GradientTransformation:
    """``torch.optim.Rprop``: resilient backpropagation.

    ``s = sign(g·prev)``; ``step_size = clip(step_size·η±, min, max)`` (×1 where ``s = 0``, but
    clipped even then); ``g = 0`` where ``s < 0``; step ``-sign(g)·step_size``; ``prev = g``.
    ``lr`` is only the initial step size (a schedule is read once, at ``init``), as in torch.
    Differs from optax 0.2.8's rprop, which emits the previous step's update.
    Reference: Riedmiller & Braun, 1993.
    """
    _check_lr(lr)
    eta_minus, eta_plus = etas
    if not 0.0 < eta_minus < 1.0 < eta_plus:
        raise ValueError(f"Invalid eta values: etas must satisfy 0 < etas[0] < 1 < etas[1], got "
                         f"etas={tuple(etas)!r}.")
    min_step, max_step = step_sizes

    def rule(g, p, prev, size):
        g = -g if maximize else g
        sign = jnp.sign(g * prev)
        size = jnp.clip(size * jnp.where(sign > 0, eta_plus, jnp.where(sign < 0, eta_minus, 1.0)),
                        min_step, max_step)
        g = jnp.where(sign < 0, 0, g)
        return -jnp.sign(g) * size, g, size

    initial = lr(0) if callable(lr) else lr
    return _transformation(rule, RpropState, [Moment("prev"), Moment("step_size", initial)],
                           None, False)


def asgd(lr: ScalarOrSchedule = 1e-2, lambd: float = 1e-4, alpha: float = 0.75, t0: float = 1e6,
         weight_decay: float = 0.0, *, maximize: bool = False) -> GradientTransformation:
    """``torch.optim.ASGD``: averaged SGD; read the average with ``asgd_averaged_params(state)``.

    Step ``θ ← θ·(1 - λ·η) - η·d`` then ``ax ← ax + μ·(θ - ax)`` (``ax = θ`` while μ = 1); after
    step t, ``η = lr/(1 + λ·lr·t)^α`` and ``μ = 1/max(1, t - t0)`` (state ``eta``, ``mu``,
    starting at lr and 1). The average is never swapped into the params. No optax equivalent.
    Reference: Polyak & Juditsky, 1992; Bottou, 2012.
    """
    _check_common(lr, weight_decay=weight_decay)

    def step_scalars(count, eta, mu):
        t, lr_t = _float(count), at(lr, count)
        new_eta = lr_t / (1 + lambd * lr_t * t) ** alpha
        return dict(eta=eta, mu=mu), {"eta": new_eta, "mu": 1 / jnp.maximum(1.0, t - t0)}

    def rule(g, p, ax, *, eta, mu):
        d = _grad(g, p, maximize, weight_decay)
        u = -(lambd * eta) * p - eta * d
        new_p = p + u
        return u, jnp.where(mu == 1, new_p, ax + (new_p - ax) * mu)

    initial = lr(0) if callable(lr) else lr
    return _transformation(rule, ASGDState, [Moment("ax")], step_scalars, True,
                           {"eta": initial, "mu": 1.0})


def asgd_averaged_params(state: Any) -> Any:
    """The averaged parameters ``ax`` of the (single) ``asgd`` state inside ``state``, which may
    be an ``ASGDState`` or any chain/masked/param-groups state containing one."""
    found = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ASGDState))
             if isinstance(s, ASGDState)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one asgd state (ASGDState) in the state, found "
                         f"{len(found)}.")
    return found[0].ax


def _adafactor_by_moment(g, floor, variance):
    """Adafactor's update of a vector leaf: ``g / √max(V, floor)``."""
    return g * jax.lax.rsqrt(jnp.maximum(variance, floor))


def _adafactor_by_factors(g, floor, row, col, row_mean):
    """Adafactor's update of a factored leaf: ``V = R·C / m`` (torch's ``row @ col``, shapes
    ``(..., m, 1)`` and ``(..., 1, n)``, is their broadcast product), then as a vector leaf."""
    return _adafactor_by_moment(g, floor, row * col / row_mean)


def adafactor(lr: ScalarOrSchedule = 1e-2, beta2_decay: float = -0.8, eps: tuple = (None, 1e-3),
              d: float = 1.0, weight_decay: float = 0.0, *, maximize: bool = False
              ) -> GradientTransformation:
    """``torch.optim.Adafactor``: factored second moments, relative step, update clipping.

    ``β̃_t = t^beta2_decay``; ``ρ_t = min(lr, 1/√t)``; ``α = max(eps2, RMS(θ))·ρ_t``; for leaves
    with 2+ dims ``R = lerp(R, mean_{-1}(g²), β̃)``, ``C = lerp(C, mean_{-2}(g²), β̃)``,
    ``V = R·C/max(mean_{-2}(R), eps1)``, else ``V = lerp(V, g², β̃)``;
    ``u = g/√max(V, eps1²)``; step ``-α/max(1, RMS(u)/d)·u - lr·wd·θ``. eps1=None is the dtype's
    machine epsilon. Differs from optax's adafactor: always factors the last two dims, relative
    step ``min(lr, 1/√t)``, weight decay ``lr·wd·θ``. Reference: Shazeer & Stern, 2018.
    """
    check("Learning rate should be >= 0", checks.non_negative, "lr", lr)
    if beta2_decay > 0:
        raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay} (beta2_decay must be "
                         f"<= 0, got beta2_decay={beta2_decay!r}).")
    eps1, eps2 = eps
    if eps1 is not None:
        check("epsilon1 should be >= 0", checks.non_negative, "eps[0]", eps1)
    check("epsilon2 should be >= 0", checks.non_negative, "eps[1]", eps2)
    check("Clipping threshold d should be >= 1", checks.in_range, "d", d, 1.0, math.inf)
    check("weight_decay should be >= 0", checks.non_negative, "weight_decay", weight_decay)
    def step_scalars(count):
        t, lr_t = _float(count), at(lr, count)
        return dict(lr=lr_t, rho=jnp.minimum(lr_t, jax.lax.rsqrt(t)), beta_t=pow_(t, beta2_decay))

    def rule(g, p, row, col, var, *, lr, rho, beta_t):
        g = -g if maximize else g
        alpha = jnp.maximum(eps2, jnp.sqrt(jnp.mean(p * p))) * rho
        e1 = jnp.finfo(p.dtype).eps if eps1 is None else eps1
        if p.ndim > 1:
            # The column statistics and the update's RMS reduce over values recomputed from
            # separate nodes, so XLA writes neither g² nor the update to memory.
            g_again, = separate(g)
            row = _lerp(row, jnp.mean(g * g, axis=-1, keepdims=True), beta_t)
            col = _lerp(col, jnp.mean(g_again * g_again, axis=-2, keepdims=True), beta_t)
            by, stats = _adafactor_by_factors, (
                row, col, jnp.maximum(jnp.mean(row, axis=-2, keepdims=True), e1))
        else:
            var = _lerp(var, g * g, beta_t)
            by, stats = _adafactor_by_moment, (var,)
        floor = jnp.asarray(e1 * e1)
        direction = by(g, floor, *stats)
        again = by(*separate(g, floor, *stats))
        denom = jnp.maximum(1.0, jnp.sqrt(jnp.mean(again * again)) / d)
        u = -(alpha / denom) * direction
        if weight_decay:
            u = u - lr * weight_decay * p
        return u, row, col, var

    def empty(p):
        return jnp.zeros((0,), jnp.result_type(p))

    def factor(axis):
        def init(p):
            if jnp.ndim(p) < 2:
                return empty(p)
            return jnp.expand_dims(filled_like(p, 0, drop_axes=(p.ndim + axis,)), axis)

        return init

    moments = [Moment("row_var", factor(-1)), Moment("col_var", factor(-2)),
               Moment("variance", lambda p: empty(p) if jnp.ndim(p) > 1 else filled_like(p, 0))]
    return _transformation(rule, AdafactorState, moments, step_scalars, True, elementwise=False)


__all__ = [
    "SGDState", "AdamState", "AdamaxState", "NAdamState", "RAdamState", "RMSpropState",
    "AdagradState", "AdadeltaState", "RpropState", "ASGDState", "AdafactorState",
    "sgd", "adam", "adamw", "adamax", "nadam", "radam", "rmsprop", "adagrad", "adadelta", "rprop",
    "asgd", "asgd_averaged_params", "adafactor",
]
