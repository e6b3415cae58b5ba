"""Annealed Gaussian gradient noise."""

import warnings
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from gradx import checks
from gradx.base import GradientTransformation
from gradx.leafwise import PerLeaf, leafwise


class AddNoiseState(NamedTuple):
    """The step count (int32) and the PRNG key for the next step's noise."""

    count: jax.Array
    rng_key: jax.Array


def _as_key(key: Union[jax.Array, int]) -> jax.Array:
    """A typed PRNG key from a typed key, an integer seed, or a legacy raw ``uint32`` key."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if jnp.ndim(key) == 0:
        return jax.random.key(key)
    return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))


def resolve_key(key: Union[jax.Array, int, None], seed: Optional[int], name: str) -> jax.Array:
    """The typed PRNG key of a noisy transformation called ``name``, from ``key=`` (see
    ``_as_key``) or the deprecated ``seed=`` (warns); neither: warns and uses seed 0, as Optax."""
    if seed is not None:
        warnings.warn('"seed" is deprecated, use "key".', DeprecationWarning, stacklevel=3)
        if key is not None:
            raise ValueError("Only one of seed or key can be specified.")
        key = seed
    if key is None:
        warnings.warn(f"{name} got no key and uses seed 0; pass key= to choose the noise.",
                      stacklevel=3)
        key = 0
    return _as_key(key)


def _add_normal(g, *, std, key):
    return g + std * jax.random.normal(key, jnp.shape(g), jnp.result_type(g))


def add_noise(eta: jax.typing.ArrayLike, gamma: jax.typing.ArrayLike,
              key: Union[jax.Array, int, None] = None, *,
              seed: Optional[int] = None) -> GradientTransformation:
    """Adds annealed Gaussian noise: ``u = g + σ_t · N(0, 1)`` with ``σ_t = √(eta / t^gamma)``,
    ``t`` the step count after the increment (1 on the first update).

    Each step splits the state key into the next state key and a sample key, and the sample key
    into one key per leaf (in flattening order); each leaf's noise is drawn in its dtype. So the
    noise is bit-identical to Optax's for the same key. State ``AddNoiseState(count, rng_key)``.

    ``key``: a typed key (``jax.random.key``), an integer seed, or — unlike Optax, which rejects
    it — a legacy raw key (``jax.random.PRNGKey``), used as the typed key with the same data.
    ``key=None`` warns and uses seed 0; ``seed=`` is a deprecated spelling of an integer key.
    Reference: Neelakantan et al., "Adding Gradient Noise Improves Learning for Very Deep
    Networks" (2015).
    """
    key = resolve_key(key, seed, "add_noise")
    checks.non_negative("eta", eta)

    def step_scalars(count, updates, rng_key):
        rng_key, sample_key = jax.random.split(rng_key)
        keys = jax.random.split(sample_key, len(jax.tree.leaves(updates)))
        return {"std": jnp.sqrt(eta / count ** gamma), "key": PerLeaf(keys)}, {"rng_key": rng_key}

    return leafwise(_add_normal, AddNoiseState, step_scalars=step_scalars, elementwise=False,
                    step_inputs=("updates",), carry={"rng_key": key})


__all__ = ["AddNoiseState", "add_noise"]
