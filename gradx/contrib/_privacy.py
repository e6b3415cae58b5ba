"""Differentially private gradient aggregation and DP-SGD (Abadi et al., 2016)."""

from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from gradx import checks
from gradx.base import GradientTransformation, GradientTransformationExtraArgs, ScalarOrSchedule
from gradx.base import identity
from gradx.clipping import per_example_clip_factors
from gradx.combine import chain
from gradx.leafwise import PerLeaf, leafwise
from gradx.momentum import trace
from gradx.noise import resolve_key
from gradx.scaling import scale_by_learning_rate


class DifferentiallyPrivateAggregateState(NamedTuple):
    """The PRNG key for the next step's noise."""

    rng_key: Any


def _noisy_mean(g, *, factors, std, batch_size, key):
    """``(Σ_i f_i·g_i + std·N(0, 1)) / B`` for one leaf of per-example gradients ``g``."""
    clipped = jnp.tensordot(factors, g, axes=1)
    return (clipped + std * jax.random.normal(key, clipped.shape, clipped.dtype)) / batch_size


def differentially_private_aggregate(l2_norm_clip: jax.typing.ArrayLike,
                                     noise_multiplier: jax.typing.ArrayLike,
                                     key: Union[jax.Array, int, None] = None, *,
                                     seed: Optional[int] = None) -> GradientTransformation:
    """DP-SGD's aggregation of per-example gradients: clip each example to global norm ``C``,
    sum, add Gaussian noise, average: ``u = (Σ_i g_i·min(1, C/‖g_i‖) + C·σ·N(0, 1)) / B``.

    The updates must be per-example gradients: every leaf has the batch axis ``B`` first (e.g.
    from ``jax.vmap(jax.grad(loss))``), and the result drops it; put it first in a chain.
    ``l2_norm_clip`` is ``C``, ``noise_multiplier`` is ``σ``. Each step splits the state key
    into the next key and one key per leaf (in flattening order), so the noise is Optax's for
    the same key. ``key``: a typed key, an integer seed or a legacy raw key; ``None`` warns and
    uses seed 0; ``seed=`` is a deprecated spelling of an integer key. State
    ``DifferentiallyPrivateAggregateState(rng_key)``. Reference: Abadi et al., "Deep Learning
    with Differential Privacy" (CCS 2016). Same numbers as
    ``optax.contrib.differentially_private_aggregate``, bf16 included.
    """
    checks.non_negative("l2_norm_clip", l2_norm_clip)
    checks.non_negative("noise_multiplier", noise_multiplier)
    key = resolve_key(key, seed, "differentially_private_aggregate")
    noise_std = l2_norm_clip * noise_multiplier

    def step_scalars(_, updates, rng_key):
        factors = per_example_clip_factors(updates, l2_norm_clip,
                                           "differentially_private_aggregate")
        leaves = jax.tree.leaves(updates)
        rng_key, *keys = jax.random.split(rng_key, len(leaves) + 1)
        return ({"factors": factors, "std": noise_std, "batch_size": leaves[0].shape[0],
                 "key": PerLeaf(keys)}, {"rng_key": rng_key})

    return leafwise(_noisy_mean, DifferentiallyPrivateAggregateState, step_scalars=step_scalars,
                    elementwise=False, step_inputs=("updates",), carry={"rng_key": key})


def dpsgd(learning_rate: ScalarOrSchedule, l2_norm_clip: jax.typing.ArrayLike,
          noise_multiplier: jax.typing.ArrayLike, seed: int,
          momentum: Optional[jax.typing.ArrayLike] = None,
          nesterov: bool = False) -> GradientTransformationExtraArgs:
    """DP-SGD: ``differentially_private_aggregate(l2_norm_clip, noise_multiplier, key=seed)``,
    then SGD (``momentum``: heavy-ball or, with ``nesterov``, Nesterov momentum).

    Takes per-example gradients (batch axis first in every leaf). No defaults but
    ``momentum=None``, ``nesterov=False``. Reference: Abadi et al. (CCS 2016). Same chain and
    numbers as ``optax.contrib.dpsgd`` (which passes the seed through the deprecated ``seed=``
    and warns on every construction; gradx passes it as the key and does not).

    Examples:
      >>> tx = gradx.contrib.dpsgd(0.1, l2_norm_clip=1.0, noise_multiplier=0.0, seed=0)
      >>> per_example = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}  # norms 5 and 0.5
      >>> updates, _ = jax.jit(tx.update)(per_example, tx.init({"w": jnp.zeros(2)}))
      >>> print(np.asarray(updates["w"], float).round(4))  # -0.1 · ([0.6, 0.8] + [0.3, 0.4]) / 2
      [-0.045 -0.06 ]
    """
    if momentum is not None:
        checks.in_range("momentum", momentum, 0.0, 1.0, high_open=False)
    return chain(differentially_private_aggregate(l2_norm_clip, noise_multiplier, key=seed),
                 trace(decay=momentum, nesterov=nesterov) if momentum is not None else identity(),
                 scale_by_learning_rate(learning_rate))


__all__ = ["DifferentiallyPrivateAggregateState", "differentially_private_aggregate", "dpsgd"]
