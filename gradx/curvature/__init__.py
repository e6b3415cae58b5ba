"""Curvature-aware optimizers: Sophia and the Hessian-diagonal estimators it refreshes.

- ``estimators``: ``hutchinson_estimator_diag_hessian`` (needs ``obj_fn=``) and
  ``gauss_newton_bartlett_estimator`` (needs ``logits_fn=``);
- ``sophia_optimizers``: ``scale_by_sophia`` and ``sophia`` (Optax's ``contrib.sophia``,
  Sophia-H by default) and ``sophia_g`` (the authors' Sophia-G).
"""

from gradx.curvature import estimators, sophia_optimizers
from gradx.curvature.estimators import *  # noqa: F401,F403
from gradx.curvature.sophia_optimizers import *  # noqa: F401,F403

__all__ = estimators.__all__ + sophia_optimizers.__all__
