"""Differentiable approximations of functions by random perturbation, with the noise
distributions they use, as Optax's ``optax.perturbations``; and Optax's ``multi_normal``, the
diagonal normal distribution with a log-scale parameter.

``make_perturbed_fun(f, num_samples, sigma, noise)`` returns ``(key, x) -> mean over samples of
f(x + sigma·z)``, whose derivatives of every order are unbiased Monte-Carlo estimates of those of
the smoothed ``f_σ(x) = E[f(x + σz)]`` (Berthet et al., 2020), through the score-function
estimator written with DiCE's "magic box" (Foerster et al., 2018): ``f`` itself need not be
differentiable.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import jax.scipy.stats.norm as normal_distribution

from gradx.tree_math import tree_add_scale, tree_random_like, tree_scale, tree_sum

__all__ = ["Normal", "Gumbel", "make_perturbed_fun", "MultiNormalDiagFromLogScale", "multi_normal"]


class Normal:
    """The standard normal distribution; ``log_prob`` up to its constant."""

    def sample(self, key: jax.typing.ArrayLike, sample_shape: Sequence[int] = (),
               dtype: jax.typing.DTypeLike = float) -> jax.Array:
        return jax.random.normal(key, sample_shape, dtype)

    def log_prob(self, inputs: jax.Array) -> jax.Array:
        return -0.5 * inputs ** 2


class Gumbel:
    """The standard Gumbel distribution."""

    def sample(self, key: jax.typing.ArrayLike, sample_shape: Sequence[int] = (),
               dtype: jax.typing.DTypeLike = float) -> jax.Array:
        return jax.random.gumbel(key, sample_shape, dtype)

    def log_prob(self, inputs: jax.Array) -> jax.Array:
        return -inputs - jnp.exp(-inputs)


def _magic_box(x):
    """1 in value; its derivative is ``x``'s (DiCE)."""
    return jnp.exp(x - jax.lax.stop_gradient(x))


def make_perturbed_fun(fun: Callable, num_samples: int = 1000, sigma: jax.typing.ArrayLike = 0.1,
                       noise=Gumbel(), use_baseline=True) -> Callable:
    """The Monte-Carlo smoothing ``(key, x) -> mean_i f(x + sigma·z_i)`` of ``fun`` (a function
    from tree to tree) with ``num_samples`` draws of ``noise`` (an object with ``sample`` and
    ``log_prob``); ``use_baseline`` subtracts ``f(x)`` in the score term to reduce variance.

    Examples:
      >>> f = lambda x: jnp.sum(jnp.maximum(x, 0.0))
      >>> fn = gradx.perturbations.make_perturbed_fun(f, 1_000, 0.1)
      >>> grad = jax.jit(jax.grad(fn, argnums=1))
      >>> [round(float(g), 2) for g in grad(jax.random.key(0), jnp.zeros(3))]
      [0.69, 0.72, 0.58]
    """
    def estimator(key, x):
        def one_sample(key, x, baseline):
            sample = tree_random_like(key, x, sampler=noise.sample)
            shifted = jax.lax.stop_gradient(jax.tree.map(lambda x, z: x + sigma * z, x, sample))
            sample = jax.tree.map(lambda x, y: (y - x) / sigma, x, shifted)
            box = _magic_box(tree_sum(jax.tree.map(noise.log_prob, sample)))
            out = tree_scale(box, fun(shifted))
            return tree_add_scale(out, 1 - box, baseline) if use_baseline else out

        baseline = fun(jax.lax.stop_gradient(x)) if use_baseline else None
        out = jax.vmap(one_sample, in_axes=(0, None, None))(
            jax.random.split(key, num_samples), x, baseline)
        return jax.tree.map(lambda x: jnp.mean(x, axis=0), out)

    return estimator


class MultiNormalDiagFromLogScale:
    """A normal distribution with independent coordinates, mean ``loc`` and standard deviation
    ``exp(log_scale)`` (broadcast together), as Optax's."""

    def __init__(self, loc: jax.typing.ArrayLike, log_scale: jax.typing.ArrayLike):
        self._log_scale = jnp.asarray(log_scale)
        self._scale = jnp.exp(log_scale)
        self._mean = jnp.asarray(loc)
        self._param_shape = jax.lax.broadcast_shapes(self._mean.shape, self._scale.shape)

    def sample(self, shape: Sequence[int], key: jax.Array) -> jax.Array:
        """Samples of shape ``shape + param_shape``."""
        return (jax.random.normal(key, shape=tuple(shape) + self._param_shape) * self._scale
                + self._mean)

    def log_prob(self, x: jax.typing.ArrayLike) -> jax.Array:
        """The log density, summed over the parameter axes."""
        log_prob = normal_distribution.logpdf(x, loc=self._mean, scale=self._scale)
        return jnp.sum(log_prob, axis=[-(i + 1) for i in range(len(self._param_shape))])

    @property
    def log_scale(self) -> jax.Array:
        return self._log_scale

    @property
    def params(self) -> Sequence[jax.Array]:
        return [self._mean, self._log_scale]


def multi_normal(loc: jax.typing.ArrayLike,
                 log_scale: jax.typing.ArrayLike) -> MultiNormalDiagFromLogScale:
    """``MultiNormalDiagFromLogScale(loc, log_scale)``."""
    return MultiNormalDiagFromLogScale(loc=loc, log_scale=log_scale)
