"""PyTorch's gradient clipping (``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``)."""

import math

import jax
import jax.numpy as jnp

from gradx import checks
from gradx.base import EmptyState, GradientTransformation
from gradx.leafwise import leafwise
from gradx.torch_compat._common import check


def total_norm(updates, norm_type: float = 2.0) -> jax.Array:
    """torch's total gradient norm: the ``norm_type``-norm of all elements of all leaves
    (``inf``: the largest absolute value), in float32 or the widest leaf dtype."""
    leaves = [jnp.abs(x) for x in jax.tree.leaves(updates)]
    if not leaves:
        return jnp.zeros([], jnp.float32)
    dtype = jnp.result_type(jnp.float32, *leaves)
    if math.isinf(norm_type):
        return jnp.max(jnp.stack([jnp.max(x) for x in leaves])).astype(dtype)
    return sum(jnp.sum(x.astype(dtype) ** norm_type) for x in leaves) ** (1.0 / norm_type)


def clip_grad_norm(max_norm: float, norm_type: float = 2.0) -> GradientTransformation:
    """``clip_grad_norm_``: scales every gradient by ``min(1, max_norm/(‖g‖ + 1e-6))``, ``‖g‖``
    the ``norm_type``-norm over all leaves together (``float('inf')`` or ``'inf'``: max |g|).

    Differs from optax's ``clip_by_global_norm`` by torch's ``1e-6`` in the divisor (so even a
    gradient exactly at ``max_norm`` is scaled by ``1 - 1e-6/max_norm``), and by the norm type.
    torch returns the pre-clip norm; compute it with ``total_norm(grads, norm_type)``.
    """
    norm_type = float(norm_type)
    check("Invalid max_norm value", checks.non_negative, "max_norm", max_norm)
    if not norm_type > 0:
        raise ValueError(f"Invalid norm_type value: norm_type must be > 0 or inf, got "
                         f"norm_type={norm_type!r}.")

    def step_scalars(_, updates):
        return {"coef": jnp.minimum(max_norm / (total_norm(updates, norm_type) + 1e-6), 1.0)}

    return leafwise(lambda g, *, coef: g * coef, EmptyState, step_scalars=step_scalars,
                    step_inputs=("updates",))


def clip_grad_value(clip_value: float) -> GradientTransformation:
    """``clip_grad_value_``: clamps every gradient element to ``[-clip_value, clip_value]``."""
    check("Invalid clip_value value", checks.non_negative, "clip_value", clip_value)

    return leafwise(lambda g: jnp.clip(g, -clip_value, clip_value), EmptyState)


__all__ = ["total_norm", "clip_grad_norm", "clip_grad_value"]
