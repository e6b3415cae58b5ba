"""Named optimizers: each a short chain of building blocks, with Optax 0.2.8's names, arguments,
defaults, state layout and numbers.

Notation in the docstrings: ``g`` gradient, ``p`` parameter, ``t`` step (1 on the first update),
``η`` learning rate (a number or a schedule of the step count), ``λ`` weight decay. Every
optimizer returns updates to add to the params (``gradx.apply_updates``), so the learning rate
enters with a minus sign. Where gradx differs from Optax (a fixed defect), the docstring says so.
"""

import warnings
from typing import Any, Optional

import jax.numpy as jnp

from gradx import checks
from gradx.adam_family import (scale_by_adam, scale_by_adamax, scale_by_adan, scale_by_amsgrad,
                               scale_by_belief, scale_by_novograd, scale_by_radam, scale_by_yogi)
from gradx.base import GradientTransformationExtraArgs, MaskOrFn, ScalarOrSchedule, identity
from gradx.combine import chain
from gradx.factored import scale_by_factored_rms, scale_by_sm3
from gradx.lbfgs import scale_by_lbfgs
from gradx.linesearch import scale_by_zoom_linesearch
from gradx.masking import masked
from gradx.momentum import ema, scale_by_optimistic_gradient, trace
from gradx.noise import add_noise
from gradx.rms_family import scale_by_adadelta, scale_by_rms, scale_by_rss, scale_by_stddev
from gradx.scaling import (scale, scale_by_learning_rate, scale_by_param_block_rms,
                           scale_by_trust_ratio)
from gradx.sign_based import scale_by_lion, scale_by_rprop, scale_by_sign
from gradx.step_size import scale_by_polyak
from gradx.weight_decay import add_decayed_weights

__all__ = [
    "adabelief", "adadelta", "adafactor", "adagrad", "adam", "adamax", "adamaxw", "adamw", "adan",
    "amsgrad", "fromage", "lamb", "lars", "lbfgs", "lion", "nadam", "nadamw", "noisy_sgd",
    "novograd", "optimistic_adam_v2", "optimistic_gradient_descent", "polyak_sgd", "radam",
    "rmsprop", "rprop", "sgd", "sign_sgd", "signum", "sm3", "yogi",
]

Tx = GradientTransformationExtraArgs


def sgd(learning_rate: ScalarOrSchedule, momentum: Optional[float] = None, nesterov: bool = False,
        accumulator_dtype: Optional[Any] = None) -> Tx:
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    ``b ← g + μ·b`` (``b₀ = 0``), ``u = -η·b`` (Nesterov: ``u = -η·(g + μ·b)``).
    Defaults: no momentum. Equal to ``torch.optim.SGD`` with ``dampening=0`` (Sutskever et al.,
    2013). For coupled L2 weight decay chain ``add_decayed_weights`` before it.

    Examples:
      >>> tx = gradx.sgd(learning_rate=0.1, momentum=0.9)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     updates, state = tx.update(jnp.ones(2), state)
      ...     params = gradx.apply_updates(params, updates)
      ...     print(np.asarray(updates, float).round(4))
      [-0.1 -0.1]
      [-0.19 -0.19]
      [-0.271 -0.271]
    """
    if momentum is not None:
        checks.in_range("momentum", momentum, 0.0, 1.0, high_open=False)
    return chain(
        trace(decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype)
        if momentum is not None else identity(),
        scale_by_learning_rate(learning_rate),
    )


def adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         eps_root: float = 0.0, mu_dtype: Optional[Any] = None, *, nesterov: bool = False) -> Tx:
    """Adam (Kingma & Ba, 2014): ``u = -η·m̂/(√(v̂ + eps_root) + eps)``.

    ``m``, ``v``: EMAs of ``g`` and ``|g|²`` with decays ``b1``, ``b2``, bias-corrected.
    ``nesterov=True`` is NAdam (Dozat, 2016). Equal to ``torch.optim.Adam`` without weight decay.
    """
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )


def nadam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, mu_dtype: Optional[Any] = None, *, nesterov: bool = True) -> Tx:
    """NAdam (Dozat, 2016): ``adam`` with ``nesterov=True``, Optax's constant-β1 form.

    ``m̂ = b1·m_t/(1 - b1^{t+1}) + (1 - b1)·g/(1 - b1^t)``. Differs from ``torch.optim.NAdam``,
    whose momentum-decay schedule is in ``gradx.torch_compat.nadam``.
    """
    return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)


def adamw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, mu_dtype: Optional[Any] = None, weight_decay: ScalarOrSchedule = 1e-4,
          mask: MaskOrFn = None, *, nesterov: bool = False) -> Tx:
    """AdamW (Loshchilov & Hutter, 2019): ``u = -η·(m̂/(√(v̂ + eps_root) + eps) + λ·p)``.

    Decoupled weight decay multiplied by the learning rate (PyTorch's form). Default
    ``weight_decay=1e-4`` as Optax (PyTorch's default is 1e-2). ``mask`` selects the decayed leaves.

    Examples:
      >>> params = {"w": jnp.array([1.0, -1.0])}
      >>> tx = gradx.adamw(learning_rate=0.1, weight_decay=0.5)
      >>> state = tx.init(params)
      >>> grads = {"w": jnp.array([0.5, 0.5])}
      >>> updates, state = tx.update(grads, state, params)  # weight decay reads the params
      >>> print(np.asarray(updates["w"], float).round(4))  # first step: -η·(sign(g) + λ·p)
      [-0.15 -0.05]
    """
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def nadamw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
           eps_root: float = 0.0, mu_dtype: Optional[Any] = None, weight_decay: ScalarOrSchedule = 1e-4,
           mask: MaskOrFn = None, *, nesterov: bool = True) -> Tx:
    """NAdamW: ``adamw`` with the Nesterov (Dozat) first moment."""
    return adamw(learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov=nesterov)


def adamax(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Tx:
    """AdaMax (Kingma & Ba, 2014, §7): ``v ← max(|g| + eps, b2·v)``, ``u = -η·m̂/v``.

    Equal to ``torch.optim.Adamax``.
    """
    return chain(scale_by_adamax(b1=b1, b2=b2, eps=eps), scale_by_learning_rate(learning_rate))


def adamaxw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
            weight_decay: ScalarOrSchedule = 1e-4, mask: MaskOrFn = None) -> Tx:
    """AdaMax with decoupled weight decay: ``u = -η·(m̂/v + λ·p)``."""
    return chain(scale_by_adamax(b1=b1, b2=b2, eps=eps), add_decayed_weights(weight_decay, mask),
                 scale_by_learning_rate(learning_rate))


def amsgrad(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
            eps_root: float = 0.0, mu_dtype: Optional[Any] = None, bias_correction_mu: bool = True,
            bias_correction_nu: bool = True) -> Tx:
    """AMSGrad (Reddi et al., 2018): ``v̂max ← max(v̂max, v̂)``, ``u = -η·m̂/(√(v̂max + eps_root) + eps)``.

    As Optax, the max is taken over the bias-corrected ``v̂``; ``torch.optim.Adam(amsgrad=True)``
    takes it over the raw ``v`` (see ``gradx.torch_compat.adam``).
    """
    return chain(
        scale_by_amsgrad(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
                         bias_correction_mu=bias_correction_mu, bias_correction_nu=bias_correction_nu),
        scale_by_learning_rate(learning_rate),
    )


def adabelief(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16,
              eps_root: float = 1e-16, *, nesterov: bool = False) -> Tx:
    """AdaBelief (Zhuang et al., 2020): ``s ← b2·s + (1-b2)·|g - m|² + eps_root``,
    ``u = -η·m̂/(√ŝ + eps)``."""
    return chain(scale_by_belief(b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov),
                 scale_by_learning_rate(learning_rate))


def adagrad(learning_rate: ScalarOrSchedule, initial_accumulator_value: float = 0.1,
            eps: float = 1e-7) -> Tx:
    """AdaGrad (Duchi et al., 2011): ``G ← G + |g|²``, ``u = -η·g/√(G + eps)``.

    Defaults as Optax (TensorFlow-style ``G₀ = 0.1``, eps inside the root); PyTorch's Adagrad
    (``G₀ = 0``, eps outside, ``lr_decay``) is ``gradx.torch_compat.adagrad``.
    """
    return chain(scale_by_rss(initial_accumulator_value=initial_accumulator_value, eps=eps),
                 scale_by_learning_rate(learning_rate))


def adadelta(learning_rate: Optional[ScalarOrSchedule] = None, rho: float = 0.9, eps: float = 1e-6,
             weight_decay: ScalarOrSchedule = 0.0, weight_decay_mask: MaskOrFn = None) -> Tx:
    """AdaDelta (Zeiler, 2012): ``Δ = √(E[Δ²] + eps)/√(E[g²] + eps)·g``, ``u = -η·Δ``.

    Coupled L2 weight decay (added to ``g`` first), as Optax and PyTorch.

    Differs from Optax: with the default ``learning_rate=None`` Optax never flips the sign and so
    climbs the loss (gradient ascent); gradx descends with step ``Δ`` (η = 1, PyTorch's default).
    """
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        scale_by_adadelta(rho=rho, eps=eps),
        scale(-1.0) if learning_rate is None else scale_by_learning_rate(learning_rate),
    )


def adafactor(learning_rate: Optional[ScalarOrSchedule] = None, min_dim_size_to_factor: int = 128,
              decay_rate: float = 0.8, decay_offset: int = 0, multiply_by_parameter_scale: bool = True,
              clipping_threshold: Optional[float] = 1.0, momentum: Optional[float] = None,
              dtype_momentum: Any = jnp.float32, weight_decay_rate: Optional[ScalarOrSchedule] = None,
              eps: float = 1e-30, factored: bool = True, weight_decay_mask: MaskOrFn = None) -> Tx:
    """Adafactor (Shazeer & Stern, 2018): factored second moments, update clipping, relative step.

    Chain: ``scale_by_factored_rms`` → clip to RMS ``clipping_threshold`` → ``×η`` →
    ``×max(rms(p), 1e-3)`` → optional ``ema(momentum)`` → optional ``+weight_decay_rate·p`` →
    ``×(-1)``. As Optax, the weight decay is not multiplied by η (PyTorch's is; see
    ``gradx.torch_compat.adafactor``).

    Same numbers and state layout as Optax. Differs in how: the update clipping runs inside
    ``scale_by_factored_rms``'s pass (its ``clipping_threshold``), and the chain holds
    ``identity()`` where Optax holds ``clip_by_block_rms``, both with ``EmptyState``. Optax's
    chain writes each leaf's update, ``g²+ε`` and a masked copy of the params to memory (403 MB
    of temporaries on a 100M-parameter tree, and a slower step with donated buffers); this one
    writes none of them.
    """
    steps = [scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps,
                                   clipping_threshold=clipping_threshold)]
    if clipping_threshold is not None:
        steps.append(identity())  # Optax's clip_by_block_rms: its EmptyState keeps the layout.
    if learning_rate is not None:
        steps.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        steps.append(scale_by_param_block_rms())
    if momentum is not None:
        steps.append(ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        steps.append(add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    steps.append(scale(-1.0))
    return chain(*steps)


def adan(learning_rate: ScalarOrSchedule, b1: float = 0.98, b2: float = 0.92, b3: float = 0.99,
         eps: float = 1e-8, eps_root: float = 1e-8, weight_decay: ScalarOrSchedule = 0.0,
         mask: MaskOrFn = None) -> Tx:
    """Adan (Xie et al., 2022): EMAs of ``g``, ``g - g_prev`` and ``|g + (1-b2)(g - g_prev)|²``,
    ``u = -η·((m̂ + (1-b2)·v̂)/(√(n̂ + eps_root) + eps) + λ·p)``."""
    return chain(scale_by_adan(b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root),
                 add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))


def lion(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.99,
         mu_dtype: Optional[Any] = None, weight_decay: ScalarOrSchedule = 1e-3,
         mask: MaskOrFn = None) -> Tx:
    """Lion (Chen et al., 2023): ``u = -η·(sign(b1·m + (1-b1)·g) + λ·p)``, then
    ``m ← b2·m + (1-b2)·g``. Use a learning rate about 3-10x smaller than AdamW's."""
    return chain(scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype),
                 add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))


def lamb(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         eps_root: float = 0.0, weight_decay: ScalarOrSchedule = 0.0, mask: MaskOrFn = None) -> Tx:
    """LAMB (You et al., 2020): Adam direction plus decoupled decay, rescaled per leaf by the
    trust ratio ``‖p‖/‖r‖``: ``u = -η·‖p‖/‖r‖·r`` with ``r = m̂/(√v̂ + eps) + λ·p``."""
    return chain(scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
                 add_decayed_weights(weight_decay=weight_decay, mask=mask),
                 scale_by_trust_ratio(), scale_by_learning_rate(learning_rate))


def lars(learning_rate: ScalarOrSchedule, weight_decay: ScalarOrSchedule = 0.0,
         weight_decay_mask: MaskOrFn = True, trust_coefficient: float = 0.001, eps: float = 0.0,
         trust_ratio_mask: MaskOrFn = True, momentum: float = 0.9, nesterov: bool = False) -> Tx:
    """LARS (You et al., 2017): coupled L2 decay, per-leaf trust ratio
    ``tc·‖p‖/(‖g + λp‖ + eps)``, then ``-η``, then momentum (after the learning rate, as Optax)."""
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        masked(scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps), trust_ratio_mask),
        scale_by_learning_rate(learning_rate),
        trace(decay=momentum, nesterov=nesterov),
    )


def fromage(learning_rate: ScalarOrSchedule, min_norm: float = 1e-6) -> Tx:
    """Fromage (Bernstein et al., 2020): ``p ← (p - η·‖p‖/‖g‖·g)/√(1 + η²)``."""
    if callable(learning_rate):
        shrink = lambda count: 1 / (1 + learning_rate(count) ** 2) ** 0.5  # noqa: E731
        return chain(scale_by_trust_ratio(min_norm),
                     scale_by_learning_rate(lambda count: shrink(count) * learning_rate(count)),
                     add_decayed_weights(lambda count: shrink(count) - 1))
    shrink = 1 / (1 + learning_rate ** 2) ** 0.5
    return chain(scale_by_trust_ratio(min_norm), scale_by_learning_rate(learning_rate * shrink),
                 add_decayed_weights(shrink - 1))


def novograd(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.25, eps: float = 1e-6,
             eps_root: float = 0.0, weight_decay: float = 0.0) -> Tx:
    """NovoGrad (Ginsburg et al., 2019): per-leaf second moment of ``‖g‖²``,
    ``m ← b1·m + g/(√ν + eps) + λ·p``, ``u = -η·m``."""
    return chain(scale_by_novograd(b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay),
                 scale_by_learning_rate(learning_rate))


def radam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, threshold: float = 5.0, *, nesterov: bool = False) -> Tx:
    """RAdam (Liu et al., 2020): Adam with the variance rectification ``r_t`` once
    ``ρ_t ≥ threshold``, plain momentum before. PyTorch's eps placement differs
    (``gradx.torch_compat.radam``)."""
    return chain(scale_by_radam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, threshold=threshold,
                                nesterov=nesterov),
                 scale_by_learning_rate(learning_rate))


def rmsprop(learning_rate: ScalarOrSchedule, decay: float = 0.9, eps: float = 1e-8,
            initial_scale: float = 0.0, eps_in_sqrt: bool = True, centered: bool = False,
            momentum: Optional[float] = None, nesterov: bool = False,
            bias_correction: bool = False) -> Tx:
    """RMSProp (Hinton, 2012): ``ν ← decay·ν + (1-decay)·|g|²``, ``u = -η·g/√(ν + eps)``.

    ``centered`` subtracts the squared mean gradient; momentum is applied after the learning
    rate, as Optax. PyTorch's RMSprop (eps outside the root, decay 0.99, momentum before the
    learning rate) is ``gradx.torch_compat.rmsprop``.
    """
    block = scale_by_stddev if centered else scale_by_rms
    return chain(
        block(decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt,
              bias_correction=bias_correction),
        scale_by_learning_rate(learning_rate),
        trace(decay=momentum, nesterov=nesterov) if momentum is not None else identity(),
    )


def yogi(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3) -> Tx:
    """Yogi (Zaheer et al., 2018): ``v ← v - (1-b2)·sign(v - g²)·g²``, ``u = -η·m̂/(√v̂ + eps)``."""
    return chain(scale_by_yogi(b1=b1, b2=b2, eps=eps), scale_by_learning_rate(learning_rate))


def sm3(learning_rate: ScalarOrSchedule, momentum: float = 0.9) -> Tx:
    """SM3 (Anil et al., 2019): memory-efficient AdaGrad with per-axis max accumulators.

    Differs from Optax: 0-d leaves are accepted (a single accumulator) and ``learning_rate`` may
    be a schedule (Optax raises on both).
    """
    return chain(scale_by_sm3(b1=momentum), scale_by_learning_rate(learning_rate))


def noisy_sgd(learning_rate: ScalarOrSchedule, eta: float = 0.01, gamma: float = 0.55,
              key: Any = None, *, seed: Optional[int] = None) -> Tx:
    """Noisy SGD (Neelakantan et al., 2014): ``u = -η·(g + N(0, eta/t^gamma))``."""
    return chain(add_noise(eta, gamma, key, seed=seed), scale_by_learning_rate(learning_rate))


def sign_sgd(learning_rate: ScalarOrSchedule) -> Tx:
    """signSGD (Bernstein et al., 2018): ``u = -η·sign(g)``."""
    return chain(scale_by_sign(), scale_by_learning_rate(learning_rate))


def signum(learning_rate: ScalarOrSchedule, beta: float = 0.9,
           accumulator_dtype: Optional[Any] = None) -> Tx:
    """Signum (Bernstein et al., 2018): ``m ← beta·m + (1-beta)·g``, ``u = -η·sign(m)``."""
    return chain(ema(beta, debias=False, accumulator_dtype=accumulator_dtype), scale_by_sign(),
                 scale_by_learning_rate(learning_rate))


def rprop(learning_rate: float, eta_minus: float = 0.5, eta_plus: float = 1.2,
          min_step_size: float = 1e-6, max_step_size: float = 50.0) -> Tx:
    """Rprop (Riedmiller & Braun, 1993): per-element step sizes grown by ``eta_plus`` while the
    gradient keeps its sign and shrunk by ``eta_minus`` when it flips.

    Differs from Optax: the update of the current step is emitted (Optax's lags one step and its
    first update is zero), which matches ``torch.optim.Rprop``.
    """
    return chain(scale_by_rprop(learning_rate=learning_rate, eta_minus=eta_minus, eta_plus=eta_plus,
                                min_step_size=min_step_size, max_step_size=max_step_size),
                 scale(-1.0))


def polyak_sgd(max_learning_rate: float = 1.0, scaling: ScalarOrSchedule = 1.0, f_min: float = 0.0,
               eps: float = 0.0, variant: str = "sps") -> Tx:
    """SGD with the Polyak step size (Loizou et al., 2021):
    ``η = min((f - f_min)/(‖g‖² + eps), max_learning_rate)``. Needs ``value=`` in ``update``."""
    return chain(sgd(learning_rate=scaling),
                 scale_by_polyak(max_learning_rate=max_learning_rate, f_min=f_min, eps=eps,
                                 variant=variant))


def optimistic_gradient_descent(learning_rate: ScalarOrSchedule, alpha: ScalarOrSchedule = 1.0,
                                beta: ScalarOrSchedule = 1.0) -> Tx:
    """Optimistic gradient descent (Mokhtari et al., 2019): ``u = -η·((α+β)·g_t - β·g_{t-1})``."""
    return chain(scale_by_optimistic_gradient(alpha=alpha, beta=beta),
                 scale_by_learning_rate(learning_rate))


def optimistic_adam_v2(learning_rate: ScalarOrSchedule, *, alpha: float = 1.0, beta: float = 1.0,
                       b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                       mu_dtype: Optional[Any] = None, nesterov: bool = True) -> Tx:
    """Optimistic Adam (Daskalakis et al., 2018): the optimistic step applied to Adam's direction."""
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov),
        scale_by_optimistic_gradient(alpha=alpha, beta=beta),
        scale_by_learning_rate(learning_rate),
    )


def optimistic_adam(learning_rate: float, optimism: Optional[float] = None, b1: float = 0.9,
                    b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                    mu_dtype: Optional[Any] = None, *, nesterov: bool = True) -> Tx:
    """Deprecated (as in Optax, with its ``DeprecationWarning``): ``optimistic_adam_v2`` with
    ``alpha=learning_rate``, ``beta=optimism`` (default: the learning rate) and a unit step,
    ``u = -(α·r_t + β·(r_t - r_{t-1}))`` with ``r`` Adam's direction. A schedule raises
    ``ValueError``, as in Optax."""
    warnings.warn("`optimistic_adam` is deprecated, please use `optimistic_adam_v2` instead.",
                  DeprecationWarning, stacklevel=2)
    if callable(learning_rate):
        raise ValueError("This version of `optimistic_adam` does not support learning rate "
                         "schedules but `optimistic_adam_v2` does.")
    return optimistic_adam_v2(1.0, alpha=learning_rate,
                              beta=learning_rate if optimism is None else optimism, b1=b1, b2=b2,
                              eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov)


_DEFAULT_LBFGS_LINESEARCH = scale_by_zoom_linesearch(max_linesearch_steps=20,
                                                     initial_guess_strategy="one")


def lbfgs(learning_rate: Optional[ScalarOrSchedule] = None, memory_size: int = 10,
          scale_init_precond: bool = True, linesearch=_DEFAULT_LBFGS_LINESEARCH) -> Tx:
    """L-BFGS (Nocedal & Wright, 2006, Alg. 7.4) with a strong-Wolfe zoom line search.

    One iteration per ``update``; needs ``value=``, ``grad=`` and ``value_fn=`` (see
    ``value_and_grad_from_state``). ``linesearch=None`` uses a fixed step.
    """
    return chain(
        scale_by_lbfgs(memory_size=memory_size, scale_init_precond=scale_init_precond),
        scale(-1.0) if learning_rate is None else scale_by_learning_rate(learning_rate),
        linesearch if linesearch is not None else identity(),
    )
