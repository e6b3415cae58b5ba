"""Grafting: a matrix preconditioner's direction with the norm of a diagonal method's step.

``P ← P · ‖D‖ / (‖P‖ + ε)`` with ``D`` the step of SGD (``D = x``), AdaGrad
(``D = x / (√A + eps)``, ``A ← A + g²``), RMSprop (``A ← β₂A + (1 − β₂)g²``) or Adam (RMSprop
with ``A / (1 − β₂ᵗ)``), per leaf (Google) or per block (Meta). The accumulator ``A`` always
follows the raw gradient ``g``; ``x`` is what is being preconditioned (the gradient, or Meta's
filtered gradient). A leaf the engine cannot precondition takes ``D`` itself: grafting is also
the engine's diagonal fallback.
"""

import enum
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks

_NORMALIZE_EPSILON = 1e-25  # Google's _EPSILON


class GraftingType(enum.IntEnum):
    """Google's ``distributed_shampoo.GraftingType``, same names and values."""

    NONE = 0
    SGD = 1
    ADAGRAD = 2
    RMSPROP = 3
    RMSPROP_NORMALIZED = 4
    SQRT_N = 5
    ADAGRAD_NORMALIZED = 6


class Graft(NamedTuple):
    """A grafting rule.

    ``kind``: ``'sgd'``, ``'adagrad'``, ``'rmsprop'``, ``'adam'`` or ``'sign'`` (Google's SQRT_N:
    ``D = sign(x)``). ``beta2``: the accumulator's decay (1 sums, as AdaGrad). ``epsilon``: added
    to ``√A``. ``bias_correction``: divide ``A`` by ``1 − β₂ᵗ`` (Adam). ``weight``: the new
    square's weight, ``1 − β₂`` (None: 1 when ``beta2 == 1`` else ``1 − β₂``). ``normalize``:
    use ``x / (‖x‖ + 1e-25)`` (Google's ``*_NORMALIZED``). ``clip``: divide the RMSprop step by
    ``max(1, RMS(D)/clip)`` (Google's ``clip_by_scaled_gradient_norm``). ``rescale``: apply the
    norm ratio (False: the rule is only the fallback and warm-up step, Google's NONE).
    ``norm_epsilon``: ``ε`` of the norm ratio. ``per_block``: norms per block, not per leaf.
    """

    kind: str = "sgd"
    beta2: float = 1.0
    epsilon: float = 1e-10
    bias_correction: bool = False
    normalize: bool = False
    clip: Optional[float] = None
    rescale: bool = True
    norm_epsilon: float = _NORMALIZE_EPSILON
    per_block: bool = False

    def validate(self, name: str = "grafting") -> "Graft":
        checks.one_of(f"{name} kind", self.kind, ("sgd", "adagrad", "rmsprop", "adam", "sign"))
        checks.in_range(f"{name} beta2", self.beta2, 0.0, 1.0, high_open=False)
        checks.non_negative(f"{name} epsilon", self.epsilon)
        return self

    @property
    def has_accumulator(self) -> bool:
        return self.kind in ("adagrad", "rmsprop", "adam")

    def _prepare(self, x):
        return x / (jnp.linalg.norm(x) + _NORMALIZE_EPSILON) if self.normalize else x

    def init(self, param, dtype) -> jax.Array:
        """The accumulator for one leaf (``()`` for the rules without one)."""
        return jnp.zeros(jnp.shape(param), dtype) if self.has_accumulator else ()

    def accumulate(self, g, acc):
        """The accumulator after the raw gradient ``g``."""
        if not self.has_accumulator:
            return acc
        g = self._prepare(g.astype(acc.dtype))
        weight = 1.0 if self.beta2 == 1.0 else 1.0 - self.beta2
        decayed = acc if self.beta2 == 1.0 else self.beta2 * acc
        return decayed + weight * jnp.square(g)

    def direction(self, x, acc, count):
        """The diagonal step ``D`` for ``x`` (after ``accumulate``; ``count`` is 1-based)."""
        x = self._prepare(x)
        if self.kind == "sgd":
            return x
        if self.kind == "sign":
            return jnp.sign(x)
        acc = acc.astype(x.dtype)
        if self.bias_correction and self.beta2 < 1.0:
            acc = acc / (1.0 - self.beta2 ** count).astype(x.dtype)
        step = x / (jnp.sqrt(acc) + self.epsilon)
        if self.clip:
            rms = jnp.linalg.norm(step) / jnp.sqrt(float(step.size))
            step = step / jnp.maximum(1.0, rms / self.clip)
        return step

    def rescale_to(self, p, d):
        """``p · ‖d‖ / (‖p‖ + ε)`` over the last axes of a stack (per block) or whole arrays."""
        axes = tuple(range(1, p.ndim)) if self.per_block else None
        ratio = _norm(d, axes) / (_norm(p, axes) + self.norm_epsilon)
        return p * ratio


def _norm(x, axes):
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=axes is not None))


def google_graft(graft_type, beta2, diagonal_epsilon, clip=None) -> Graft:
    """The ``Graft`` for Google's ``graft_type`` (an ``int`` or ``GraftingType``)."""
    graft_type = GraftingType(int(graft_type))
    kind = {GraftingType.NONE: "sgd", GraftingType.SGD: "sgd", GraftingType.SQRT_N: "sign",
            GraftingType.ADAGRAD: "adagrad", GraftingType.ADAGRAD_NORMALIZED: "adagrad",
            GraftingType.RMSPROP: "rmsprop",
            GraftingType.RMSPROP_NORMALIZED: "rmsprop"}[graft_type]
    normalized = graft_type in (GraftingType.ADAGRAD_NORMALIZED, GraftingType.RMSPROP_NORMALIZED)
    return Graft(kind=kind, beta2=beta2 if kind == "rmsprop" else 1.0, epsilon=diagonal_epsilon,
                 normalize=normalized, clip=clip if kind == "rmsprop" else None,
                 rescale=graft_type != GraftingType.NONE)


META_GRAFTS = {"sgd": Graft("sgd", per_block=True, norm_epsilon=1e-16),
               "adagrad": Graft("adagrad", per_block=True, norm_epsilon=1e-16),
               "rmsprop": Graft("rmsprop", beta2=0.99, per_block=True, norm_epsilon=1e-16),
               "adam": Graft("adam", beta2=0.999, bias_correction=True, per_block=True,
                             norm_epsilon=1e-16)}


def meta_graft(grafting, epsilon=1e-10, beta2=None) -> Optional[Graft]:
    """The ``Graft`` for Meta's ``grafting_config`` named by ``grafting`` (None: no grafting):
    ``'sgd'``, ``'adagrad'``, ``'rmsprop'`` (β₂ 0.99) or ``'adam'`` (β₂ 0.999), epsilon 1e-10."""
    if grafting is None:
        return None
    checks.one_of("grafting", grafting, tuple(META_GRAFTS))
    graft = META_GRAFTS[grafting]._replace(epsilon=epsilon)
    if beta2 is not None and graft.kind in ("rmsprop", "adam"):
        graft = graft._replace(beta2=beta2)
    return graft.validate("grafting")


__all__ = ["Graft", "GraftingType", "google_graft", "meta_graft"]
