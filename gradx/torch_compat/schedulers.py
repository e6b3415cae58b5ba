"""PyTorch's learning-rate schedulers (``torch.optim.lr_scheduler`` 2.13) as pure schedules.

Each function returns ``schedule(count) -> value``; ``schedule(t)`` equals the lr torch reports
(``scheduler.get_last_lr()``) after ``t`` calls to ``scheduler.step()``, i.e. the lr of optimizer
step ``t`` (counting from 0) when the scheduler is stepped after every ``optimizer.step()``.
The first argument is the optimizer's base lr. Pass the schedule as ``lr=`` to a
``gradx.torch_compat`` optimizer (or to any gradx optimizer, which evaluates schedules at the same
count). torch computes these with a recursive ("chainable") formula in float64; the closed forms
here agree with it to float32 rounding (verified over several periods in the tests).
"""

import math
from typing import Callable, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from gradx.base import Schedule
from gradx.torch_compat._common import pow_


def _t(count):
    return jnp.asarray(count, jnp.float32)


def _int(count):
    return jnp.asarray(count, jnp.int32)


def step_lr(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``StepLR``: ``lr·γ^⌊t/step_size⌋``."""
    return lambda count: lr * pow_(gamma, _t(_int(count) // step_size))


def multi_step_lr(lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """``MultiStepLR``: ``lr·γ^(number of milestones ≤ t)``; a repeated milestone counts twice."""
    marks = jnp.asarray(sorted(milestones), jnp.int32)
    return lambda count: lr * pow_(gamma, _t(jnp.sum(_int(count) >= marks)))


def constant_lr(lr: float, factor: float = 1.0 / 3, total_iters: int = 5) -> Schedule:
    """``ConstantLR``: ``lr·factor`` for ``t < total_iters``, then ``lr`` (with ``total_iters=0``,
    ``lr·factor`` forever, as torch)."""
    if not 0 <= factor <= 1:
        raise ValueError("Constant multiplicative factor expected to be between 0 and 1: factor "
                         f"must be in [0, 1], got factor={factor!r}.")
    if total_iters == 0:
        return lambda count: jnp.full(jnp.shape(count), lr * factor, jnp.float32)
    return lambda count: jnp.where(_int(count) < total_iters, lr * factor, lr).astype(jnp.float32)


def linear_lr(lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
              total_iters: int = 5) -> Schedule:
    """``LinearLR``: ``lr·(s + (e - s)·min(t, T)/T)``."""
    if not 0 < start_factor <= 1:
        raise ValueError("Starting multiplicative factor expected to be greater than 0 and less or "
                         f"equal to 1: start_factor must be in (0, 1], got start_factor={start_factor!r}.")
    if not 0 <= end_factor <= 1:
        raise ValueError("Ending multiplicative factor expected to be between 0 and 1: end_factor "
                         f"must be in [0, 1], got end_factor={end_factor!r}.")

    def schedule(count):
        frac = jnp.minimum(_t(count), total_iters) / total_iters
        return lr * (start_factor + (end_factor - start_factor) * frac)

    return schedule


def exponential_lr(lr: float, gamma: float) -> Schedule:
    """``ExponentialLR``: ``lr·γ^t``."""
    return lambda count: lr * pow_(gamma, _t(count))


def polynomial_lr(lr: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    """``PolynomialLR``: ``lr·(1 - min(t, T)/T)^power``, 0 from ``T`` on."""
    # (T - min(t, T))/T, not 1 - min(t, T)/T: under jit XLA turns /T into ·(1/T), which can
    # leave -1e-7 at t = T (and NaN after the power).
    return lambda count: lr * ((total_iters - jnp.minimum(_t(count), total_iters)) / total_iters) ** power


def cosine_annealing_lr(lr: float, T_max: int, eta_min: float = 0.0) -> Schedule:
    """``CosineAnnealingLR``: ``η_min + (lr - η_min)·(1 + cos(π·t/T_max))/2`` for **every** t:
    periodic, back at ``lr`` at ``2·T_max`` (optax's cosine_decay_schedule holds ``η_min``)."""

    def schedule(count):
        phase = _t(_int(count) % (2 * T_max)) / T_max  # reduced first: exact for large t
        return eta_min + (lr - eta_min) * (1 + jnp.cos(math.pi * phase)) / 2

    return schedule


def cosine_annealing_warm_restarts(lr: float, T_0: int, T_mult: int = 1, eta_min: float = 0.0
                                   ) -> Schedule:
    """``CosineAnnealingWarmRestarts`` (SGDR): cosine from ``lr`` to ``η_min`` over ``T_i`` steps,
    restarting with ``T_{i+1} = T_i·T_mult``, ``T_0`` first. Restart points are computed in
    integers, so they never drift. Reference: Loshchilov & Hutter, 2017."""
    if not isinstance(T_0, int) or T_0 <= 0:
        raise ValueError(f"Expected positive integer T_0, but got {T_0} (T_0 must be a positive "
                         f"integer, got T_0={T_0!r}).")
    if not isinstance(T_mult, int) or T_mult < 1:
        raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult} (T_mult must be an "
                         f"integer >= 1, got T_mult={T_mult!r}).")
    # Restart points B_k = T_0·(1 + T_mult + ... + T_mult^(k-1)) that fit in int32.
    starts, length = [0], T_0
    while T_mult > 1 and starts[-1] + length < 2**31 - 1:
        starts.append(starts[-1] + length)
        length *= T_mult
    starts = np.asarray(starts, np.int64)
    lengths = T_0 * np.asarray(T_mult, np.float64) ** np.arange(len(starts))

    def schedule(count):
        count = _int(count)
        if T_mult == 1:
            t_cur, t_i = _t(count % T_0), float(T_0)
        else:
            cycle = jnp.sum(count >= jnp.asarray(starts[1:], jnp.int32))
            t_cur = _t(count - jnp.asarray(starts, jnp.int32)[cycle])
            t_i = jnp.asarray(lengths, jnp.float32)[cycle]
        return eta_min + (lr - eta_min) * (1 + jnp.cos(math.pi * t_cur / t_i)) / 2

    return schedule


def _anneal(strategy: str):
    if strategy == "cos":
        return lambda start, end, pct: end + (start - end) / 2 * (jnp.cos(math.pi * pct) + 1)
    return lambda start, end, pct: (end - start) * pct + start


def _one_cycle(total_steps, pct_start, anneal_strategy, three_phase, values):
    """OneCycleLR's phases over ``values = (initial, peak, final, ...)`` as torch lays them out:
    phase ends at ``pct·T - 1`` (``2·pct·T - 2``) and ``T - 1``; within a phase
    ``pct = (t - start)/(end - start)``."""
    if not isinstance(total_steps, int) or total_steps <= 0:
        raise ValueError(f"Expected positive integer total_steps, but got {total_steps} "
                         f"(total_steps must be a positive integer, got total_steps={total_steps!r}).")
    if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
        raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start} "
                         f"(pct_start must be a float in [0, 1], got pct_start={pct_start!r}).")
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError("anneal_strategy must be one of 'cos' or 'linear', instead got "
                         f"{anneal_strategy} (anneal_strategy must be one of ('cos', 'linear'), "
                         f"got anneal_strategy={anneal_strategy!r}).")
    anneal = _anneal(anneal_strategy)
    ends = [pct_start * total_steps - 1]
    if three_phase:
        ends.append(2 * pct_start * total_steps - 2)
    ends.append(total_steps - 1.0)
    starts = [0.0] + ends[:-1]

    def schedule(count):
        t = _t(count)
        pieces = [anneal(values[i], values[i + 1], (t - s) / (e - s))
                  for i, (s, e) in enumerate(zip(starts, ends))]
        return jnp.select([t <= e for e in ends[:-1]], pieces[:-1], pieces[-1])

    return schedule


def one_cycle_lr(max_lr: float, total_steps: int, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False) -> Schedule:
    """``OneCycleLR``: from ``max_lr/div_factor`` up to ``max_lr`` (ending at step
    ``pct_start·T - 1``), then down to ``initial/final_div_factor`` at ``T - 1``; with
    ``three_phase`` back to the initial lr at ``2·pct_start·T - 2`` first. Equals optax's
    ``cosine_onecycle_schedule(T - 1, ...)`` (not ``T``). torch raises after ``T`` steps; this
    schedule keeps extrapolating the last phase. Reference: Smith & Topin, 2018."""
    initial = max_lr / div_factor
    lrs = (initial, max_lr, initial, initial / final_div_factor) if three_phase else (
        initial, max_lr, initial / final_div_factor)
    return _one_cycle(total_steps, pct_start, anneal_strategy, three_phase, lrs)


def one_cycle_momentum(total_steps: int, pct_start: float = 0.3, anneal_strategy: str = "cos",
                       base_momentum: float = 0.85, max_momentum: float = 0.95,
                       three_phase: bool = False) -> Schedule:
    """``OneCycleLR(cycle_momentum=True)``'s momentum (SGD, RMSprop) or ``betas[0]`` (Adam family)
    cycle, inverse to the lr: ``max → base → max`` (three_phase: ``max → base → max → max``).
    Pass it as ``momentum=`` / ``betas=(schedule, β2)`` with the same arguments as
    ``one_cycle_lr``."""
    values = (max_momentum, base_momentum, max_momentum, max_momentum) if three_phase else (
        max_momentum, base_momentum, max_momentum)
    return _one_cycle(total_steps, pct_start, anneal_strategy, three_phase, values)


def _cyclic(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode, value):
    if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
        raise ValueError("mode is invalid and scale_fn is None: mode must be one of ('triangular', "
                         f"'triangular2', 'exp_range') unless scale_fn is given, got mode={mode!r}.")
    up = float(step_size_up)
    total = up + (float(step_size_down) if step_size_down is not None else up)
    ratio = up / total
    if scale_fn is None:
        scale_fn, scale_mode = {
            "triangular": (lambda x: 1.0, "cycle"),
            "triangular2": (lambda x: 1 / (2.0 ** (x - 1)), "cycle"),
            "exp_range": (lambda x: gamma ** x, "iterations"),
        }[mode]

    def schedule(count):
        t = _t(count)
        cycle = jnp.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        height = jnp.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        return value(height * scale_fn(cycle if scale_mode == "cycle" else t))

    return schedule


def cyclic_lr(base_lr: float, max_lr: float, step_size_up: int = 2000,
              step_size_down: Optional[int] = None, mode: str = "triangular", gamma: float = 1.0,
              scale_fn: Optional[Callable] = None, scale_mode: str = "cycle") -> Schedule:
    """``CyclicLR``: triangular cycles between ``base_lr`` and ``max_lr``; ``cycle =
    ⌊1 + t/(up+down)⌋``, ``x = 1 + t/(up+down) - cycle``, height ``x/r`` rising, ``(x-1)/(r-1)``
    falling (``r = up/(up+down)``), scaled by 1 (triangular), ``1/2^(cycle-1)`` (triangular2) or
    ``γ^t`` (exp_range), or a jnp-traceable ``scale_fn`` of the cycle or of t (``scale_mode``).
    torch's default ``cycle_momentum=True`` also cycles the momentum: see ``cyclic_momentum``.
    Reference: Smith, 2017."""
    return _cyclic(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode,
                   lambda h: base_lr + (max_lr - base_lr) * h)


def cyclic_momentum(base_momentum: float = 0.8, max_momentum: float = 0.9,
                    step_size_up: int = 2000, step_size_down: Optional[int] = None,
                    mode: str = "triangular", gamma: float = 1.0,
                    scale_fn: Optional[Callable] = None, scale_mode: str = "cycle") -> Schedule:
    """``CyclicLR(cycle_momentum=True)``'s momentum / ``betas[0]``: ``max - (max - base)·height``
    with the same cycle as ``cyclic_lr``."""
    return _cyclic(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode,
                   lambda h: max_momentum - (max_momentum - base_momentum) * h)


def sequential_lr(schedules: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    """``SequentialLR``: ``schedules[i]`` from ``milestones[i-1]`` on, restarted at its count 0
    (i = number of milestones ≤ t). Equals optax's ``join_schedules``."""
    if len(schedules) != len(milestones) + 1:
        raise ValueError("Sequential Schedulers expects number of schedulers provided to be one "
                         "more than the number of milestone points, but got number of schedulers "
                         f"{len(schedules)} and the number of milestones to be equal to "
                         f"{len(milestones)}.")
    marks = [0] + list(milestones)

    def schedule(count):
        count = _int(count)
        pieces = [jnp.asarray(s(count - m), jnp.float32) for s, m in zip(schedules, marks)]
        return jnp.select([count < m for m in marks[1:]], pieces[:-1], pieces[-1])

    return schedule


def lambda_lr(lr: float, lr_lambda: Callable) -> Schedule:
    """``LambdaLR``: ``lr·lr_lambda(t)`` (``lr_lambda`` must be jnp-traceable)."""
    if not callable(lr_lambda):
        raise TypeError(f"lr_lambda should be a function, but got {type(lr_lambda).__name__}")
    return lambda count: lr * lr_lambda(count)


__all__ = [
    "step_lr", "multi_step_lr", "constant_lr", "linear_lr", "exponential_lr", "polynomial_lr",
    "cosine_annealing_lr", "cosine_annealing_warm_restarts", "one_cycle_lr", "one_cycle_momentum",
    "cyclic_lr", "cyclic_momentum", "sequential_lr", "lambda_lr",
]
