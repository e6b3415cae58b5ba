"""Estimators of the Hessian's diagonal, for Sophia (``hessian_diagonal_fn``).

Each is a ``GradientTransformationExtraArgs`` whose ``update(updates, state, params, **extra)``
ignores ``updates`` and returns an estimate of ``diag(H)`` shaped like ``params``, from a
function of the params passed as an extra argument of the update (Sophia's update passes its
extra arguments on, and runs the estimator only on refresh steps):

- ``hutchinson_estimator_diag_hessian``: ``z ⊙ (H z)`` with ``z`` Rademacher, from the loss
  ``obj_fn(params) -> scalar`` (Sophia-H; Optax's estimator);
- ``gauss_newton_bartlett_estimator``: ``ĝ ⊙ ĝ`` with ``ĝ`` the gradient of the mean
  cross-entropy on labels sampled from the model's own logits, from
  ``logits_fn(params) -> logits`` of shape ``(..., vocab)`` (Sophia-G).

The state is the PRNG key of the next estimate (``jax.random.PRNGKey(0)`` unless
``random_seed`` is given); each estimate splits it into the next key and a sample key.
"""

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import plumbing
from gradx.base import NO_PARAMS_MSG, GradientTransformationExtraArgs

__all__ = ["HutchinsonState", "GaussNewtonBartlettState", "hutchinson_estimator_diag_hessian",
           "gauss_newton_bartlett_estimator"]


class HutchinsonState(NamedTuple):
    """The PRNG key of Hutchinson's next estimate (Optax's class)."""

    key: jax.Array


class GaussNewtonBartlettState(NamedTuple):
    """The PRNG key of the Gauss-Newton-Bartlett estimator's next label sample."""

    key: jax.Array


def _keyed_estimator(state_cls: type, name: str, fn_name: str, needs: str,
                     estimate: Callable, random_seed: Optional[jax.Array]
                     ) -> GradientTransformationExtraArgs:
    """An estimator whose state is a PRNG key and whose input is the extra argument
    ``fn_name`` (``needs`` says what it is and gives an example): ``estimate(fn, params,
    sample_key)`` gives the estimate."""

    def init(params):
        del params
        return state_cls(key=jax.random.PRNGKey(0) if random_seed is None else random_seed)

    def update(updates, state, params=None, **extra_args):
        del updates
        fn = extra_args.get(fn_name)
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        if fn is None:
            raise ValueError(f"The {name} needs {needs}: pass it as a keyword argument of the "
                             f"optimizer's update (Sophia passes it on to its estimator), "
                             f"tx.update(grads, state, params, {fn_name}=...).")
        key, sample_key = jax.random.split(state.key)
        return estimate(fn, params, sample_key), state_cls(key=key)

    return GradientTransformationExtraArgs(init, update)


def _hutchinson(obj_fn, params, key):
    """``z ⊙ (H z)``: one forward-over-reverse Hessian-vector product (``jvp`` of ``grad``)."""
    leaves, treedef = jax.tree.flatten(params)
    dtype = plumbing.tree_dtype(params, "lowest")
    signs = treedef.unflatten([
        jax.random.rademacher(k, jnp.shape(p), jnp.float32).astype(dtype)
        for k, p in zip(jax.random.split(key, len(leaves)), leaves)])
    hvp = jax.jvp(jax.grad(obj_fn), (params,), (signs,))[1]
    return jax.tree.map(lambda h, z: h * z, hvp, signs)


def hutchinson_estimator_diag_hessian(random_seed: Optional[jax.Array] = None
                                      ) -> GradientTransformationExtraArgs:
    """Hutchinson's estimate of the Hessian's diagonal: ``ĥ = z ⊙ (∇²L(θ) z)``.

    ``z`` has independent Rademacher (±1) entries (one key per leaf, drawn in float32 and cast
    to the params' lowest float dtype); ``E[ĥ] = diag(∇²L)``. The Hessian-vector product is one
    ``jax.jvp`` of ``jax.grad(obj_fn)``, about 2-3 gradients' work. Needs the extra argument
    ``obj_fn``: the loss as a function of the params alone, e.g.
    ``obj_fn=lambda p: loss(p, batch)``.

    Defaults: ``random_seed=None`` is ``jax.random.PRNGKey(0)``. State
    ``HutchinsonState(key)``. Same numbers as ``optax.contrib.hutchinson_estimator_diag_hessian``
    (0.2.8); a missing ``obj_fn`` raises a ``ValueError`` that says what to pass.

    Reference: Hutchinson, "A stochastic estimator of the trace of the influence matrix for
    Laplacian smoothing splines", 1990; Liu et al., "Sophia", 2023 (Sophia-H). The paper and
    Levanter draw Gaussian ``z``; Optax (and gradx) Rademacher.
    """
    return _keyed_estimator(HutchinsonState, "Hutchinson estimator", "obj_fn",
                            "the loss as a function of the params alone, "
                            "obj_fn=lambda params: loss(params, batch)",
                            _hutchinson, random_seed)


def _sampled_label_loss(logits_fn, params, key):
    """The mean cross-entropy of ``logits_fn(params)`` on labels drawn from its own softmax
    (the labels carry no gradient); the logits are taken in float32 or wider."""
    logits = logits_fn(params)
    logits = logits.reshape(-1, logits.shape[-1])
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    labels = jax.random.categorical(key, jax.lax.stop_gradient(logits))
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def _gauss_newton_bartlett(logits_fn, params, key):
    """``ĝ ⊙ ĝ`` with ``ĝ`` the gradient of the sampled-label loss (one forward, one backward)."""
    grads = jax.grad(_sampled_label_loss, argnums=1)(logits_fn, params, key)
    return jax.tree.map(plumbing.abs_sq, grads)


def gauss_newton_bartlett_estimator(random_seed: Optional[jax.Array] = None
                                    ) -> GradientTransformationExtraArgs:
    """The Gauss-Newton-Bartlett estimate of the Hessian's diagonal: ``ĥ = ĝ ⊙ ĝ``.

    ``ĝ = ∇_θ (1/N) Σₙ CE(fₙ(θ), ŷₙ)`` with labels ``ŷₙ ~ softmax(fₙ(θ))`` sampled from the
    model's own logits (``jax.random.categorical`` with the step's sample key), ``N`` the number
    of positions. By Bartlett's identity ``N·E[ĝ ⊙ ĝ]`` is the diagonal of the Gauss-Newton
    matrix of the mean loss, so Sophia-G scales ``ĥ`` by the batch size in tokens (``bs``). One
    forward and one backward pass. Needs the extra argument ``logits_fn``: the logits as a
    function of the params alone, shape ``(..., vocab)``, e.g.
    ``logits_fn=lambda p: model.apply(p, batch_inputs)``.

    Defaults: ``random_seed=None`` is ``jax.random.PRNGKey(0)``. State
    ``GaussNewtonBartlettState(key)``. Not in Optax.

    Reference: Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language
    Model Pre-training", 2023, Algorithm 2; the authors' training loop (``Liuhong99/Sophia``,
    ``train_sophiag.py``) computes the same ``ĝ`` with ``F.cross_entropy`` on sampled labels
    and feeds it to ``SophiaG.update_hessian``, which keeps the EMA of ``ĝ ⊙ ĝ``.
    """
    return _keyed_estimator(GaussNewtonBartlettState, "Gauss-Newton-Bartlett estimator",
                            "logits_fn", "the model's logits as a function of the params alone, "
                            "logits_fn=lambda params: model(params, inputs), of shape "
                            "(..., vocab)",
                            _gauss_newton_bartlett, random_seed)
