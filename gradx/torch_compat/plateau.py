"""PyTorch's ``ReduceLROnPlateau`` as a transformation chained after an optimizer."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradx import checks
from gradx.base import GradientTransformationExtraArgs
from gradx.torch_compat._common import check


class ReduceLROnPlateauState(NamedTuple):
    """torch's scheduler state: ``lr`` is the lr the next update uses (torch's ``group['lr']``)."""

    lr: jax.Array
    best: jax.Array
    num_bad_epochs: jax.Array
    cooldown_counter: jax.Array
    last_epoch: jax.Array


def reduce_lr_on_plateau(lr: float, mode: str = "min", factor: float = 0.1, patience: int = 10,
                         threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                         min_lr: float = 0.0, eps: float = 1e-8) -> GradientTransformationExtraArgs:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau``, chained after an optimizer built with the
    same base ``lr``: ``chain(torch_compat.sgd(lr), reduce_lr_on_plateau(lr))``.

    Each ``update(updates, state, params, value=metric)`` first scales the optimizer's updates by
    ``state.lr / lr`` (the lr torch's ``optimizer.step()`` would use now), then performs torch's
    ``scheduler.step(metric)``: the metric is better iff ``a < best·(1-thr)`` (min, rel),
    ``a < best - thr`` (min, abs), ``a > best·(1+thr)`` (max, rel), ``a > best + thr`` (max, abs);
    otherwise ``num_bad_epochs += 1``; during cooldown the counter decrements and ``num_bad_epochs``
    is reset; once ``num_bad_epochs > patience``, ``lr = max(lr·factor, min_lr)`` (only if that
    lowers it by more than ``eps``), cooldown starts and the count resets. So the first cut lands on
    the (patience+1)-th bad value, and a value passed with update ``k`` changes the lr from update
    ``k+1`` on, exactly as torch's ``optimizer.step(); scheduler.step(metric)``.

    Exact for every torch_compat optimizer whose step is proportional to lr (all but ``rprop``,
    where lr is only the initial step size, ``asgd``'s ``η`` and ``adafactor``'s ``min(lr, 1/√t)``).
    Differs from optax's ``contrib.reduce_on_plateau``: cuts one value later, both modes, torch's
    threshold modes, absolute ``min_lr``, and the new lr applies from the next update.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode {mode} is unknown! (mode must be one of ('min', 'max'), got "
                         f"mode={mode!r}).")
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f"threshold mode {threshold_mode} is unknown! (threshold_mode must be one "
                         f"of ('rel', 'abs'), got threshold_mode={threshold_mode!r}).")
    if factor >= 1.0:
        raise ValueError(f"Factor should be < 1.0: factor must be < 1, got factor={factor!r}.")
    check("Invalid learning rate", checks.positive, "lr", lr)
    check("Invalid min_lr value", checks.non_negative, "min_lr", min_lr)

    def is_better(a, best):
        if mode == "min":
            return a < (best * (1 - threshold) if threshold_mode == "rel" else best - threshold)
        return a > (best * (1 + threshold) if threshold_mode == "rel" else best + threshold)

    def init(params):
        del params
        zero = jnp.zeros([], jnp.int32)
        return ReduceLROnPlateauState(
            lr=jnp.asarray(lr, jnp.float32),
            best=jnp.asarray(jnp.inf if mode == "min" else -jnp.inf, jnp.float32),
            num_bad_epochs=zero, cooldown_counter=zero, last_epoch=zero)

    def update(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError("reduce_lr_on_plateau needs the monitored metric: call "
                             "update(updates, state, params, value=metric).")
        scale = state.lr / lr
        updates = jax.tree.map(lambda u: (u * scale).astype(jnp.result_type(u)), updates)

        current = jnp.asarray(value, jnp.float32)
        better = is_better(current, state.best)
        best = jnp.where(better, current, state.best)
        bad = jnp.where(better, 0, state.num_bad_epochs + 1)
        in_cooldown = state.cooldown_counter > 0
        cooldown_counter = jnp.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
        bad = jnp.where(in_cooldown, 0, bad)
        cut = bad > patience
        new_lr = jnp.maximum(state.lr * factor, min_lr)
        new_lr = jnp.where(cut & (state.lr - new_lr > eps), new_lr, state.lr)
        return updates, ReduceLROnPlateauState(
            lr=new_lr.astype(jnp.float32), best=best,
            num_bad_epochs=jnp.where(cut, 0, bad).astype(jnp.int32),
            cooldown_counter=jnp.where(cut, cooldown, cooldown_counter).astype(jnp.int32),
            last_epoch=state.last_epoch + 1)

    return GradientTransformationExtraArgs(init, update)


__all__ = ["ReduceLROnPlateauState", "reduce_lr_on_plateau"]
